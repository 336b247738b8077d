"""Task plugins found by name: ``task.name=gender`` is the one CounterfactualTask of
``das_train/tasks/gender.py`` (the checkout's ``tasks/gender.py``). No registry to keep."""

from __future__ import annotations

import importlib
import importlib.resources
import inspect
from pathlib import Path
from types import ModuleType

from das_train.data.pair_contract import CounterfactualTask
from das_train.training.schema import ConfigError


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


def load_task(name: str) -> CounterfactualTask:
    """The CounterfactualTask defined in ``tasks/<name>.py``."""
    try:
        module = importlib.import_module(f"das_train.tasks.{name}")
    except ModuleNotFoundError as err:
        raise ConfigError([f"task.name={name!r}: no module tasks/{name}.py; available: {available_tasks()}"]) from err
    classes = task_classes(module)
    if len(classes) != 1:
        raise ConfigError([f"task.name={name!r}: tasks/{name}.py must define exactly one CounterfactualTask, "
                           f"found {len(classes)}; available tasks: {available_tasks()}"])
    return classes[0]()
