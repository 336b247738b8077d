"""Distributed alignment search (DAS): interchange in a learned, orthogonally rotated basis.

Geiger et al. (2023) look for a causal variable not in single neurons but in a subspace of a
learned rotation of the representation. These two interventions hold that rotation:

- :class:`RotatedSpaceIntervention` learns a full ``d x d`` rotation ``R`` and interchanges
  chosen rotated coordinates;
- :class:`LowRankRotatedSpaceIntervention` learns only ``k`` orthonormal directions ``W``
  (``d x k``) and swaps the base's projection onto them for the source's.

The rotation is kept exactly orthogonal by ``torch.nn.utils.parametrizations.orthogonal``, so
``R^T`` is its inverse and nothing outside the interchanged coordinates changes. Computing the
orthogonal matrix is a Cayley transform (square) or a Householder product (tall); each
``forward`` reads the parametrized weight once and uses it for the base, the source and the
inverse. A training loop
that calls the intervention several times per step can wrap the step in
``torch.nn.utils.parametrize.cached()`` to compute it once per step.

Parameters are float32 whatever the model's dtype; inputs are cast to the weight's dtype and
the output back to the input's, so a bf16 model can carry fp32 interventions. The weight layout
(``rotate_layer.parametrizations.weight.original``, used as ``x @ weight``) is pyvene's, so
rotations trained with pyvene load (a square one is converted from pyvene's matrix-exponential
map on loading; :meth:`RotateLayer._load_from_state_dict`).

:class:`RotateLayer` and :func:`orthogonal_layer` are shared by the other trainable families
(masks, ReFT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrizations

from das_train.interventions.base import (
    DistributedRepresentationIntervention,
    Intervention,
    Subspaces,
    TrainableIntervention,
)
from das_train.interventions.checks import require_dim, require_source
from das_train.interventions.subspaces import first_dims_mask, zero_outside

# -- the rotation the trainable families share ------------------------------------------------

CAYLEY_MARKER = "cayley_map"
"""Buffer of a square :class:`RotateLayer` saying its ``original`` is read through the Cayley map."""


class RotateLayer(nn.Module):
    """A ``(in_dim, out_dim)`` weight applied as ``x @ weight``, initialised orthogonal.

    Kept apart from ``nn.Linear`` (which computes ``x @ weight.T``) so that the stored weight is
    the rotation ``R`` itself, in pyvene's layout.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        weight = torch.empty(in_dim, out_dim, dtype=torch.float32)
        nn.init.orthogonal_(weight)
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in_dim) @ (in_dim, out_dim) -> (..., out_dim)
        return x.to(self.weight.dtype) @ self.weight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # A square rotation saved without the Cayley marker (by pyvene, or by das_train before
        # it used the Cayley map) stored `original` for torch's default matrix-exponential map.
        # Rebuild that rotation and store it as the trivialization's base with a zero tangent
        # (`original = -I` reads as the identity through either map): the same weight exactly.
        marker = prefix + CAYLEY_MARKER
        original = state_dict.get(prefix + "parametrizations.weight.original")
        base = state_dict.get(prefix + "parametrizations.weight.0.base")
        if hasattr(self, CAYLEY_MARKER) and marker not in state_dict and original is not None:
            tangent = original.tril()
            rotation = torch.matrix_exp(tangent - tangent.mT)
            if base is not None:
                rotation = base @ rotation
            state_dict[prefix + "parametrizations.weight.0.base"] = rotation
            state_dict[prefix + "parametrizations.weight.original"] = -torch.eye(
                original.shape[-1], dtype=original.dtype)
            state_dict[marker] = torch.ones((), dtype=torch.uint8)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def orthogonal_layer(in_dim: int, out_dim: int) -> RotateLayer:
    """A :class:`RotateLayer` whose weight stays orthogonal (orthonormal columns if tall).

    A square rotation uses the Cayley map, one linear solve, where torch's default is the
    matrix exponential, a dozen ``d x d`` products: at ``d = 768`` a DAS step spends several
    times less computing its rotation (``scripts/bench.py``, case 4). Both maps reach every
    rotation near the initial one (the trivialization's base), which is all training moves
    through. Tall matrices keep the Householder map.
    """
    if out_dim > in_dim:
        raise ValueError(
            f"a rotation onto {out_dim} orthonormal directions needs out_dim <= in_dim={in_dim}"
        )
    layer = RotateLayer(in_dim, out_dim)
    if in_dim != out_dim:
        return parametrizations.orthogonal(layer)
    layer.register_buffer(CAYLEY_MARKER, torch.ones((), dtype=torch.uint8))
    return parametrizations.orthogonal(layer, orthogonal_map="cayley")


# -- the interventions ------------------------------------------------------------------------


class RotatedSpaceIntervention(TrainableIntervention, DistributedRepresentationIntervention):
    """Interchange of chosen coordinates in a learned full rotation (DAS).

    ``output = (where(mask, s @ R, b @ R)) @ R^T``, with ``mask`` the rotated coordinates named by
    ``subspaces`` (through ``subspace_partition`` if set), or else the first ``interchange_dim``
    of them, or else all of them (which gives back the source).

    Args:
        embed_dim: width ``d`` of one unit; required, it sizes ``R``.
        interchange_dim: how many leading rotated coordinates are interchanged when a call gives
            no ``subspaces``; ``None`` interchanges all of them.
        subspace_partition: ``[[start, end), ...]`` ranges of the rotated coordinates, so
            ``subspaces`` can name partitions.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: pyvene's other keywords (:class:`~das_train.interventions.base.Intervention`):
            ``keep_last_dim`` and ``use_fast`` are honoured; ``dtype``/``torch_dtype``
            change nothing (the rotation is float32 and inputs are cast to it, as in pyvene, whose
            0.1.8 classes ignore ``dtype`` too).
    """

    keeps_base_for_equal_source = True
    needs_embed_dim = True

    config_fields: ClassVar[tuple[str, ...]] = (*Intervention.config_fields, "interchange_dim")

    def __init__(
        self,
        embed_dim: int | None = None,
        interchange_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        self.interchange_dim: int | None = None
        self.set_interchange_dim(interchange_dim)
        self.rotate_layer = orthogonal_layer(self.embed_dim, self.embed_dim)

    def set_interchange_dim(self, interchange_dim: int | None) -> None:
        """Sets how many leading rotated coordinates a call without ``subspaces`` interchanges."""
        if interchange_dim is not None:
            interchange_dim = int(interchange_dim)
            if not 0 <= interchange_dim <= self.embed_dim:
                raise ValueError(
                    f"interchange_dim must be in 0..{self.embed_dim} (embed_dim), "
                    f"got {interchange_dim}"
                )
        self.interchange_dim = interchange_dim

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        source = require_source(type(self).__name__, source)
        # Read once: each read of a parametrized weight recomputes the orthogonal map.
        rotation = self.rotate_layer.weight  # (d, d)
        rotated_base = base.to(rotation.dtype) @ rotation  # (batch, units, d)
        rotated_source = source.to(rotation.dtype) @ rotation  # (batch, units, d) or broadcastable
        mask = self.subspace_mask(subspaces, rotated_base)
        if mask is None:
            mask = first_dims_mask(self.interchange_dim, rotated_base.shape[-1], base.device)
        if mask is None:
            mixed = rotated_source.expand_as(rotated_base)  # (batch, units, d)
        else:
            mixed = torch.where(mask, rotated_source, rotated_base)  # (batch, units, d)
        # R is orthogonal, so R^T undoes it.
        return (mixed @ rotation.T).to(base.dtype)  # (batch, units, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, interchange_dim={self.interchange_dim}"


class LowRankRotatedSpaceIntervention(
    TrainableIntervention, DistributedRepresentationIntervention
):
    """Swaps the base's projection onto ``k`` learned orthonormal directions for the source's.

    ``output = b + ((s - b) @ W * mask) @ W^T`` with ``W`` ``(d, k)``, ``W^T W = I``: the part of
    ``b`` in the span of ``W`` becomes ``s``'s, the orthogonal complement is left alone.
    ``subspaces`` name some of the ``k`` coordinates; without them all ``k`` are interchanged.

    Args:
        embed_dim: width ``d`` of one unit; required.
        low_rank_dimension: the number ``k <= d`` of learned directions; required.
        subspace_partition: ``[[start, end), ...]`` ranges of the ``k`` coordinates.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: as for :class:`RotatedSpaceIntervention` (``keep_last_dim``
            honoured, as is ``use_fast``; ``dtype`` changes nothing).
    """

    keeps_base_for_equal_source = True
    needs_embed_dim = True

    config_fields: ClassVar[tuple[str, ...]] = (*Intervention.config_fields, "low_rank_dimension")

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        owner, dim = type(self).__name__, self.embed_dim
        rank = require_dim(low_rank_dimension, "low_rank_dimension", owner, "the number k of directions")
        if rank > dim:
            raise ValueError(f"{owner}: low_rank_dimension={rank} exceeds embed_dim={dim}")
        self.low_rank_dimension = rank
        self.rotate_layer = orthogonal_layer(dim, rank)

    def subspace_size(self) -> int:
        return self.low_rank_dimension

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        source = require_source(type(self).__name__, source)
        weight = self.rotate_layer.weight  # (d, k), read once
        base_w = base.to(weight.dtype)  # (batch, units, d)
        # Projecting the difference once is the same as projecting base and source apart.
        diff = (source.to(weight.dtype) - base_w) @ weight  # (batch, units, k)
        diff = zero_outside(diff, self.subspace_mask(subspaces, diff))
        return (base_w + diff @ weight.T).to(base.dtype)  # (batch, units, d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, low_rank_dimension={self.low_rank_dimension}"


__all__ = ["LowRankRotatedSpaceIntervention", "RotateLayer", "RotatedSpaceIntervention"]
