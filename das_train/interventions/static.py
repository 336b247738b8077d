"""Interventions without learned parameters: interchange, addition, ablation, noise, collect.

Each writes a fresh output with ``torch.where`` or arithmetic, so the tensors it is given are
never modified, and ``subspaces`` restrict it to chosen dimensions of each unit.

Without ``subspaces``, the interchange, addition, subtraction, zero and collect interventions act
on the first ``embed_dim`` dimensions of each unit, as pyvene's do (its ``interchange_dim``,
which starts as ``embed_dim``). Inside an IntervenableModel ``embed_dim`` is the site's width,
so that is the whole unit; a direct call on wider tensors touches only the leading
``embed_dim`` columns, and on narrower ones raises rather than guess.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from das_train.interventions.base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    SourcelessIntervention,
    Subspaces,
)
from das_train.interventions.checks import require_source
from das_train.interventions.subspaces import first_dims_mask

# Meng et al. (2022) noise: three times the standard deviation of GPT-2 XL's embeddings.
DEFAULT_NOISE_SCALE = 3 * 0.13462


def _leading_dims_mask(intervention: Intervention, base: torch.Tensor) -> torch.Tensor | None:
    """``(width,)`` mask of the first ``embed_dim`` columns, or ``None`` when that is all of them."""
    dim, width = intervention.embed_dim, base.shape[-1]
    if dim is None or dim == width:
        return None
    if width < dim:
        raise ValueError(
            f"{type(intervention).__name__} has embed_dim={dim} but was given units {width} wide; "
            f"give tensors whose last dimension is at least {dim}"
        )
    return first_dims_mask(dim, width, base.device)


def _chosen_mask(intervention: Intervention, subspaces: Subspaces, base: torch.Tensor):
    """The dimensions acted on: ``subspaces`` if given, else the leading ``embed_dim``."""
    mask = intervention.subspace_mask(subspaces, base)
    if mask is None:
        return _leading_dims_mask(intervention, base)
    return mask


class VanillaIntervention(LocalistRepresentationIntervention):
    """Interchange: the base takes the source's values (on ``subspaces`` only, if given).

    Called directly, ``subspaces`` may also hold one list per unit, and ``use_fast=True`` keeps
    only the first list, both as in pyvene (:meth:`Intervention.resolve_subspaces`). A source
    narrower in its leading dimensions (one ``(width,)`` vector) is broadcast over the base.
    """

    keeps_base_for_equal_source = True

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = require_source(type(self).__name__, source).to(base.dtype)
        mask = _chosen_mask(self, subspaces, base)
        if mask is None:
            return source.expand_as(base)
        return torch.where(mask, source, base)


class AdditionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Adds the source to the base (steering vectors, noising with a given vector)."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = require_source(type(self).__name__, source).to(base.dtype)
        mask = _chosen_mask(self, subspaces, base)
        if mask is None:
            return base + source
        return base + torch.where(mask, source, torch.zeros_like(source))


class SubtractionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Subtracts the source from the base."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = require_source(type(self).__name__, source).to(base.dtype)
        mask = _chosen_mask(self, subspaces, base)
        if mask is None:
            return base - source
        return base - torch.where(mask, source, torch.zeros_like(source))


class ZeroIntervention(SourcelessIntervention, LocalistRepresentationIntervention):
    """Zero ablation."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        mask = _chosen_mask(self, subspaces, base)
        if mask is None:
            return torch.zeros_like(base)
        return base.masked_fill(mask, 0)


class CollectIntervention(SourcelessIntervention):
    """Returns what it is given, restricted to ``subspaces``; the model's run is left unchanged.

    Called directly, ``forward(base, None, subspaces)`` returns the selected columns of
    ``base`` in the order ``subspaces`` names them (as pyvene's does), per example or, in
    pyvene's direct-call form, per unit (:meth:`Intervention.resolve_subspaces`). Inside an
    IntervenableModel the hook core calls :meth:`collect` and leaves the activation as it was.
    """

    def forward(self, base, source=None, subspaces: Subspaces = None):
        if source is not None:
            raise CollectSourceError(
                "CollectIntervention takes no source (it only reads the base): call it as "
                "intervention(base, None, subspaces=...)"
            )
        return self.collect(base, subspaces)

    def collect(self, base: torch.Tensor, subspaces: Subspaces = None) -> torch.Tensor:
        dims, per_unit = self.resolve_subspaces(subspaces, base)
        if dims is None:
            leading = _leading_dims_mask(self, base)
            return base if leading is None else base[..., : self.embed_dim]
        if any(len(d) != len(dims[0]) for d in dims):
            raise ValueError(
                "CollectIntervention needs as many subspace dimensions for every example (or "
                f"unit), so the collected tensor is rectangular; got {dims!r}"
            )
        index = torch.as_tensor(dims, dtype=torch.long, device=base.device)  # (rows, k)
        if all(d == dims[0] for d in dims):
            return base[..., index[0]]
        if not per_unit:  # (batch, 1, ..., 1, k)
            index = index.view(index.shape[0], *([1] * (base.dim() - 2)), index.shape[-1])
        return torch.gather(base, -1, index.expand(*base.shape[:-1], index.shape[-1]))


class CollectSourceError(ValueError, AssertionError):
    """A source handed to a collect intervention. An ``AssertionError`` too, because pyvene
    asserts there and programs written for it catch that."""


class NoiseIntervention(SourcelessIntervention, LocalistRepresentationIntervention):
    """Adds Gaussian noise ``scale * N(0, 1)`` drawn fresh for every unit of every example.

    Any number of positions works. With ``seed`` set, the noise comes from a generator of its
    own, so a run is reproducible without touching the global RNG; :meth:`reset` rewinds it.

    Args:
        scale: the noise's standard deviation (default: 3 x 0.13462, as in causal tracing).
        seed: seed of the intervention's own generator; ``None`` uses torch's global RNG.
        noise_leve: pyvene's name (sic) for the standard deviation; when given it replaces
            ``scale``. (pyvene's default is 0.13462 itself, one standard deviation, and it adds
            one fixed draw for exactly 4 positions; ours draws fresh noise for any number.)
        **pyvene_keywords: pyvene's other keywords, which change nothing here (a localist
            intervention sees each unit alone whatever ``keep_last_dim`` says).
    """

    config_fields: ClassVar[tuple[str, ...]] = (*Intervention.config_fields, "scale", "seed")

    def __init__(
        self,
        embed_dim: int | None = None,
        scale: float = DEFAULT_NOISE_SCALE,
        seed: int | None = None,
        subspace_partition=None,
        noise_leve: float | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim, subspace_partition=subspace_partition, **pyvene_keywords
        )
        self.scale = float(scale if noise_leve is None else noise_leve)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def reset(self) -> None:
        """Rewinds the seeded generator, so the next call draws the same noise as the first."""
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(self.seed))
            self._generators[device] = gen
        return self._generators[device]

    def forward(self, base, source=None, subspaces: Subspaces = None):
        gen = self._generator(base.device)
        # Drawn in float32 then cast, so bf16 runs see the same noise as fp32 ones.
        noise = torch.randn(base.shape, generator=gen, device=base.device, dtype=torch.float32)
        noise = (noise * self.scale).to(base.dtype)
        mask = self.subspace_mask(subspaces, base)
        if mask is not None:
            noise = noise.masked_fill(~mask, 0)
        return base + noise

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, seed={self.seed}"


class SkipIntervention(VanillaIntervention, BasisAgnosticIntervention):
    """Skips the hooked module: its output at the chosen units becomes its input there.

    An interchange whose source is the module's own input (the hook core hands it over); the
    module's input and output must have the same width (an attention or MLP sub-layer, a block).
    """

    source_kind: ClassVar[str] = "module_input"
    keeps_base_for_equal_source = False  # its source is the module's input, never a pair's


__all__ = [
    "AdditionIntervention",
    "CollectIntervention",
    "CollectSourceError",
    "ConstantSourceIntervention",
    "Intervention",
    "NoiseIntervention",
    "SkipIntervention",
    "SubtractionIntervention",
    "VanillaIntervention",
    "ZeroIntervention",
]
