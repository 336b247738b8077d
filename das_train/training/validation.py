"""The one check of a composed run config: every problem at once, before any work.

:func:`validate` walks the schema (:mod:`das_train.training.schema`): unknown keys, wrong
types, values outside a field's ``allowed`` or bounds, non-finite floats; then the checks that
span fields (:data:`CROSS_FIELD_CHECKS`), each a function of the plain config data. A run
fails with one message that names them all.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from typing import Any

from das_train.training.iit_checks import iit_problems
from das_train.training.schema import SWEEP_METHODS, RunConfig


def _floats_in(value: Any) -> list[float]:
    """The float values of a scalar or a list (a nan or inf reaches training and turns every
    weight into nan without an error, so these are checked up front)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, float)]


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _value_problems(where: str, value: Any, constraints: typing.Mapping[str, Any]) -> list[str]:
    """What the field's own constraints (schema.option) say about a value of the right type."""
    if not all(math.isfinite(v) for v in _floats_in(value)):
        return [f"'{where}' = {value!r} must be finite (no nan or inf)"]
    problems = []
    if constraints.get("non_negative") and value < 0:
        problems.append(f"'{where}' = {value!r} must be zero or more")
    allowed = constraints.get("allowed")
    if allowed is not None and value not in allowed:
        problems.append(f"'{where}' = {value!r} is not allowed; allowed: {list(allowed)}")
    if constraints.get("positive") and value is not None and value <= 0:
        problems.append(f"'{where}' = {value!r} must be positive")
    return problems


def _walk(schema: type, data: Any, path: tuple[str, ...], errors: list[str]) -> None:
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    if not isinstance(data, dict):
        errors.append(f"{'.'.join(path) or 'config'}: expected a mapping, got {data!r}")
        return
    for key in sorted(set(data) - names - {"hydra", "defaults"}):
        where = ".".join(path + (key,))
        errors.append(f"unknown key '{where}'; allowed under '{'.'.join(path) or '<top>'}': {sorted(names)}")
    for f in dataclasses.fields(schema):
        if f.name not in data:
            continue
        value, annotation = data[f.name], hints[f.name]
        where = ".".join(path + (f.name,))
        if dataclasses.is_dataclass(annotation):
            _walk(annotation, value, path + (f.name,), errors)
        elif not _type_ok(value, annotation):
            errors.append(f"'{where}' = {value!r} has the wrong type; expected {annotation}")
        else:
            errors += _value_problems(where, value, f.metadata)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    return data[name] if isinstance(data.get(name), dict) else {}


def model_problems(data: dict[str, Any]) -> list[str]:
    model = _section(data, "model")
    problems = []
    if model.get("kind") == "hub" and not model.get("name"):
        problems.append("'model.name' is required when model.kind=hub (a Hugging Face Hub id)")
    if model.get("device_map") is not None:
        if model.get("kind") != "hub":
            problems.append("'model.device_map' applies to model.kind=hub only")
        if importlib.util.find_spec("accelerate") is None:
            problems.append("model.device_map needs the accelerate package: pip install 'das_train[big]'")
    return problems


def sweep_setting_problems(data: dict[str, Any]) -> list[str]:
    sweep = _section(data, "sweep")
    problems = []
    per_pass = sweep.get("sites_per_pass", "auto")
    if isinstance(per_pass, str) and per_pass != "auto" or isinstance(per_pass, int) and per_pass <= 0:
        problems.append(f"'sweep.sites_per_pass' = {per_pass!r} must be a positive number, auto or null")
    task = _section(data, "task")
    if task.get("score_among") == "answers" and task.get("answer_score") == "sequence":
        problems.append("'task.score_among' = 'answers' does not go with task.answer_score=sequence, which scores "
                        "among its candidate answers already; leave score_among at vocabulary")
    methods = sweep.get("methods", ["das"])
    if isinstance(methods, list):
        unknown = [m for m in methods if m not in SWEEP_METHODS]
        if unknown:
            problems.append(f"'sweep.methods' holds {unknown}; allowed: {list(SWEEP_METHODS)}")
        if not methods or methods[0] != "das":
            problems.append(f"'sweep.methods' = {methods} must start with das (the sweep's trained intervention)")
        if len(set(methods)) != len(methods):
            problems.append(f"'sweep.methods' = {methods} names a method twice")
    shard, shards = sweep.get("shard", 0), sweep.get("num_shards", 1)
    if isinstance(shard, int) and isinstance(shards, int) and not 0 <= shard < max(shards, 1):
        problems.append(f"'sweep.shard' = {shard} must be in 0..{shards - 1} (sweep.num_shards = {shards})")
    return problems


def logger_problems(data: dict[str, Any]) -> list[str]:
    kind = _section(data, "logger").get("kind")
    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(kind)
    if package is None or importlib.util.find_spec(package) is not None:
        return []
    return [f"logger={kind} needs the {package} package: pip install 'das_train[{package}]'"]


def steering_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with a steering job's settings that no model is needed to see."""
    s = _section(data, "steering")
    if data.get("job") != "steering" or not s:
        return []
    problems = []
    prompts, word, coefficient = s.get("prompts") or [], str(s.get("word", "")), s.get("coefficient")
    if not prompts:
        problems.append("'steering.prompts' is empty; give at least one prompt to continue")
    elif any(not str(p).strip() for p in prompts):
        problems.append(f"'steering.prompts' holds an empty prompt: {list(prompts)}")
    if not word.strip() or len(word.split()) != 1:
        problems.append(f"'steering.word' = {word!r} must be one word")
    if isinstance(coefficient, (list, tuple)) and not coefficient:
        problems.append("'steering.coefficient' is an empty list; give at least one coefficient")
    samples = s.get("samples", 1)
    if isinstance(samples, int) and samples > 1 and not s.get("do_sample"):
        problems.append(f"'steering.samples' = {samples} needs steering.do_sample=true (greedy decoding gives "
                        "one continuation per prompt)")
    return problems


CROSS_FIELD_CHECKS = (model_problems, sweep_setting_problems, logger_problems, steering_problems, iit_problems)
"""The checks that span fields or the environment; each takes the plain config data."""


def validate(data: dict[str, Any]) -> list[str]:
    """Every problem of a composed config (as a plain dict), unknown keys included."""
    errors: list[str] = []
    _walk(RunConfig, data, (), errors)
    for check in CROSS_FIELD_CHECKS:
        errors += check(data)
    return errors
