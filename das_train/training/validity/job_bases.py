"""The fixed subspaces one (site, seed) job of a sweep is tested with, beside its trained
intervention.

Three are read from the site's activations when the probes collect them (``probe_direction``,
``diff_means``, ``pca``: :func:`~das_train.training.sweep.probes.sweep_probes` keeps them on
the job's probe result); two need only the site's width: ``full_vector`` (the identity, a
vanilla interchange of the whole site) and ``random_subspace`` (a seeded random subspace of
the intervention's rank, the matched-rank control). Each random subspace is drawn from the
job's seed and its site's name, so the sites of one seed are not tested with one shared draw
and the same job draws the same subspace in every run.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import torch

from das_train.training.validity.directions import full_vector_basis, random_subspace


def random_subspace_seed(seed: int, site_key: str) -> int:
    """The seed of a job's random subspace: the job's seed and a stable hash of its site."""
    return (int(seed) * 1_000_003 + zlib.crc32(site_key.encode())) % 2**31


def job_bases(methods: Sequence[str], read: Mapping[str, torch.Tensor], width: int | None, rank: int,
              seed: int, site_key: str) -> dict[str, torch.Tensor]:
    """Method -> ``(width, k)`` orthonormal basis for each untrained method of ``methods``:
    ``read`` holds those read from activations; ``full_vector`` and ``random_subspace`` are
    made here (skipped where the site's ``width`` is unknown)."""
    bases: dict[str, torch.Tensor] = {}
    for method in methods:
        if method in read:
            bases[method] = read[method]
        elif method == "full_vector" and width is not None:
            bases[method] = full_vector_basis(width)
        elif method == "random_subspace" and width is not None:
            bases[method] = random_subspace(width, min(rank, width), random_subspace_seed(seed, site_key))
    return bases


__all__ = ["job_bases", "random_subspace_seed"]
