"""One side of a pair batch as model inputs, and where a named position stands on that side.

Everything that runs the model on pairs (training, the frozen-model filter, probes, a sweep's
caches) builds a side's keyword inputs with :func:`model_inputs`, so a column the pair
contract adds reaches all of them at once: pairs of different lengths are left-padded and
carry position ids, without which a padded row would not compute what the unpadded one does.

A named position is an int shared by every row (a fixed template) or a
:class:`~das_train.data.pair_contract.RowPosition`, a token index per row that may differ
between a pair's base and its source; :func:`row_indices` reads the latter from the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping

import torch

from das_train.data.pair_contract import (
    BASE_EMBEDS,
    BASE_IDS,
    BASE_MASK,
    BASE_POSITION_IDS,
    BASE_POSITIONS,
    SOURCE_EMBEDS,
    SOURCE_IDS,
    SOURCE_MASK,
    SOURCE_POSITION_IDS,
    SOURCE_POSITIONS,
    RowPosition,
)

Batch = Mapping[str, torch.Tensor]
Position = int | RowPosition | None
"""A site's position: a shared token index (negative counts from the end), a per-row one, or
``None`` for the whole activation (vector tasks)."""

_COLUMNS = {  # side -> (token ids, attention mask, embeddings, position ids, RowPosition indices)
    "base": (BASE_IDS, BASE_MASK, BASE_EMBEDS, BASE_POSITION_IDS, BASE_POSITIONS),
    "source": (SOURCE_IDS, SOURCE_MASK, SOURCE_EMBEDS, SOURCE_POSITION_IDS, SOURCE_POSITIONS),
}


def _columns(side: str) -> tuple[str, str, str, str, str]:
    if side not in _COLUMNS:
        raise ValueError(f"side must be 'base' or 'source', got {side!r}")
    return _COLUMNS[side]


def model_inputs(batch: Batch, side: str, is_language_model_task: bool) -> dict[str, torch.Tensor]:
    """The keyword inputs of one side (``"base"`` or ``"source"``) of a pair batch.

    Language-model tasks give token ids, with the attention mask and position ids when the
    batch has them; vector tasks give ``inputs_embeds``, which the built-in MLP and GRU take.
    """
    ids, mask, embeds, position_ids, _ = _columns(side)
    wanted = ids if is_language_model_task else embeds
    if wanted not in batch:
        raise KeyError(
            f"the batch has no {wanted!r} column (is_language_model_task={is_language_model_task}); "
            f"columns: {sorted(batch)}"
        )
    if not is_language_model_task:
        return {"inputs_embeds": batch[embeds]}
    inputs = {"input_ids": batch[ids]}
    if mask in batch:
        inputs["attention_mask"] = batch[mask]
    if position_ids in batch:
        inputs["position_ids"] = batch[position_ids]
    return inputs


def side_positions(batch: Batch, side: str) -> torch.Tensor | None:
    """``(batch, columns)``: the token index of every RowPosition on ``side``, or ``None`` when
    the batch has no such column (a fixed template)."""
    return batch.get(_columns(side)[4])


def row_indices(position: Position, positions: torch.Tensor | None) -> int | torch.Tensor | None:
    """``position`` made concrete for a batch: an int or ``None`` as it is; a RowPosition as
    the ``(batch,)`` column of ``positions`` (:func:`side_positions`) it names."""
    if not isinstance(position, RowPosition):
        return position
    if positions is None:
        raise KeyError(
            f"{position} needs the batch's {BASE_POSITIONS!r}/{SOURCE_POSITIONS!r} columns, which it lacks"
        )
    if not 0 <= position.column < positions.shape[-1]:
        raise IndexError(
            f"{position} out of range: the batch has {positions.shape[-1]} RowPosition columns"
        )
    return positions[:, position.column]


def check_position(position: object) -> Position:
    """``position`` as a site position (:data:`Position`; an integer of any kind, numpy's too,
    becomes an int), else a ValueError naming it."""
    if position is None or isinstance(position, RowPosition):
        return position
    if not isinstance(position, bool):
        try:
            return operator.index(position)
        except TypeError:
            pass
    raise ValueError(f"position must be an int, a RowPosition or None, got {position!r}")


__all__ = ["Position", "check_position", "model_inputs", "row_indices", "side_positions"]
