"""Interventions that learn *how much* of the representation to interchange, as a soft mask.

DAS needs the size of the subspace chosen in advance. Boundless DAS (Wu et al., 2023) learns it
instead: a boundary in a learned rotation, relaxed into a sigmoid mask whose temperature is
annealed towards a hard step. The two sigmoid-mask interventions learn a free mask per
coordinate, over neurons or over rotated coordinates.

All three mix ``(1 - mask) * base + mask * source``. The temperature is a registered buffer,
never a parameter: a schedule (the training callback, through :meth:`set_temperature`) anneals
it, and the optimizer must not also move it (pyvene 0.1.8 made it a ``Parameter``, so
``get_trainable_parameters()`` handed it to the optimizer as well). A buffer still moves with
``.to(device)`` and is saved in the state dict.

Each has ``sparsity_loss()``: a differentiable penalty in [0, 1], the fraction of coordinates
interchanged, that training adds per intervention so the mask does not simply grow to everything.

``subspaces``, when given, restrict the learned mask to those (rotated) coordinates: outside them
the base is kept whatever the mask says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from das_train.interventions.base import (
    DistributedRepresentationIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    Subspaces,
    TrainableIntervention,
)
from das_train.interventions.checks import require_source
from das_train.interventions.rotated import orthogonal_layer
from das_train.interventions.subspaces import zero_outside


class _TemperatureMixin:
    """``temperature`` buffer access shared by the three mask interventions."""

    temperature: torch.Tensor

    def _init_temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"temperature must be > 0, got {value!r}")
        # A buffer: annealed by a schedule, saved, moved with the module, never optimized.
        self.register_buffer("temperature", torch.tensor(float(value), dtype=torch.float32))

    def get_temperature(self) -> torch.Tensor:
        return self.temperature

    @torch.no_grad()
    def set_temperature(self, value: float | torch.Tensor) -> None:
        """Sets the temperature in place (keeps the buffer's device and dtype)."""
        value = torch.as_tensor(value, dtype=self.temperature.dtype)
        if not bool((value > 0).all()):
            raise ValueError(f"temperature must be > 0, got {value!r}")
        self.temperature.copy_(value.reshape(()))


class _LogitMaskMixin(_TemperatureMixin):
    """A learned logit per coordinate, read as the soft mask ``sigmoid(logit / T)``.

    The logits keep pyvene's parameter name of each class (``mask``, ``masks``), so saved
    states load; :meth:`mask_logits` is how the shared code finds them.
    """

    def mask_logits(self) -> torch.Tensor:
        raise NotImplementedError

    def mask_values(self) -> torch.Tensor:
        """The soft mask at the current temperature; shape ``(d,)``."""
        return torch.sigmoid(self.mask_logits() / self.temperature)

    def sparsity_loss(self) -> torch.Tensor:
        """Differentiable penalty: the mean mask value (fraction of coordinates swapped)."""
        return self.mask_values().mean()


def _soft_interchange(
    owner: Intervention,
    base: torch.Tensor,
    source: torch.Tensor | None,
    mask: torch.Tensor,
    subspaces: Subspaces,
    rotation: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(1 - mask) * b + mask * s``, in the basis of ``rotation`` (then rotated back) if given.

    ``mask`` is the soft ``(d,)`` mask; outside the coordinates ``subspaces`` name, the base is
    kept whatever it says. The computation runs in the rotation's dtype (the mask's without
    one) and returns the base's.
    """
    source = require_source(type(owner).__name__, source)
    dtype = (mask if rotation is None else rotation).dtype
    base_w, source_w = base.to(dtype), source.to(dtype)  # (batch, units, d)
    if rotation is not None:
        base_w, source_w = base_w @ rotation, source_w @ rotation  # (batch, units, d)
    mask = zero_outside(mask.to(dtype), owner.subspace_mask(subspaces, base_w))  # (d,) or (batch, 1, d)
    # b + mask * (s - b) is (1 - mask) * b + mask * s with one fewer full-size product.
    mixed = base_w + mask * (source_w - base_w)  # (batch, units, d)
    if rotation is not None:
        mixed = mixed @ rotation.T  # R is orthogonal, so R^T undoes it
    return mixed.to(base.dtype)


class BoundlessRotatedSpaceIntervention(
    _TemperatureMixin, TrainableIntervention, DistributedRepresentationIntervention
):
    """Boundless DAS: a learned rotation and a learned boundary on how many coordinates to swap.

    With ``R`` the rotation, ``beta = clamp(intervention_boundaries, 0, 1)``, ``T`` the
    temperature and ``i = 0 .. d-1`` the rotated coordinate::

        mask_i = sigmoid((beta * d - (i + 0.5)) / T)
        output = ((1 - mask) * (b @ R) + mask * (s @ R)) @ R^T

    The ``+ 0.5`` centres each coordinate on its cell, so as ``T -> 0`` the mask becomes exactly
    the first ``round(beta * d)`` coordinates, and at any ``T`` no coordinate sits at 0.5 just
    because ``beta * d`` is an integer. (pyvene multiplies in a second factor,
    ``sigmoid(i / T)``, which half-masks coordinate 0 at every temperature; we leave it out.)

    An intervention trained by pyvene learned its rotation and boundary under pyvene's mask,
    so loading one must keep that mask to reproduce its outputs: ``mask_formula="pyvene"``
    computes ``sigmoid(i / T) * sigmoid((clamp(beta, 1e-3, 1) * d - i) / T)``. The pyvene
    artifact loader sets it, and it is saved with the intervention, so the choice survives a
    save and load here.

    Args:
        embed_dim: width ``d`` of one unit; required.
        initial_boundary: starting value of ``intervention_boundaries`` (fraction of ``d``).
        temperature: starting temperature, in units of coordinates (pyvene's default, 50, makes
            the mask nearly flat at first; anneal it towards ~0.1).
        subspace_partition: ``[[start, end), ...]`` ranges of the rotated coordinates.
        source_representation: a constant source used in place of a source run.
        mask_formula: ``"centred"`` (ours, above) or ``"pyvene"`` (pyvene 0.1.8's, for
            interventions it trained).
        **pyvene_keywords: pyvene's other keywords (``keep_last_dim``, ``use_fast``
            honoured; ``dtype`` changes nothing: parameters are float32, inputs are cast).
    """

    keeps_base_for_equal_source = True
    needs_embed_dim = True

    config_fields: ClassVar[tuple[str, ...]] = (*Intervention.config_fields, "mask_formula")
    MASK_FORMULAS: ClassVar[tuple[str, ...]] = ("centred", "pyvene")

    def __init__(
        self,
        embed_dim: int | None = None,
        initial_boundary: float = 0.5,
        temperature: float = 50.0,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        mask_formula: str = "centred",
        **pyvene_keywords: Any,
    ) -> None:
        if mask_formula not in self.MASK_FORMULAS:
            raise ValueError(
                f"mask_formula={mask_formula!r} is not allowed; allowed: {list(self.MASK_FORMULAS)}"
            )
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        self.rotate_layer = orthogonal_layer(self.embed_dim, self.embed_dim)
        # Shape (1,), as in pyvene, so its saved boundaries load here.
        self.intervention_boundaries = nn.Parameter(torch.tensor([float(initial_boundary)]))
        self._init_temperature(temperature)
        self.mask_formula = mask_formula

    def get_boundary_parameters(self) -> nn.Parameter:
        return self.intervention_boundaries

    @torch.no_grad()
    def set_intervention_boundaries(self, value: float) -> None:
        """Sets the boundary in place, so an optimizer holding the parameter keeps tracking it."""
        self.intervention_boundaries.fill_(float(value))

    def boundary(self) -> torch.Tensor:
        """The boundary as a fraction of ``d``, clamped to [0, 1]; shape ``()``."""
        return self.intervention_boundaries.clamp(0.0, 1.0)[0]

    def boundary_mask(self) -> torch.Tensor:
        """The soft mask over rotated coordinates at the current temperature; shape ``(d,)``."""
        dim = self.embed_dim
        if self.mask_formula == "pyvene":
            return self._pyvene_boundary_mask()
        centres = torch.arange(dim, device=self.temperature.device, dtype=torch.float32) + 0.5
        logits = (self.boundary() * dim - centres) / self.temperature  # (d,)
        return torch.sigmoid(logits)

    def _pyvene_boundary_mask(self) -> torch.Tensor:
        """pyvene 0.1.8's mask, in its order of operations so its outputs are matched exactly."""
        dim = self.embed_dim
        index = torch.arange(dim, device=self.temperature.device, dtype=torch.float32)  # (d,)
        upper = self.intervention_boundaries.clamp(1e-3, 1.0)[0] * dim
        return torch.sigmoid(index / self.temperature) * torch.sigmoid(
            (upper - index) / self.temperature
        )  # (d,)

    def intervention_size(self) -> int:
        """How many rotated coordinates the boundary marks (the hard mask's size as ``T -> 0``)."""
        return int(torch.round(self.boundary().detach() * self.embed_dim).item())

    def boundary_sparsity_loss(self) -> torch.Tensor:
        """Differentiable penalty: the clamped boundary, i.e. the fraction of coordinates swapped."""
        return self.boundary()

    def sparsity_loss(self) -> torch.Tensor:
        return self.boundary_sparsity_loss()

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        rotation = self.rotate_layer.weight  # (d, d), read once
        return _soft_interchange(self, base, source, self.boundary_mask(), subspaces, rotation)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, boundary={self.boundary().item():.3f}, "
            f"temperature={self.temperature.item():.4g}, mask_formula={self.mask_formula!r}"
        )


class SigmoidMaskIntervention(
    _LogitMaskMixin, TrainableIntervention, LocalistRepresentationIntervention
):
    """A learned soft mask over neurons: ``output = (1 - m) * b + m * s``.

    ``m = sigmoid(mask / T)`` with ``mask`` a learned logit per dimension and ``T`` the
    temperature buffer.

    Args:
        embed_dim: width ``d`` of one unit; required.
        initial_logit: starting value of every ``mask`` logit (0 gives ``m = 0.5``).
        temperature: starting temperature (pyvene's default, 0.01).
        subspace_partition: ``[[start, end), ...]`` ranges of the dimensions.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: pyvene's other keywords, which change nothing here: a localist
            intervention sees each unit alone whatever ``keep_last_dim`` says (as in pyvene);
            ``use_fast`` is honoured, ``dtype`` ignored (parameters float32, inputs cast).
    """

    keeps_base_for_equal_source = True
    needs_embed_dim = True

    def __init__(
        self,
        embed_dim: int | None = None,
        initial_logit: float = 0.0,
        temperature: float = 0.01,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        self.mask = nn.Parameter(torch.full((self.embed_dim,), float(initial_logit)))
        self._init_temperature(temperature)

    def mask_logits(self) -> torch.Tensor:
        return self.mask

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        return _soft_interchange(self, base, source, self.mask_values(), subspaces)


class SigmoidMaskRotatedSpaceIntervention(
    _LogitMaskMixin, TrainableIntervention, DistributedRepresentationIntervention
):
    """A learned rotation and a learned soft mask per rotated coordinate.

    ``m = sigmoid(masks / T)``; ``output = ((1 - m) * (b @ R) + m * (s @ R)) @ R^T``. Unlike
    Boundless DAS the mask need not be a prefix of the rotated coordinates.

    Args:
        embed_dim: width ``d`` of one unit; required.
        initial_logit: starting value of every ``masks`` logit (pyvene's default, 100, gives
            ``m = sigmoid(2) = 0.88`` at the default temperature).
        temperature: starting temperature (pyvene's default, 50).
        subspace_partition: ``[[start, end), ...]`` ranges of the rotated coordinates.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: pyvene's other keywords (``keep_last_dim``, ``use_fast``
            honoured; ``dtype`` changes nothing: parameters are float32, inputs are cast).
    """

    keeps_base_for_equal_source = True
    needs_embed_dim = True

    def __init__(
        self,
        embed_dim: int | None = None,
        initial_logit: float = 100.0,
        temperature: float = 50.0,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        self.rotate_layer = orthogonal_layer(self.embed_dim, self.embed_dim)
        self.masks = nn.Parameter(torch.full((self.embed_dim,), float(initial_logit)))
        self._init_temperature(temperature)

    def mask_logits(self) -> torch.Tensor:
        return self.masks

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        rotation = self.rotate_layer.weight  # (d, d), read once
        return _soft_interchange(self, base, source, self.mask_values(), subspaces, rotation)


__all__ = [
    "BoundlessRotatedSpaceIntervention",
    "SigmoidMaskIntervention",
    "SigmoidMaskRotatedSpaceIntervention",
]
