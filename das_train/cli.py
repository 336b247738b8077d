"""Command-line handling: pick the recipe, check every override, then hand over to Hydra.

``python -m das_train recipe=NAME key=value ...``: the recipe is a YAML file of ``recipes/``
found by name (no registry), composed with the config groups of ``das_train/conf``. Before any
work, the overrides and the composed config are checked against the typed schema and every
problem is reported at once: unknown keys, unknown group options, wrong types, bad values.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from das_train.training.schema import ConfigError, schema_keys, validate

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "task", "intervention", "trainer", "logger", "sweep")
DEFAULT_RECIPE = "gender_tiny"


def recipes_dir() -> Path:
    """``recipes/`` beside the package (a checkout), or where DAS_TRAIN_RECIPES points."""
    return Path(os.environ.get("DAS_TRAIN_RECIPES", Path(__file__).resolve().parent.parent / "recipes"))


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def split_arguments(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(recipe, overrides, Hydra flags such as -m / --multirun / --cfg)."""
    recipe = DEFAULT_RECIPE
    overrides, flags = [], []
    for arg in argv:
        if arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            flags.append(arg)
        else:
            overrides.append(arg)
    return recipe, overrides, flags


def _group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def override_problems(recipe: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """(problems, usable overrides): unknown recipe, keys and group options are problems."""
    problems, usable = [], []
    if recipe not in available_recipes():
        problems.append(f"unknown recipe {recipe!r}; available: {available_recipes()}")
    keys = schema_keys()
    for override in overrides:
        if "=" not in override:
            problems.append(f"cannot read override {override!r}; write key=value")
            continue
        key, value = override.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra."):
            usable.append(override)
            continue
        if key in GROUPS:
            options = _group_options(key)
            bad = [c for c in value.split(",") if c not in options]
            for choice in bad:
                problems.append(f"{key}={choice}: no such {key} config; available: {options}")
            if not bad:
                usable.append(override)
        elif key not in keys:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = sorted(k.rsplit(".", 1)[-1] for k in keys if k.startswith(section + ".") and k.count(".") == key.count("."))
            allowed = siblings if section else sorted(k for k in keys if "." not in k)
            problems.append(f"unknown key '{key}'; allowed{' under ' + repr(section) if section else ''}: {allowed}")
        else:
            usable.append(override)
    return problems, usable


def compose(recipe: str, overrides: list[str]):
    """The composed config (for checks and tests), without starting a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
        return hydra_compose(config_name=recipe, overrides=overrides)


def check(recipe: str, overrides: list[str]):
    """Composes and validates; raises ConfigError naming every problem."""
    from omegaconf import OmegaConf

    problems, usable = override_problems(recipe, overrides)
    if recipe not in available_recipes():
        raise ConfigError(problems)
    # A multirun value list (a=1,2) is checked through its first value.
    single = []
    for override in usable:
        key, value = override.split("=", 1)
        if "," in value and not value.startswith(("[", "{")):
            value = value.split(",")[0]
        single.append(f"{key}={value}")
    cfg = compose(recipe, single)
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    problems += validate(data)
    if problems:
        raise ConfigError(problems)
    return cfg


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    recipe, overrides, flags = split_arguments(argv)
    try:
        check(recipe, overrides)
    except ConfigError as err:
        print(f"das_train: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    import hydra

    from das_train.training.run import run

    def entry(cfg) -> None:
        run(cfg)

    sys.argv = [sys.argv[0], *flags, *overrides]
    hydra.main(version_base="1.3", config_path=str(recipes_dir()), config_name=recipe)(entry)()
