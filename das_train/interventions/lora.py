"""LoRA as an intervention: a low-rank update of one module's output computed from its input.

LoRA (Hu et al., 2022) adds ``x A B * (alpha / r)`` to a linear layer's output ``y = f(x)``.
Written as an intervention it needs no change to the model: the hook core hands the hooked
module's own input ``x`` as ``source`` (``source_kind = "module_input"``) and the module's
output as ``base``::

    output = base + dropout(source) @ A @ B * (alpha / r)

``B`` starts at zero, so a fresh intervention leaves the model exactly as it was and training
starts from the frozen model. ``A`` starts uniform in ``+-1/sqrt(input_dim)`` (peft's default,
Kaiming-uniform with ``a = sqrt(5)`` over the input width). The input width may differ from the
output's (an MLP's up-projection): ``input_dim`` sizes ``A``, ``embed_dim`` sizes ``B``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from das_train.interventions.base import Intervention, TrainableIntervention
from das_train.interventions.checks import require_dim
from das_train.interventions.subspaces import Subspaces, zero_outside


class LoRAIntervention(TrainableIntervention):
    """``base + dropout(source) @ lora_A @ lora_B * (alpha / low_rank_dimension)``.

    ``subspaces``, when given, restrict the update to those output dimensions.

    Args:
        embed_dim: width of the hooked module's output (the unit); required.
        low_rank_dimension: rank ``r``; required.
        alpha: scale numerator; the update is multiplied by ``alpha / r``.
        dropout: dropout probability on the module input (training mode only).
        input_dim: width of the hooked module's input; defaults to ``embed_dim``.
        subspace_partition: ``[[start, end), ...]`` ranges of the output dimensions.
        **pyvene_keywords: the keywords pyvene's config hands every intervention, which change
            nothing here. pyvene 0.1.8 has no LoRA class to mirror, so any other keyword is a
            ``TypeError`` naming it.
    """

    source_kind: ClassVar[str] = "module_input"
    accepts_unknown_keywords: ClassVar[bool] = False
    config_fields: ClassVar[tuple[str, ...]] = (
        *Intervention.config_fields,
        "low_rank_dimension",
        "alpha",
        "dropout",
        "input_dim",
    )

    def __init__(
        self,
        embed_dim: int | None = None,
        low_rank_dimension: int | None = None,
        alpha: float = 1.0,
        dropout: float = 0.0,
        input_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        owner = type(self).__name__
        dim = require_dim(embed_dim, "embed_dim", owner, "the width of the module's output")
        rank = require_dim(low_rank_dimension, "low_rank_dimension", owner, "the rank r")
        in_dim = dim if input_dim is None else require_dim(
            input_dim, "input_dim", owner, "the width of the module's input"
        )
        super().__init__(embed_dim=dim, subspace_partition=subspace_partition, **pyvene_keywords)
        self.low_rank_dimension = rank
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.input_dim = in_dim
        bound = 1.0 / math.sqrt(in_dim)
        self.lora_A = nn.Parameter(torch.empty(in_dim, rank).uniform_(-bound, bound))  # (in, r)
        self.lora_B = nn.Parameter(torch.zeros(rank, dim))  # (r, out): zero, so it starts as identity
        self.dropout_layer = nn.Dropout(self.dropout)

    @property
    def scaling(self) -> float:
        return self.alpha / self.low_rank_dimension

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        if source is None:
            raise ValueError(
                f"{type(self).__name__} needs the hooked module's input as `source`; the hook core "
                "passes it (source_kind='module_input'), a direct call must too"
            )
        if source.shape[-1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: source (module input) is {source.shape[-1]} wide, "
                f"input_dim is {self.input_dim}"
            )
        dtype = self.lora_A.dtype
        base_w = base.to(dtype)  # (batch, units, out)
        update = self.dropout_layer(source.to(dtype)) @ self.lora_A @ self.lora_B  # (batch, units, out)
        update = update * self.scaling
        update = zero_outside(update, self.subspace_mask(subspaces, base_w))
        return (base_w + update).to(base.dtype)  # (batch, units, out)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, low_rank_dimension={self.low_rank_dimension}, "
            f"alpha={self.alpha}, dropout={self.dropout}, input_dim={self.input_dim}"
        )


__all__ = ["LoRAIntervention"]
