"""Command-line handling: pick the recipe, check every override, then hand over to Hydra.

``python -m das_train recipe=NAME key=value ...``: the recipe is a YAML file of ``recipes/``
found by name (no registry), composed with the config groups of ``das_train/conf``. Before any
work, the overrides and the composed config are checked against the typed schema and every
problem is reported at once: unknown keys, unknown group options, wrong types, bad values.
"""

from __future__ import annotations

import importlib.resources
import os
import sys
from pathlib import Path

from das_train.training.schema import ConfigError, schema_keys, validate

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "task", "intervention", "trainer", "logger", "sweep")
DEFAULT_RECIPE = "gender_tiny"


def shipped_recipes_dir() -> Path:
    """The recipes that ship with das_train (``recipes/`` of a checkout, installed as the
    package data of ``das_train.recipes``), found through importlib so a wheel has them too."""
    return Path(str(importlib.resources.files("das_train.recipes")))


def recipes_dir() -> Path:
    """Where recipes are looked up by name: ``$DAS_TRAIN_RECIPES`` (a user's own folder) when
    set, else the shipped recipes."""
    own = os.environ.get("DAS_TRAIN_RECIPES")
    return Path(own).expanduser() if own else shipped_recipes_dir()


def recipe_file(recipe: str) -> Path | None:
    """The YAML file of ``recipe``: a path (``recipe=my/own.yaml``), or a name looked up in
    :func:`recipes_dir`; ``None`` when there is none."""
    if recipe.endswith((".yaml", ".yml")) or os.sep in recipe:
        path = Path(recipe).expanduser()
        return path.resolve() if path.is_file() else None
    path = recipes_dir() / f"{recipe}.yaml"
    return path if path.is_file() else None


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
    if recipe_file(recipe) is None:
        problems.append(f"unknown recipe {recipe!r}; available in {recipes_dir()}: {available_recipes()} "
                        "(or give a path to a YAML file, or set DAS_TRAIN_RECIPES to your own folder)")
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
    path = recipe_file(recipe)
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        return hydra_compose(config_name=path.stem, overrides=overrides)


def _sweep_problems(data: dict, schema_clean: bool) -> list[str]:
    """What :mod:`das_train.training.preflight` finds in a das_sweep config (the task, the
    sites, the intervention against the model's architecture). Also tried when the schema has
    found problems, so one run reports them all: each check then runs on its own, and one that
    a value of the wrong type stops adds nothing (the schema's message names that value)."""
    from omegaconf import OmegaConf

    from das_train.training.preflight import SWEEP_CHECKS, sweep_problems

    if data.get("job") != "das_sweep" or data.get("sweep", {}).get("merge"):
        return []
    cfg = OmegaConf.create(data)
    if schema_clean:
        return sweep_problems(cfg)
    problems = []
    for sweep_check in SWEEP_CHECKS:
        try:
            problems += sweep_check(cfg)
        except Exception:  # noqa: BLE001 - best effort on a config already known to be invalid
            continue
    return problems


def check(recipe: str, overrides: list[str]):
    """Composes and validates; raises ConfigError naming every problem."""
    from omegaconf import OmegaConf

    problems, usable = override_problems(recipe, overrides)
    if recipe_file(recipe) is None:
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
    problems += _sweep_problems(data, schema_clean=not problems)
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
    path = recipe_file(recipe)
    hydra.main(version_base="1.3", config_path=str(path.parent), config_name=path.stem)(entry)()
