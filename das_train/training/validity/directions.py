"""Orthonormal bases ``(d, k)`` of a site that cost no training: the featurizers DAS is read
against.

Each function returns ``Q`` with orthonormal columns (float32, on CPU), the subspace that a
fixed interchange (:func:`~das_train.training.validity.interchange.interchange`) swaps. All are
deterministic: the same activations (or seed) give the same basis, column signs included, so a
sweep's rows can be reproduced and compared across runs.

- :func:`diff_means_directions`: where the classes' means differ (the classic steering vector);
- :func:`pca_directions`: where the activations vary most, whatever the labels;
- :func:`probe_weight_directions` / :func:`probe_directions`: what a linear probe reads;
- :func:`random_subspace`: a matched-rank control that knows nothing of the task;
- :func:`full_vector_basis`: the whole vector (vanilla interchange of the site).
"""

from __future__ import annotations

import torch

from das_train.training.probe import LinearProbes

_RANK_TOLERANCE = 1e-8
"""A direction whose remainder, after removing the ones before it, is below this fraction of
the largest is taken as dependent on them."""


def orthonormal_columns(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` ``(d, m)`` made orthonormal in order (Gram-Schmidt, via QR): column ``j`` of
    the result spans what column ``j`` adds to the ones before it and points the same way
    (positive dot product), so the basis does not depend on the QR routine's sign choices.
    Raises ValueError when a column adds nothing (the columns are linearly dependent)."""
    if vectors.dim() != 2 or vectors.shape[1] == 0:
        raise ValueError(f"need directions as columns (d, m) with m >= 1, got {tuple(vectors.shape)}")
    q, r = torch.linalg.qr(vectors.to(torch.float64))  # q: (d, m), r: (m, m)
    diagonal = torch.diagonal(r)
    scale = diagonal.abs().max()
    dependent = (diagonal.abs() <= _RANK_TOLERANCE * scale).nonzero().flatten().tolist()
    if scale == 0 or dependent:
        raise ValueError(f"the directions are linearly dependent (columns {dependent or 'all'} add nothing)")
    return (q * torch.sign(diagonal)).float()


def _checked_rows(activations: torch.Tensor) -> torch.Tensor:
    if activations.dim() != 2 or activations.shape[0] < 2:
        raise ValueError(f"need activations (n, d) with n >= 2, got {tuple(activations.shape)}")
    return activations.detach().to("cpu", torch.float64)


def diff_means_directions(activations: torch.Tensor, labels: torch.Tensor,
                          n_classes: int | None = None) -> torch.Tensor:
    """``(d, n_classes - 1)``: the difference of class means.

    Two classes give one direction, ``mean_1 - mean_0`` normalized. ``k`` classes give the
    ``k - 1`` directions ``mean_c - grand`` for ``c = 1 .. k-1``, orthonormalized in that order,
    where ``grand`` is the mean of the class means (so class sizes do not tilt it); they span
    every class mean's offset from ``grand``, class 0's included.

    Args:
        activations: ``(n, d)`` a site's activations.
        labels: ``(n,)`` each row's class in ``0 .. n_classes - 1``.
        n_classes: number of classes; ``labels.max() + 1`` when ``None``. Each needs a row.
    """
    data = _checked_rows(activations)
    labels = torch.as_tensor(labels).long().cpu().reshape(-1)
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"{data.shape[0]} activation rows but {labels.shape[0]} labels")
    count = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    if count < 2 or int(labels.min()) < 0 or int(labels.max()) >= count:
        raise ValueError(f"labels must be classes 0..{count - 1} of at least 2 classes, "
                         f"got {int(labels.min())}..{int(labels.max())}")
    sizes = torch.bincount(labels, minlength=count)
    if (sizes == 0).any():
        raise ValueError(f"classes {(sizes == 0).nonzero().flatten().tolist()} have no rows")
    means = torch.zeros(count, data.shape[1], dtype=torch.float64).index_add_(0, labels, data)
    means /= sizes[:, None]
    offsets = means[1:] - means.mean(0)  # (count - 1, d)
    return orthonormal_columns(offsets.T)


def pca_directions(activations: torch.Tensor, k: int) -> torch.Tensor:
    """``(d, k)``: the top-``k`` principal directions of the centred (not standardized)
    ``activations`` ``(n, d)``, by ``torch.linalg.svd`` in float64. Each direction's sign is
    fixed so that its largest-magnitude entry is positive.

    Unlike :class:`~das_train.interventions.pca.PCARotatedSpaceIntervention`, which standardizes
    each dimension first, this is the covariance's PCA: the directions are orthonormal in the
    activation space itself, as the fixed interchange needs."""
    data = _checked_rows(activations)
    most = min(data.shape)
    if not 1 <= int(k) <= most:
        raise ValueError(f"k must be in 1..{most} for activations of shape {tuple(data.shape)}, got {k}")
    _, _, vh = torch.linalg.svd(data - data.mean(0), full_matrices=False)  # vh: (min(n, d), d)
    top = vh[: int(k)]  # (k, d)
    peaks = top.abs().argmax(dim=1, keepdim=True)
    return (top * torch.sign(top.gather(1, peaks))).T.float()


def probe_weight_directions(weight: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
    """``(d, C - 1)``: the subspace a linear probe with ``weight`` ``(d, C)`` reads.

    A probe on standardized input computes ``((x - mean) / std) @ weight + bias``, so in the
    activation space its weight is ``weight / std`` per row, and which class wins depends on
    ``x`` only through the differences of those columns. Two classes give the one direction
    ``w_1 - w_0``; ``C`` classes give ``w_c - mean_j w_j`` for ``c = 1 .. C-1``, orthonormalized.
    """
    if weight.dim() != 2 or weight.shape[1] < 2:
        raise ValueError(f"need a probe weight (d, n_classes >= 2), got {tuple(weight.shape)}")
    raw = weight.detach().to("cpu", torch.float64)
    if std is not None:
        std = std.detach().to("cpu", torch.float64).reshape(-1)
        if std.shape[0] != raw.shape[0]:
            raise ValueError(f"std has {std.shape[0]} entries for a weight of {raw.shape[0]} rows")
        raw = raw / std[:, None]
    return orthonormal_columns(raw[:, 1:] - raw.mean(1, keepdim=True))


def probe_directions(probes: LinearProbes, index: int = 0) -> torch.Tensor:
    """:func:`probe_weight_directions` of probe ``index`` of fitted ``probes`` (its weight
    ``(d, C)`` and the std it standardizes with)."""
    count = probes.weight.shape[0]
    if not 0 <= index < count:
        raise IndexError(f"probe index {index} out of range for {count} probes")
    return probe_weight_directions(probes.weight[index], probes.std[index])


def random_subspace(dim: int, k: int, seed: int) -> torch.Tensor:
    """``(dim, k)``: a uniformly random ``k``-dimensional subspace (QR of a seeded Gaussian
    matrix, signs fixed), the matched-rank control: what interchanging *some* ``k`` directions
    gives. The same ``seed`` gives the same basis whatever ran before (own generator)."""
    if not 1 <= int(k) <= int(dim):
        raise ValueError(f"k must be in 1..dim={dim}, got {k}")
    generator = torch.Generator().manual_seed(int(seed))
    return orthonormal_columns(torch.randn(int(dim), int(k), generator=generator, dtype=torch.float64))


def full_vector_basis(dim: int) -> torch.Tensor:
    """``(dim, dim)`` the identity: interchanging it writes the whole source vector."""
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return torch.eye(int(dim))


__all__ = ["diff_means_directions", "full_vector_basis", "orthonormal_columns", "pca_directions",
           "probe_directions", "probe_weight_directions", "random_subspace"]
