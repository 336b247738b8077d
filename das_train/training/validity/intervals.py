"""IIA as the validity card reports it: on all pairs and on the pairs that should change, with a
95% interval over seeds and one over test pairs.

Half of a binary task's pairs may share their label (base and counterfactual agree), and an
intervention that does nothing gets those right: on ``gender_tiny`` "nothing found" reads 0.53.
:func:`interchange_accuracy` also reports IIA on the *changing* pairs (counterfactual label !=
base label), where doing nothing scores 0, as in pyvene's gender tutorial.

Two kinds of spread, answering two questions:

- :func:`seed_interval`: how much the figure moves with the training seed. A Student-t interval
  on the mean of the seeds' values, ``mean +- t_{n-1} * sd / sqrt(n)``: a sweep has a handful
  of seeds, too few for percentiles of their values.
- :func:`bootstrap_interval`: how much it moves with the test pairs drawn. A percentile
  bootstrap: the pairs resampled with replacement ``resamples`` times (seeded), the interval the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled IIAs, taken
  outward (the next resampled value below and above), so it never claims more than it saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_GRID = 4000
"""Simpson intervals of :func:`t_quantile`'s integral (even); quantiles to ~1e-9."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (``nan`` bounds where one cannot be given)."""

    mean: float
    low: float
    high: float


@dataclass(frozen=True)
class IIA:
    """Interchange intervention accuracy on a split's pairs."""

    all: float
    """Fraction of all pairs predicted as the counterfactual label says."""
    changing: float
    """The same on the pairs whose counterfactual label differs from the base's (``nan``
    where there are none)."""
    pairs: int
    changing_pairs: int


def _labels(values: torch.Tensor, name: str) -> torch.Tensor:
    values = torch.as_tensor(values)
    if values.dim() != 1:
        raise ValueError(f"{name} must be a vector (N,), got shape {tuple(values.shape)}")
    return values.long().cpu()


def interchange_accuracy(predictions: torch.Tensor, counterfactual_labels: torch.Tensor,
                         base_labels: torch.Tensor) -> IIA:
    """IIA of ``predictions`` ``(N,)`` against ``counterfactual_labels`` ``(N,)``, on all pairs
    and on those whose ``base_labels`` ``(N,)`` differ from their counterfactual label."""
    predictions = _labels(predictions, "predictions")
    target = _labels(counterfactual_labels, "counterfactual_labels")
    base = _labels(base_labels, "base_labels")
    if not len(predictions) == len(target) == len(base) > 0:
        raise ValueError(f"need as many predictions, counterfactual and base labels (at least one), got "
                         f"{len(predictions)}, {len(target)} and {len(base)}")
    correct = predictions == target
    changing = target != base
    count = int(changing.sum())
    return IIA(all=correct.double().mean().item(),
               changing=correct[changing].double().mean().item() if count else math.nan,
               pairs=len(correct), changing_pairs=count)


def _check_confidence(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(confidence)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom: the density integrated
    (Simpson, float64) and inverted by bisection (no scipy dependency for one number)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    v = float(df)
    log_scale = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)

    def cdf(x: float) -> float:  # for x >= 0
        t = torch.linspace(0, x, _GRID + 1, dtype=torch.float64)
        density = torch.exp(log_scale - (v + 1) / 2 * torch.log1p(t * t / v))
        weights = torch.ones(_GRID + 1, dtype=torch.float64)
        weights[1:-1:2], weights[2:-1:2] = 4, 2
        return 0.5 + float((weights * density).sum()) * x / (3 * _GRID)

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < p else (low, middle)
    return (low + high) / 2


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` (one per seed) with its Student-t interval; one value gives
    ``nan`` bounds (no spread to measure)."""
    confidence = _check_confidence(confidence)
    data = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
    if len(data) == 0 or not torch.isfinite(data).all():
        raise ValueError(f"need one or more finite values, got {list(values)}")
    mean = float(data.mean())
    if len(data) == 1:
        return Interval(mean, math.nan, math.nan)
    half = t_quantile((1 + confidence) / 2, len(data) - 1) * float(data.std()) / math.sqrt(len(data))
    return Interval(mean, mean - half, mean + half)


def bootstrap_interval(correct: torch.Tensor, resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> Interval:
    """The mean of ``correct`` ``(N,)`` (1 where a pair was predicted right) with its percentile
    bootstrap interval over the pairs (module docstring). Row ``b`` of the resampling is
    ``torch.randint(N, (resamples, N))``'s from a generator seeded with ``seed``."""
    confidence = _check_confidence(confidence)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    values = torch.as_tensor(correct).double().cpu()
    if values.dim() != 1 or len(values) == 0:
        raise ValueError(f"correct must be a non-empty vector (N,), got shape {tuple(values.shape)}")
    generator = torch.Generator().manual_seed(int(seed))
    picks = torch.randint(len(values), (int(resamples), len(values)), generator=generator)
    means = values[picks].mean(1)  # (resamples,)
    tail = (1 - confidence) / 2
    low = torch.quantile(means, tail, interpolation="lower")
    high = torch.quantile(means, 1 - tail, interpolation="higher")
    return Interval(float(values.mean()), float(low), float(high))


__all__ = ["IIA", "Interval", "bootstrap_interval", "interchange_accuracy", "seed_interval", "t_quantile"]
