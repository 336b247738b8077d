"""Task plugins found by name: ``task.name=gender`` is the one CounterfactualTask of
``das_train/tasks/gender.py`` (the checkout's ``tasks/gender.py``). No registry to keep.

A plugin that is configured by the run (``tasks/pairs.py`` reads the file ``task.path``
names) defines a ``from_config(task_config)`` classmethod and is built with it; the others
take no arguments."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import inspect
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from das_train.data.pair_contract import CounterfactualTask
from das_train.data.pair_files import PairFileError
from das_train.data.pair_files.sequences import SEQUENCE
from das_train.training.schema import ConfigError, TaskConfig


def task_classes(module: ModuleType) -> list[type[CounterfactualTask]]:
    """The concrete CounterfactualTask classes ``module`` defines itself (not imports)."""
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, CounterfactualTask) and not inspect.isabstract(obj)
            and obj.__module__ == module.__name__]


def available_tasks() -> list[str]:
    """The task plugins: the modules of ``das_train.tasks`` that define a CounterfactualTask."""
    names = sorted(p.stem for p in Path(str(importlib.resources.files("das_train.tasks"))).glob("*.py")
                   if not p.stem.startswith("_"))
    return [n for n in names if task_classes(importlib.import_module(f"das_train.tasks.{n}"))]


def load_task(name: str, config: TaskConfig | Mapping[str, Any] | None = None) -> CounterfactualTask:
    """The CounterfactualTask defined in ``tasks/<name>.py``, built from the run's ``task``
    config section (typed or as a mapping) when the plugin takes one (a bad pair file is a
    ConfigError here)."""
    try:
        module = importlib.import_module(f"das_train.tasks.{name}")
    except ModuleNotFoundError as err:
        raise ConfigError([f"task.name={name!r}: no module tasks/{name}.py; available: {available_tasks()}"]) from err
    classes = task_classes(module)
    if len(classes) != 1:
        raise ConfigError([f"task.name={name!r}: tasks/{name}.py must define exactly one CounterfactualTask, "
                           f"found {len(classes)}; available tasks: {available_tasks()}"])
    cls = classes[0]
    from_config = getattr(cls, "from_config", None)
    if from_config is None:
        if _answer_score(config) == SEQUENCE:
            raise ConfigError([f"task.answer_score=sequence scores the text answers of a pair file (task=pairs); "
                               f"task {name!r} has fixed one-token labels: use task.answer_score=first_token"])
        return cls()
    if config is None:
        config = {**dataclasses.asdict(TaskConfig()), "name": name}
    elif dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)  # plugins read a mapping: the data layer knows no schema
    try:
        return from_config(config)
    except PairFileError as err:
        raise ConfigError([f"task.path={err.source}: {problem}" for problem in err.problems]) from err


def _answer_score(config: TaskConfig | Mapping[str, Any] | None) -> str | None:
    """The ``task.answer_score`` of a typed or mapping task config (None: none given)."""
    if config is None:
        return None
    return config.answer_score if isinstance(config, TaskConfig) else config.get("answer_score")
