"""What is wrong with an IIT job's variables and blocks, found before any model is built.

Interchange intervention training places each causal variable in a block of neurons; a
variable without a block, two blocks that share a neuron (an interchange of one variable would
then move the other too) or a block outside the layer would train something other than what
was asked, silently. :func:`block_problems` names each such problem with its key; the run's
validation (:func:`iit_problems`) and :class:`~das_train.training.iit_module.IITModule` both
use it, so a config and a module built in code are refused alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from das_train.tasks.hierarchical_equality import VARIABLES

IIT_TASK = "hierarchical_equality"
"""The one task the IIT job trains today (its MLP and causal model)."""
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


def iit_problems(data: dict[str, Any]) -> list[str]:
    """The IIT job's problems in plain config data (a check of the run's validation)."""
    if data.get("job") != "iit":
        return []
    iit = data.get("iit") if isinstance(data.get("iit"), dict) else {}
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    task = data.get("task") if isinstance(data.get("task"), dict) else {}
    problems = []
    if task.get("name") != IIT_TASK:
        problems.append(f"'task.name' = {task.get('name')!r}: job=iit trains the {IIT_TASK} MLP only; "
                        f"set task={IIT_TASK}")
    layer = iit.get("layer", 0)
    if isinstance(layer, int) and not 0 <= layer < MLP_LAYERS:
        problems.append(f"'iit.layer' = {layer} is not a hidden layer of the MLP; allowed: 0..{MLP_LAYERS - 1}")
    width, variables, blocks = model.get("hidden"), iit.get("variables"), iit.get("blocks")
    if isinstance(width, int) and isinstance(variables, list) and isinstance(blocks, dict):
        problems += block_problems(variables, blocks, width)
    elif not isinstance(blocks, dict):
        problems.append(f"'iit.blocks' = {blocks!r} must map each variable to [start, stop]")
    return problems


__all__ = ["IIT_TASK", "MLP_LAYERS", "block_problems", "iit_problems"]
