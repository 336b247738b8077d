"""What is wrong with an IIT job's variables and sites, found before any model is built.

Interchange intervention training places each causal variable in a block of units at a site;
a variable without a block, two blocks that share a unit (an interchange of one variable would
then move the other too), a block outside the layer, a layer the model lacks or a position the
task does not name would train something other than what was asked, silently.
:func:`block_problems` names each block problem with its key; the run's validation
(:func:`iit_problems`) and :class:`~das_train.training.iit_module.IITModule` both use it, so a
config and a module built in code are refused alike.

Two kinds of model are trained: the hierarchical equality MLP (the site is a hidden layer) and
a tiny language model on a text task with a tokenizer of its own (the site is a block's output
at a named token position; the task's spec, read with that tokenizer, says which exist).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from das_train.tasks.hierarchical_equality import VARIABLES
from das_train.training.preflight import task_spec
from das_train.training.schema import ConfigError
from das_train.training.task_loading import load_task

IIT_TASK = "hierarchical_equality"
"""The vector task whose MLP the IIT job trains; every other task trains a tiny language model."""
MLP_LAYERS = 3
"""Hidden layers of the task's MLP (``tasks/hierarchical_equality.model_config``)."""


def _block_range(name: str, block: Any, width: int, where: str) -> tuple[list[str], range | None]:
    """The block as a range of units, or the problems that stop it being one."""
    key = f"'{where}.blocks.{name}' = {block!r}"
    ok = (isinstance(block, Sequence) and not isinstance(block, str) and len(block) == 2
          and all(isinstance(b, int) and not isinstance(b, bool) for b in block))
    if not ok:
        return [f"{key} must be [start, stop], two integers"], None
    start, stop = block
    if not 0 <= start < stop <= width:
        return [f"{key} is outside the layer's {width} units: a block is [start, stop) with "
                f"0 <= start < stop <= {width}"], None
    return [], range(start, stop)


def block_problems(variables: Sequence[str], blocks: Mapping[str, Any], width: int,
                   known: Sequence[str] = VARIABLES, where: str = "iit") -> list[str]:
    """Every problem of assigning ``variables`` to ``blocks`` of a layer ``width`` units wide:
    unknown variables (in either), a variable without a block, a block that is not
    ``[start, stop)`` inside the layer, and overlapping blocks."""
    problems = []
    if not variables:
        problems.append(f"'{where}.variables' is empty; give at least one of {list(known)}")
    for name in variables:
        if name not in known:
            problems.append(f"'{where}.variables' holds unknown variable {name!r}; allowed: {list(known)}")
        elif name not in blocks:
            problems.append(f"variable {name!r} has no block: set '{where}.blocks.{name}' = [start, stop]")
    for name in blocks:
        if name not in known:
            problems.append(f"'{where}.blocks.{name}': unknown variable {name!r}; allowed: {list(known)}")
    ranges = {}
    for name in (v for v in dict.fromkeys(variables) if v in blocks):
        found, units = _block_range(name, blocks[name], width, where)
        problems += found
        if units is not None:
            ranges[name] = units
    names = list(ranges)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if set(ranges[first]) & set(ranges[second]):
                problems.append(f"'{where}.blocks.{first}' = {list(blocks[first])} and '{where}.blocks.{second}' = "
                                f"{list(blocks[second])} overlap; the variables' blocks must be disjoint")
    return problems


def site_problems(iit: dict[str, Any], layers: int, positions: Sequence[str] | None) -> list[str]:
    """The site's and the reference site's layer within the model's ``layers`` and their
    positions among the task's ``positions`` (``None``: a model without positions, where
    none may be given)."""
    problems = []
    for layer_key, position_key in (("layer", "position"), ("reference_layer", "reference_position")):
        layer, position = iit.get(layer_key), iit.get(position_key)
        if isinstance(layer, int) and not 0 <= layer < layers:
            problems.append(f"'iit.{layer_key}' = {layer} is not a layer of the model; allowed: 0..{layers - 1}")
        if positions is None:
            if position is not None:
                problems.append(f"'iit.{position_key}' = {position!r}: the MLP's layers have no token positions; "
                                "leave it unset")
        elif position is None and (layer_key == "layer" or layer is not None):
            problems.append(f"'iit.{position_key}' is missing: a language model's site needs a token position; "
                            f"allowed: {list(positions)}")
        elif position is not None and position not in positions:
            problems.append(f"'iit.{position_key}' = {position!r} is not a position of the task; "
                            f"allowed: {list(positions)}")
    if iit.get("reference_position") is not None and iit.get("reference_layer") is None:
        problems.append("'iit.reference_position' is set without 'iit.reference_layer'; set both or neither")
    return problems


def rank_problems(iit: dict[str, Any], width: int) -> list[str]:
    rank = iit.get("das_rank")
    if isinstance(rank, int) and rank > width:
        return [f"'iit.das_rank' = {rank} is wider than the layer's {width} units; allowed: 1..{width}"]
    return []


def text_task_facts(task: dict[str, Any], model: dict[str, Any]) -> tuple[list[str], list[str]] | list[str]:
    """(the task's variables, its named positions) for a tiny language model, or the problems
    that stop one being trained on this task."""
    if model.get("kind") != "tiny":
        return [f"'model.kind' = {model.get('kind')!r}: job=iit trains a model from scratch, the {IIT_TASK} MLP "
                "(task=hierarchical_equality) or a tiny language model (model.kind=tiny)"]
    try:
        loaded = load_task(task.get("name"), task)
    except ConfigError as err:
        return err.problems
    if not hasattr(loaded, "build_tokenizer"):
        return [f"'task.name' = {task.get('name')!r}: a tiny language model is trained on a task with a tokenizer "
                "of its own (e.g. gender); this task has none"]
    spec = task_spec(loaded, loaded.build_tokenizer())
    return [spec.variable], list(spec.positions)


def iit_problems(data: dict[str, Any]) -> list[str]:
    """The IIT job's problems in plain config data (a check of the run's validation)."""
    if data.get("job") != "iit":
        return []
    iit, model, task = (data.get(key) if isinstance(data.get(key), dict) else {} for key in ("iit", "model", "task"))
    if task.get("name") == IIT_TASK:
        known, positions, layers = VARIABLES, None, MLP_LAYERS
    else:
        facts = text_task_facts(task, model)
        if not isinstance(facts, tuple):
            return facts
        (known, positions), layers = facts, model.get("n_layer")
    problems = site_problems(iit, layers, positions) if isinstance(layers, int) else []
    width, variables, blocks = model.get("hidden"), iit.get("variables"), iit.get("blocks")
    if isinstance(width, int) and isinstance(variables, list) and isinstance(blocks, dict):
        problems += block_problems(variables, blocks, width, known) + rank_problems(iit, width)
    elif not isinstance(blocks, dict):
        problems.append(f"'iit.blocks' = {blocks!r} must map each variable to [start, stop]")
    return problems


__all__ = ["IIT_TASK", "MLP_LAYERS", "block_problems", "iit_problems", "site_problems", "text_task_facts"]
