"""Subspace arithmetic: the ``subspaces`` argument of an intervention call turned into the
dimensions (and a mask) it selects, per example or per unit.

Kept apart from the base classes because it is plain list and tensor work that the base class's
``resolve_subspaces`` and the interventions share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Subspaces = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | int | None


def list_depth(value: Any) -> int:
    """How deep the first elements of nested lists go (0 for a scalar or an empty list)."""
    depth = 0
    while isinstance(value, (list, tuple)) and len(value) > 0:
        depth += 1
        value = value[0]
    return depth


def expand_subspaces(
    subspaces: Subspaces,
    batch_size: int,
    partition: Sequence[Sequence[int]] | None = None,
) -> list[list[int]] | None:
    """Normalizes ``subspaces`` to a list (one per example) of dimension indices.

    Accepted: ``None`` (all dimensions), an int, a list of ints (the same for every example),
    or a list with one list of ints per example. With a ``partition``, the ints name
    partitions, each of which expands to its ``range(start, end)``.
    """
    if subspaces is None:
        return None
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if isinstance(subspaces, int):
        per_example = [[subspaces]] * batch_size
    elif list_depth(subspaces) == 1:
        per_example = [list(subspaces)] * batch_size
    elif list_depth(subspaces) == 2:
        if len(subspaces) != batch_size:
            raise ValueError(
                f"subspaces has {len(subspaces)} per-example lists but the batch has "
                f"{batch_size} examples; give one list per example, or one flat list for all"
            )
        per_example = [list(s) for s in subspaces]
    else:
        raise ValueError(
            "subspaces must be an int, a list of ints, or one list of ints per example; "
            f"got {subspaces!r}"
        )
    if partition is None:
        return per_example
    expanded = []
    for chosen in per_example:
        dims: list[int] = []
        for index in chosen:
            if not 0 <= index < len(partition):
                raise ValueError(
                    f"subspace {index} is not a partition of subspace_partition={partition} "
                    f"(allowed: 0..{len(partition) - 1})"
                )
            start, end = partition[index]
            dims.extend(range(start, end))
        expanded.append(dims)
    return expanded


def dims_to_mask(
    dims: list[list[int]] | None, base: torch.Tensor, per_unit: bool = False
) -> torch.Tensor | None:
    """Turns per-example (or, with ``per_unit``, per-unit) dimension lists into a bool mask
    broadcastable to ``base``."""
    if dims is None:
        return None
    width = base.shape[-1]
    first = dims[0]
    if all(d == first for d in dims):
        # (width,)
        mask = torch.zeros(width, dtype=torch.bool, device=base.device)
        mask[torch.as_tensor(first, dtype=torch.long, device=base.device)] = True
        return mask
    # (batch, 1, ..., 1, width), or (units, width) against the last two dims, filled with one
    # scatter rather than a loop over rows
    lengths = torch.tensor([len(chosen) for chosen in dims], device=base.device)
    rows = torch.repeat_interleave(torch.arange(len(dims), device=base.device), lengths)
    cols = torch.tensor(
        [d for chosen in dims for d in chosen], dtype=torch.long, device=base.device
    )
    mask = torch.zeros(len(dims), width, dtype=torch.bool, device=base.device)
    mask[rows, cols] = True
    if per_unit:
        return mask
    return mask.view(len(dims), *([1] * (base.dim() - 2)), width)


def first_dims_mask(count: int | None, width: int, device: torch.device) -> torch.Tensor | None:
    """``(width,)`` bool mask of the first ``count`` coordinates; ``None`` means all of them."""
    if count is None or count >= width:
        return None
    return torch.arange(width, device=device) < count


def zero_outside(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` where ``mask`` holds and zero elsewhere; ``None`` keeps them all.

    A fresh tensor from ``torch.where`` with a scalar zero: no full-size zeros are allocated,
    and gradients reach only the kept entries.
    """
    if mask is None:
        return values
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
