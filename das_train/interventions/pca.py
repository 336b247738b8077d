"""Interchange in the principal components of a site's activations: a basis fitted, not trained.

PCA is the unsupervised baseline for DAS: it asks whether a variable lives in the directions of
largest variance rather than in a subspace learned for it. :meth:`PCARotatedSpaceIntervention.fit`
computes the basis from collected activations; nothing here is trained, so the basis, mean and
scale are buffers (saved and moved with the module, never handed to an optimizer).

With ``C`` the ``(k, d)`` components (orthonormal rows), ``mu`` the mean and ``sigma`` the
per-dimension standard deviation the data were standardized with::

    z(x)   = ((x - mu) / sigma) @ C^T                              # (..., k)
    z      = where(mask, z(s), z(b))
    output = b + ((z - z(b)) @ C) * sigma

That is, the standardized base has its coordinates along the chosen components replaced by the
source's; the rest of it, including the part outside the span of ``C`` when ``k < d``, is kept.
(pyvene returns ``(z @ C) * sigma + mu``, which with ``k < d`` also throws away everything of
the base outside the span of the components.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from das_train.interventions.base import (
    DistributedRepresentationIntervention,
    Intervention,
    Subspaces,
)
from das_train.interventions.checks import require_dim, require_source
from das_train.interventions.subspaces import first_dims_mask, zero_outside

# Dimensions whose variance is below this are not rescaled (they would divide by ~0).
_MIN_STD = 1e-6


def _pyvene_basis(owner, components, mean, std, pca, pca_mean, pca_std):
    """``(components, mean, std)`` from ours or from pyvene's ``pca``/``pca_mean``/``pca_std``."""
    given = [n for n, v in (("pca", pca), ("pca_mean", pca_mean), ("pca_std", pca_std)) if v is not None]
    if not given:
        return components, mean, std
    ours = [n for n, v in (("components", components), ("mean", mean), ("std", std)) if v is not None]
    if ours:
        raise ValueError(f"{owner}: give either {ours} or pyvene's {given}, not both")
    if pca is not None and not hasattr(pca, "components_"):
        raise ValueError(f"{owner}: pca must be a fitted PCA with `components_`, got {type(pca).__name__}")
    return (None if pca is None else pca.components_), pca_mean, pca_std


class PCARotatedSpaceIntervention(DistributedRepresentationIntervention):
    """Interchange of principal-component coordinates (standardized PCA).

    ``subspaces`` name components (0 = largest variance); without them the first
    ``interchange_dim`` components are interchanged, or all ``n_components`` when that is
    ``None``. Build one with :meth:`fit`; constructing it directly with no ``components`` gives
    the identity basis (a plain interchange), whose buffers a saved state then fills in.

    Args:
        embed_dim: width ``d`` of one unit; taken from ``components`` when not given.
        n_components: number ``k`` of components kept; defaults to ``components``' rows, else ``d``.
        interchange_dim: components interchanged when a call gives no ``subspaces``.
        subspace_partition: ``[[start, end), ...]`` ranges of the components.
        components: ``(k, d)`` orthonormal rows.
        mean: ``(d,)`` mean the data were centred with (zeros if ``None``).
        std: ``(d,)`` scale the data were divided by (ones if ``None``).
        source_representation: a constant source used in place of a source run.
        pca, pca_mean, pca_std: pyvene's form of the same basis: a fitted scikit-learn ``PCA``
            (its ``components_`` are used), and the mean and scale; not to be combined with
            ``components``/``mean``/``std``.
        **pyvene_keywords: pyvene's other keywords (``keep_last_dim``, ``use_fast``
            honoured; ``dtype`` changes nothing).
    """

    needs_embed_dim = True
    config_fields: ClassVar[tuple[str, ...]] = (
        *Intervention.config_fields,
        "n_components",
        "interchange_dim",
    )

    def __init__(
        self,
        embed_dim: int | None = None,
        n_components: int | None = None,
        interchange_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        components: torch.Tensor | None = None,
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        source_representation: torch.Tensor | None = None,
        pca: Any = None,
        pca_mean: torch.Tensor | None = None,
        pca_std: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        owner = type(self).__name__
        components, mean, std = _pyvene_basis(owner, components, mean, std, pca, pca_mean, pca_std)
        if components is not None:
            components = torch.as_tensor(components, dtype=torch.float32)
            if components.dim() != 2:
                raise ValueError(f"{owner}: components must be (k, d), got {tuple(components.shape)}")
            if embed_dim is None:
                embed_dim = components.shape[1]
            if n_components is None:
                n_components = components.shape[0]
        super().__init__(embed_dim, subspace_partition, source_representation, **pyvene_keywords)
        dim = self.embed_dim
        count = dim if n_components is None else require_dim(
            n_components, "n_components", owner, "the number of components"
        )
        if count > dim:
            raise ValueError(f"{owner}: n_components={count} exceeds embed_dim={dim}")
        if components is None:
            components = torch.eye(dim)[:count]
        if tuple(components.shape) != (count, dim):
            raise ValueError(
                f"{owner}: components has shape {tuple(components.shape)}, expected "
                f"(n_components, embed_dim) = ({count}, {dim})"
            )
        self.n_components = count
        if interchange_dim is not None and not 0 <= int(interchange_dim) <= count:
            raise ValueError(f"{owner}: interchange_dim must be in 0..{count}, got {interchange_dim}")
        self.interchange_dim = None if interchange_dim is None else int(interchange_dim)
        # Buffer names are pyvene's (there they were frozen Parameters).
        # Contiguous: SVD returns column-major factors, and a matmul over a different memory
        # layout rounds differently, so a reloaded (contiguous) copy would not match bit for bit.
        self.register_buffer(
            "pca_components", components.clone(memory_format=torch.contiguous_format)
        )  # (k, d)
        self.register_buffer("pca_mean", self._vector(mean, 0.0, "mean"))  # (d,)
        self.register_buffer("pca_std", self._vector(std, 1.0, "std"))  # (d,)

    def _vector(self, value: torch.Tensor | None, fill: float, name: str) -> torch.Tensor:
        if value is None:
            return torch.full((self.embed_dim,), fill)
        value = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if value.numel() != self.embed_dim:
            raise ValueError(f"{name} has {value.numel()} entries, expected embed_dim={self.embed_dim}")
        return value.clone(memory_format=torch.contiguous_format)

    @classmethod
    def fit(
        cls,
        activations: torch.Tensor,
        n_components: int | None = None,
        interchange_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
    ) -> PCARotatedSpaceIntervention:
        """PCA of ``activations`` ``(n, d)`` (or ``(..., d)``), standardized per dimension.

        Computed in float64 with ``torch.linalg.svd``; each component's sign is fixed so that its
        largest-magnitude entry is positive, so the same data always give the same basis.
        """
        data = activations.detach().reshape(-1, activations.shape[-1]).to("cpu", torch.float64)
        if data.shape[0] < 2:
            raise ValueError("PCA needs at least two activation vectors")
        mean = data.mean(dim=0)  # (d,)
        std = data.std(dim=0)  # (d,)
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        standardized = (data - mean) / std  # (n, d)
        _, _, vh = torch.linalg.svd(standardized, full_matrices=False)  # vh: (min(n, d), d)
        count = vh.shape[0] if n_components is None else int(n_components)
        if not 0 < count <= vh.shape[0]:
            raise ValueError(f"n_components must be in 1..{vh.shape[0]}, got {n_components}")
        components = vh[:count]  # (k, d)
        peaks = components.abs().argmax(dim=1, keepdim=True)  # (k, 1)
        signs = torch.sign(components.gather(1, peaks))  # (k, 1)
        components = components * signs
        return cls(
            embed_dim=data.shape[1],
            n_components=count,
            interchange_dim=interchange_dim,
            subspace_partition=subspace_partition,
            components=components.float(),
            mean=mean.float(),
            std=std.float(),
        )

    def subspace_size(self) -> int:
        return self.n_components

    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        source = require_source(type(self).__name__, source)
        components = self.pca_components  # (k, d)
        base_w = base.to(components.dtype)  # (batch, units, d)
        # The mean cancels in the difference of the two projections.
        delta = ((source.to(components.dtype) - base_w) / self.pca_std) @ components.T  # (batch, units, k)
        mask = self.subspace_mask(subspaces, delta)
        if mask is None:
            mask = first_dims_mask(self.interchange_dim, delta.shape[-1], delta.device)
        delta = zero_outside(delta, mask)
        return (base_w + (delta @ components) * self.pca_std).to(base.dtype)  # (batch, units, d)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, n_components={self.n_components}, "
            f"interchange_dim={self.interchange_dim}"
        )


__all__ = ["PCARotatedSpaceIntervention"]
