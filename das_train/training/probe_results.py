"""A probe's figures as a sweep reports them: its accuracy next to its control task's, and the
subspaces it and the site's activations point to.

A probe that decodes a variable shows the information is *there*; the control task of Hewitt &
Liang (2019), the same probe on labels that are a random function of the word, measures what
the probe can memorise instead. Selectivity = probe accuracy - control accuracy: a probe is
only informative where it is selective.

The validity card also interchanges what a probe reads (its weight directions) and what the
site's activations show without training (difference of class means, PCA) as featurizers
beside DAS, so a :class:`ProbeResult` carries those bases, read from the activations the probe
was fitted on: they cost no pass of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from das_train.training.probe import fit_probes, train_probes
from das_train.training.validity.directions import probe_weight_directions

PROBE_DIRECTION = "probe_direction"
"""The key of a fitted variable probe's weight directions in :attr:`ProbeResult.bases` (the
name ``sweep.methods`` gives that featurizer)."""


@dataclass(frozen=True)
class ProbeResult:
    """A probe's held-out accuracy next to its control task's (Hewitt & Liang, 2019)."""

    accuracy: float
    """Held-out accuracy on the variable."""
    control_accuracy: float
    """Held-out accuracy of the same probe, same split, on the control labels."""
    bases: dict[str, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    """Featurizers read from the site's activations, by ``sweep.methods`` name
    (``probe_direction``, ``diff_means``, ``pca``): each a ``(w, k)`` float32 CPU tensor with
    orthonormal columns in the site's activation space. Only the methods asked for; not
    compared, so two fits with equal figures are equal results."""

    @property
    def selectivity(self) -> float:
        """``accuracy - control_accuracy``: how much of the accuracy memorising cannot explain."""
        return self.accuracy - self.control_accuracy


def probes_with_control(
    activations: torch.Tensor,
    variables: torch.Tensor,
    controls: torch.Tensor,
    n_classes: int,
    n_control_classes: int | None = None,
    *,
    directions: bool = False,
    **options,
) -> list[ProbeResult]:
    """Fits each site's probe on ``variables`` and, with identical settings, on ``controls``.

    ``activations`` is ``(S, N, D)``, one slice per site, or a table read through ``rows``;
    ``options`` are :func:`~das_train.training.probe.train_probes`'s. ``n_control_classes``
    defaults to ``controls.max() + 1``. With ``directions``, each result's ``bases`` holds its
    variable probe's weight directions in activation space under :data:`PROBE_DIRECTION`
    (:func:`~das_train.training.validity.directions.probe_weight_directions`).
    """
    if n_control_classes is None:
        n_control_classes = max(int(controls.max()) + 1, 2)
    probes, accuracy = train_probes(activations, variables, n_classes, **options)
    control = fit_probes(activations, controls, n_control_classes, **options)
    results = []
    for i, (a, c) in enumerate(zip(accuracy, control)):
        bases = {PROBE_DIRECTION: probe_weight_directions(probes.weight[i], probes.std[i])} if directions else {}
        results.append(ProbeResult(a, c, bases))
    return results


def probe_with_control(activations: torch.Tensor, variables: torch.Tensor, controls: torch.Tensor,
                       n_classes: int, n_control_classes: int | None = None, **options) -> ProbeResult:
    """:func:`probes_with_control` for one site's activations ``(N, D)``."""
    if activations.dim() != 2:
        raise ValueError(f"need activations (N, D), got {tuple(activations.shape)}")
    return probes_with_control(activations[None], variables, controls, n_classes, n_control_classes,
                               **options)[0]


__all__ = ["PROBE_DIRECTION", "ProbeResult", "probe_with_control", "probes_with_control"]
