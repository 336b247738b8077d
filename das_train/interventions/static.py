"""Interventions without learned parameters: interchange, addition, ablation, noise, collect.

Each writes a fresh output with ``torch.where`` or arithmetic, so the tensors it is given are
never modified, and ``subspaces`` restrict it to chosen dimensions of each unit.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from das_train.interventions.base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    Intervention,
    LocalistRepresentationIntervention,
    SourcelessIntervention,
    Subspaces,
)

# Meng et al. (2022) noise: three times the standard deviation of GPT-2 XL's embeddings.
DEFAULT_NOISE_SCALE = 3 * 0.13462


def _require_source(name: str, source: torch.Tensor | None) -> torch.Tensor:
    if source is None:
        raise ValueError(
            f"{name} needs a source: give `sources` (an interchange) or `source_representations`"
        )
    return source


class VanillaIntervention(LocalistRepresentationIntervention):
    """Interchange: the base takes the source's values (on ``subspaces`` only, if given)."""

    keeps_base_for_equal_source = True

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = _require_source(type(self).__name__, source).to(base.dtype)
        mask = self.subspace_mask(subspaces, base)
        if mask is None:
            return source.expand_as(base)
        return torch.where(mask, source, base)


class AdditionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Adds the source to the base (steering vectors, noising with a given vector)."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = _require_source(type(self).__name__, source).to(base.dtype)
        mask = self.subspace_mask(subspaces, base)
        if mask is None:
            return base + source
        return base + torch.where(mask, source, torch.zeros_like(source))


class SubtractionIntervention(BasisAgnosticIntervention, LocalistRepresentationIntervention):
    """Subtracts the source from the base."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        source = _require_source(type(self).__name__, source).to(base.dtype)
        mask = self.subspace_mask(subspaces, base)
        if mask is None:
            return base - source
        return base - torch.where(mask, source, torch.zeros_like(source))


class ZeroIntervention(SourcelessIntervention, LocalistRepresentationIntervention):
    """Zero ablation."""

    def forward(self, base, source=None, subspaces: Subspaces = None):
        mask = self.subspace_mask(subspaces, base)
        if mask is None:
            return torch.zeros_like(base)
        return base.masked_fill(mask, 0)


class CollectIntervention(SourcelessIntervention):
    """Passes the base through unchanged; the hook core returns what it saw.

    With ``subspaces``, only those dimensions are collected (see :meth:`collect`).
    """

    def forward(self, base, source=None, subspaces: Subspaces = None):
        return base

    def collect(self, base: torch.Tensor, subspaces: Subspaces = None) -> torch.Tensor:
        dims = self.subspace_dims(subspaces, base.shape[0])
        if dims is None:
            return base
        if any(d != dims[0] for d in dims):
            raise ValueError(
                "CollectIntervention needs the same subspaces for every example, so the "
                "collected tensor is rectangular"
            )
        return base[..., torch.as_tensor(dims[0], device=base.device)]


class NoiseIntervention(SourcelessIntervention, LocalistRepresentationIntervention):
    """Adds Gaussian noise ``scale * N(0, 1)`` drawn fresh for every unit of every example.

    Any number of positions works. With ``seed`` set, the noise comes from a generator of its
    own, so a run is reproducible without touching the global RNG; :meth:`reset` rewinds it.

    Args:
        scale: the noise's standard deviation (default: 3 x 0.13462, as in causal tracing).
        seed: seed of the intervention's own generator; ``None`` uses torch's global RNG.
    """

    config_fields: ClassVar[tuple[str, ...]] = (
        "embed_dim",
        "subspace_partition",
        "scale",
        "seed",
    )

    def __init__(
        self,
        embed_dim: int | None = None,
        scale: float = DEFAULT_NOISE_SCALE,
        seed: int | None = None,
        subspace_partition=None,
    ) -> None:
        super().__init__(embed_dim=embed_dim, subspace_partition=subspace_partition)
        self.scale = float(scale)
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
    "ConstantSourceIntervention",
    "Intervention",
    "NoiseIntervention",
    "SkipIntervention",
    "SubtractionIntervention",
    "VanillaIntervention",
    "ZeroIntervention",
]
