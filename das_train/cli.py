"""Command-line handling: pick the recipe, check every override, then hand over to Hydra.

``python -m das_train recipe=NAME key=value ...``: the recipe is a YAML file of ``recipes/``
found by name (no registry), composed with the config groups of ``das_train/conf``. Before any
work, the overrides and the composed config are checked against the typed schema and every
problem is reported at once: unknown keys, unknown group options, wrong types, bad values.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import signal
import sys
import threading
from pathlib import Path

from omegaconf import OmegaConf

from das_train import usage
from das_train.training.preflight import SWEEP_CHECKS, sweep_problems
from das_train.training.ranks import is_global_zero
from das_train.training.run import READ_ONLY_JOBS, run
from das_train.training.run_dir import RunDirLocked
from das_train.training.schema import (
    ConfigError,
    RunConfig,
    complete,
    defaults,
    map_keys,
    schema_keys,
)
from das_train.training.validation import validate

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("model", "task", "intervention", "trainer", "logger", "sweep")
DEFAULT_RECIPE = "gender_tiny"
# Lightning's DDP launcher starts each further process with this command line as Hydra saw it,
# which has no recipe= (Hydra never sees it); the recipe file reaches them through this variable.
RECIPE_OF_PARENT = "DAS_TRAIN_RECIPE_OF_PARENT"
SCHEMA_DEFAULTS = "schema_defaults"
"""The name under which the schema's defaults are offered to Hydra; ``conf/base.yaml`` composes
every recipe on top of it, so recipes and groups hold only what differs."""


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
    recipe = os.environ.get(RECIPE_OF_PARENT, DEFAULT_RECIPE)
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
            if override.startswith("~") and override[1:] in map_keys():
                # The delete half of a map set whole: what whole_maps hands a DDP process's command line.
                usable.append(override)
                continue
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


def offer_schema_defaults() -> None:
    """Stores the schema's defaults (plain data, untyped, so the schema's own check names a
    wrong value) as Hydra's :data:`SCHEMA_DEFAULTS` config, the base of every recipe."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_DEFAULTS, node=defaults())


def whole_maps(overrides: list[str]) -> list[str]:
    """The overrides with each map set whole (``task.positions={name:'{name}',last:last}``)
    turned into Hydra's delete-then-add, so the given map replaces the recipe's, in the given
    order, as the user means; Hydra itself would merge it into the recipe's map and refuse its
    new keys."""
    maps = map_keys()
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        out += [f"~{key}", f"+{key}={value}"] if sep and key in maps else [override]
    return out


def compose(recipe: str, overrides: list[str]):
    """The composed config (for checks and tests), without starting a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    offer_schema_defaults()
    path = recipe_file(recipe)
    with initialize_config_dir(config_dir=str(path.parent), version_base="1.3"):
        return hydra_compose(config_name=path.stem, overrides=whole_maps(overrides))


def _sweep_problems(data: dict, schema_clean: bool) -> list[str]:
    """What :mod:`das_train.training.preflight` finds in a das_sweep config (the task, the
    sites, the intervention against the model's architecture). Also tried when the schema has
    found problems, so one run reports them all: each check then runs on its own, and one that
    a value of the wrong type stops adds nothing (the schema's message names that value)."""
    try:
        config = RunConfig.from_data(data)
    except ConfigError:  # a section that is no mapping, which the schema's message names
        return []
    if config.job != "das_sweep" or config.sweep.merge:
        return []
    if schema_clean:
        return sweep_problems(config)
    problems = []
    for sweep_check in SWEEP_CHECKS:
        try:
            problems += sweep_check(config)
        except Exception:  # noqa: BLE001 - best effort on a config already known to be invalid
            continue
    return problems


def first_values(overrides: list[str]) -> list[str]:
    """The overrides with each multirun sweep (``a=1,2``, ``a=[0],[1]``, ``a=range(4)``) cut
    to its first value, read by Hydra's own parser, so one composition checks them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else o.input_line
            for o in OverridesParser.create().parse_overrides(overrides)]


def check(recipe: str, overrides: list[str]):
    """Composes and validates; raises ConfigError naming every problem."""
    problems, usable = override_problems(recipe, overrides)
    if recipe_file(recipe) is None:
        raise ConfigError(problems)
    from hydra.errors import HydraException

    try:
        cfg = compose(recipe, first_values(usable))
    except HydraException as err:  # e.g. hydra.x=1 where Hydra wants +hydra.x=1: its own words
        raise ConfigError(problems + [str(err).strip().replace("\n", " ")]) from None
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    data = complete(data)
    problems += validate(data)
    problems += _sweep_problems(data, schema_clean=not problems)
    if problems:
        raise ConfigError(problems)
    return cfg


HELP_FLAGS = ("-h", "--help")
MULTIRUN_FLAGS = ("-m", "--multirun")


def print_help(recipe: str | None, overrides: list[str]) -> None:
    """``--help``: recipes, groups, every key; with ``recipe=``, that recipe's composed values."""

    values = None
    if recipe is not None:
        values = OmegaConf.to_container(check(recipe, overrides), resolve=True)
    print(usage.help_text(recipes_dir(), DEFAULT_RECIPE, CONF_DIR, GROUPS, recipe, values), end="")


def hydra_directory_overrides(num_shards: int, overrides: list[str], multirun: bool) -> list[str]:
    """Hydra settings that make one directory per job the run directory.

    In a multirun the job's subdirectory is Hydra's ``override_dirname`` built from the swept
    keys only: jobs that differ in anything but ``sweep.shard`` get their own directory, while
    the shards of one sweep (only ``sweep.shard`` swept) share ``run_dir``, which sharding needs.
    Shards keep their own ``.hydra/`` so they do not overwrite each other's record.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    extra = []
    if multirun and not any(o.startswith("hydra.job.config.override_dirname.") for o in overrides):
        parsed = OverridesParser.create().parse_overrides(overrides)
        # A swept run_dir already parts the jobs (hydra.sweep.dir is run_dir).
        fixed = {o.key_or_group for o in parsed if not o.is_sweep_override()} | {"sweep.shard", "run_dir"}
        extra.append("hydra.job.config.override_dirname.exclude_keys=[" + ",".join(f"'{k}'" for k in sorted(fixed)) + "]")
    if num_shards > 1 and not any(o.startswith("hydra.output_subdir=") for o in overrides):
        extra.append("hydra.output_subdir=.hydra/shard-${sweep.shard}")
    return extra


def job_run_dir(run_dir: str) -> str:
    """The directory Hydra made for this job (``hydra.run.dir``, or the sweep's job directory),
    written as the user wrote ``run_dir`` where it is that or below it, else relative to the
    working directory where it is inside it, so a recorded config.yaml names it the same way."""
    from hydra.core.hydra_config import HydraConfig

    output = os.path.abspath(HydraConfig.get().runtime.output_dir)
    given = os.path.abspath(run_dir)
    if output == given:
        return run_dir
    if output.startswith(given + os.sep):
        return os.path.join(run_dir, os.path.relpath(output, given))
    if output.startswith(os.getcwd() + os.sep):
        return os.path.relpath(output)
    return output


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM during a run. Not a KeyboardInterrupt, which Lightning turns into a
    silent ``exit(1)``, and not an Exception, so no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _raise_interrupted(signum: int, frame) -> None:
    raise RunInterrupted(signum)


@contextlib.contextmanager
def interrupts_raise():
    """SIGINT and SIGTERM raise :class:`RunInterrupted` while inside; the previous handlers
    come back after.

    Python drops an exception raised in a finalizer (a ``__del__``, a weakref callback) with an
    "Exception ignored" note, so a signal that lands in one would be lost (seen in Lightning's
    ``Profiler.__del__``); such a dropped interrupt is sent again from a helper thread, so the
    handler runs once more, in ordinary code.
    """
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def deliver_again(unraisable) -> None:
        if isinstance(unraisable.exc_value, RunInterrupted):
            threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.signum)).start()
        else:
            previous_hook(unraisable)

    sys.unraisablehook = deliver_again
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def recipe_for_child_processes(recipe: str):
    """Sets :data:`RECIPE_OF_PARENT` to the recipe's file while inside (DDP processes that
    Lightning starts inherit it), then puts back what was there."""
    before = os.environ.get(RECIPE_OF_PARENT)
    os.environ[RECIPE_OF_PARENT] = str(recipe_file(recipe))
    try:
        yield
    finally:
        if before is None:
            del os.environ[RECIPE_OF_PARENT]
        else:
            os.environ[RECIPE_OF_PARENT] = before


def report_interrupt(exit_code: int, run_dir: str) -> None:
    """One line on stderr, from rank 0 only (a Ctrl-C reaches every DDP process)."""

    if is_global_zero():
        print(f"das_train: interrupted ({signal.Signals(exit_code - 128).name}); results so far are in "
              f"{run_dir}; run the same command again to resume", file=sys.stderr, flush=True)


def run_with_hydra(recipe: str, overrides: list[str], flags: list[str], run_dirs: list[str]) -> None:
    """Starts Hydra on the recipe; each job runs with ``run_dir`` set to its Hydra directory,
    which is appended to ``run_dirs`` (so an interrupt can name it). :func:`check` has validated
    the config of a single run; each job of a multirun (checked through its first values only)
    is validated by ``run``."""
    import hydra

    validated = not any(flag in MULTIRUN_FLAGS for flag in flags)

    def entry(cfg) -> None:
        cfg.run_dir = job_run_dir(cfg.run_dir)
        run_dirs.append(cfg.run_dir)
        try:
            run(cfg, validated=validated)
        except (ConfigError, RunDirLocked) as err:
            # Found once the run directory or the model is known: refused as the up-front checks are
            # (one message, exit 2), not reported by Hydra as a crash.
            print(f"das_train: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    sys.argv = [sys.argv[0], *flags, *whole_maps(overrides)]
    offer_schema_defaults()
    path = recipe_file(recipe)
    hydra.main(version_base="1.3", config_path=str(path.parent), config_name=path.stem)(entry)()


def run_read_only(cfg, multirun: bool) -> None:
    """A job that only reads a finished run (:data:`READ_ONLY_JOBS`) runs without Hydra, which
    would create ``run_dir`` if missing and write its record and log of this job over the run's."""
    if multirun:
        raise ConfigError([f"job={cfg.job} reads one run directory; it takes no -m/--multirun"])
    run(cfg, validated=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    recipe, overrides, flags = split_arguments(argv)
    try:
        if any(flag in HELP_FLAGS for flag in flags):
            print_help(recipe if any(a.startswith("recipe=") for a in argv) else None, overrides)
            return
        cfg = check(recipe, overrides)
        multirun = any(flag in MULTIRUN_FLAGS for flag in flags)
        if cfg.job in READ_ONLY_JOBS:
            run_read_only(cfg, multirun)
            return
    except ConfigError as err:
        print(f"das_train: {err}", file=sys.stderr)
        raise SystemExit(2) from None

    overrides += hydra_directory_overrides(cfg.sweep.num_shards, overrides, multirun)
    run_dirs = [cfg.run_dir]
    try:
        with interrupts_raise(), recipe_for_child_processes(recipe):
            run_with_hydra(recipe, overrides, flags, run_dirs)
    except (RunInterrupted, KeyboardInterrupt) as stop:
        code = stop.exit_code if isinstance(stop, RunInterrupted) else 130
        report_interrupt(code, run_dirs[-1])
        raise SystemExit(code) from None
