"""Representation finetuning (ReFT, Wu et al. 2024): a learned low-rank edit of the base alone.

ReFT steers a frozen model by editing hidden states instead of weights. LoReFT edits the
representation only inside a ``k``-dimensional subspace with orthonormal rows ``R`` (``k x d``),
moving ``R h`` to a learned target ``W h + b``::

    LoReFT(h) = h + R^T (act(W h + b) - R h)

NoReFT drops the orthogonality (``R`` a plain linear map). There is no source: the edit is a
function of the base (``source_kind = "none"``).

``R`` is stored as pyreft stores it, ``rotate_layer.weight`` of shape ``(d, k)`` = ``R^T`` with
orthonormal columns, applied as ``h @ weight``; the target map is ``learned_source`` (an
``nn.Linear(d, k)``). ``subspaces``, when given, name which of the ``k`` coordinates are edited
(pyreft uses this to give tasks separate slices of one intervention).

Dropout is applied to the edit ``R^T(...)`` only, not to ``h``: dropping entries of the frozen
model's own representation would perturb it in ways the intervention did not choose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from das_train.interventions.base import (
    DistributedRepresentationIntervention,
    Intervention,
    Subspaces,
    TrainableIntervention,
)
from das_train.interventions.checks import require_dim
from das_train.interventions.rotated import orthogonal_layer
from das_train.interventions.subspaces import zero_outside


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# Named, not passed as callables, so the choice is a string the saved config can hold.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": _identity,
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def _activation(name: str | None, owner: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name is None:
        return ACTIVATIONS["linear"]
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: act_fn {name!r} is not one of {sorted(ACTIVATIONS)} (or None)")
    return ACTIVATIONS[name]


class _ReftBase(TrainableIntervention, DistributedRepresentationIntervention):
    """What both ReFT variants share: the rank, the learned target ``act(W h + b)``, dropout
    on the edit, and ``subspaces`` naming some of the ``k`` coordinates."""

    source_kind: ClassVar[str] = "none"
    needs_embed_dim = True
    config_fields: ClassVar[tuple[str, ...]] = (
        *Intervention.config_fields,
        "low_rank_dimension",
        "dropout",
        "act_fn",
    )

    def __init__(
        self,
        embed_dim: int | None,
        low_rank_dimension: int | None,
        dropout: float,
        act_fn: str | None,
        subspace_partition: Sequence[Sequence[int]] | None,
        pyvene_keywords: dict[str, Any],
    ) -> None:
        super().__init__(embed_dim, subspace_partition, **pyvene_keywords)
        owner, dim = type(self).__name__, self.embed_dim
        rank = require_dim(low_rank_dimension, "low_rank_dimension", owner, "the rank k")
        self.low_rank_dimension = rank
        self.dropout = float(dropout)
        self.act_fn = act_fn
        self._act = _activation(act_fn, owner)
        self.learned_source = nn.Linear(dim, rank)  # W h + b
        self.dropout_layer = nn.Dropout(self.dropout)

    def subspace_size(self) -> int:
        return self.low_rank_dimension

    def _apply_edit(self, base_w: torch.Tensor, edit: torch.Tensor, back: torch.Tensor,
                    subspaces: Subspaces) -> torch.Tensor:
        """``base + dropout(edit @ back)`` with the edit limited to ``subspaces``."""
        edit = zero_outside(edit, self.subspace_mask(subspaces, edit))  # (batch, units, k)
        return base_w + self.dropout_layer(edit @ back)  # (batch, units, d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, low_rank_dimension={self.low_rank_dimension}, "
            f"dropout={self.dropout}, act_fn={self.act_fn}"
        )


class LoreftIntervention(_ReftBase):
    """Low-rank linear subspace ReFT: ``h + R^T (act(W h + b) - R h)``, ``R R^T = I``.

    Args:
        embed_dim: width ``d`` of one unit; required.
        low_rank_dimension: rank ``k <= d`` of the edited subspace; required.
        dropout: dropout probability on the edit (training mode only).
        act_fn: activation on ``W h + b``: one of ``linear``, ``relu``, ``gelu``, ``silu``,
            ``tanh``, ``sigmoid``, or ``None`` (linear).
        subspace_partition: ``[[start, end), ...]`` ranges of the ``k`` coordinates.
        **pyvene_keywords: pyreft's other keywords: ``keep_last_dim`` honoured; ``dtype``
            changes nothing (pyreft keeps the parameters in ``dtype``, default bf16; here
            they are float32 and inputs are cast, which is at least as precise).
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        dropout: float = 0.0,
        act_fn: str | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(
            embed_dim, low_rank_dimension, dropout, act_fn, subspace_partition, pyvene_keywords
        )
        if self.low_rank_dimension > self.embed_dim:
            raise ValueError(
                f"{type(self).__name__}: low_rank_dimension={self.low_rank_dimension} exceeds "
                f"embed_dim={self.embed_dim}"
            )
        self.rotate_layer = orthogonal_layer(self.embed_dim, self.low_rank_dimension)  # (d, k) = R^T

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        rotation = self.rotate_layer.weight  # (d, k) = R^T, read once
        base_w = base.to(rotation.dtype)  # (batch, units, d)
        edit = self._act(self.learned_source(base_w)) - base_w @ rotation  # (batch, units, k)
        return self._apply_edit(base_w, edit, rotation.T, subspaces).to(base.dtype)


class NoreftIntervention(_ReftBase):
    """ReFT without orthogonality: ``h + P^T (act(W h + b) - (P h + c))``, ``P`` a free ``k x d``.

    ``P`` (with bias ``c`` when ``add_bias``) is ``proj_layer``, an ``nn.Linear(d, k)``.

    Args:
        embed_dim: width ``d`` of one unit; required.
        low_rank_dimension: rank ``k``; required.
        dropout: dropout probability on the edit (training mode only).
        act_fn: activation on ``W h + b`` (see :class:`LoreftIntervention`).
        add_bias: whether the projection ``P h`` has a bias ``c``.
        subspace_partition: ``[[start, end), ...]`` ranges of the ``k`` coordinates.
        **pyvene_keywords: pyreft's other keywords: ``keep_last_dim`` honoured; ``dtype``
            changes nothing (pyreft keeps the parameters in ``dtype``, default bf16; here
            they are float32 and inputs are cast, which is at least as precise).
    """

    config_fields: ClassVar[tuple[str, ...]] = (*_ReftBase.config_fields, "add_bias")

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        dropout: float = 0.0,
        act_fn: str | None = None,
        add_bias: bool = False,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(
            embed_dim, low_rank_dimension, dropout, act_fn, subspace_partition, pyvene_keywords
        )
        self.add_bias = bool(add_bias)
        self.proj_layer = nn.Linear(self.embed_dim, self.low_rank_dimension, bias=self.add_bias)  # P h + c

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        projection = self.proj_layer.weight  # (k, d)
        base_w = base.to(projection.dtype)  # (batch, units, d)
        edit = self._act(self.learned_source(base_w)) - self.proj_layer(base_w)  # (batch, units, k)
        return self._apply_edit(base_w, edit, projection, subspaces).to(base.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, add_bias={self.add_bias}"


__all__ = ["LoreftIntervention", "NoreftIntervention"]
