"""Accuracy metrics that stay exact when training runs on several devices.

Interchange intervention accuracy (IIA) is the number the DAS literature reports, so it must
not depend on how the held-out pairs happen to be split across ranks. Averaging per-rank
accuracies is wrong whenever ranks see different numbers of pairs (the last, short batch; a
``DistributedSampler`` padding the dataset); these metrics keep two integer *counts* per rank,
``correct`` and ``total``, that torchmetrics sums across ranks (``dist_reduce_fx="sum"``)
before one division. The linear probe reports its accuracy with the same counting metric, so
IIA and probe accuracy in one table are computed the same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric


class CountingAccuracy(Metric):
    """Share of predictions equal to their targets, from summed ``correct``/``total`` counts.

    ``update`` takes either class ids (same shape as ``target``) or scores with one more
    trailing dimension (logits over classes or vocabulary), which are argmax-ed.
    ``compute`` returns 0 when nothing was counted (as torchmetrics' ``Accuracy`` does).
    """

    is_differentiable = False
    higher_is_better = True
    # ``update`` only adds to the counts, so torchmetrics need not recompute the global state
    # on every forward call.
    full_state_update = False

    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # int64 counts: exact at any dataset size, and summed (not averaged) across ranks.
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Counts ``preds`` (``target.shape`` ids, or ``target.shape + (classes,)`` scores)."""
        if preds.dim() == target.dim() + 1:
            preds = preds.argmax(dim=-1)  # (batch,) from (batch, classes)
        if preds.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: preds of shape {tuple(preds.shape)} do not match "
                f"target of shape {tuple(target.shape)}; give class ids of the target's shape or "
                "scores with one extra trailing (class) dimension"
            )
        self.correct += (preds == target).sum()
        self.total += target.numel()

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Adds another instance's counts (or a state dict's) to these, as DDP's sum would."""
        super().merge_state(incoming_state)
        # torchmetrics 1.9 keeps the value of an earlier compute() cached through a merge.
        self._computed = None

    def compute(self) -> torch.Tensor:
        # Division on the summed counts, never an average of per-rank ratios.
        return self.correct.float() / self.total.clamp_min(1).float()


class InterchangeInterventionAccuracy(CountingAccuracy):
    """IIA: share of pairs whose intervened prediction equals the counterfactual label.

    ``update(logits, counterfactual_label)`` with the intervened model's logits at the
    predicted position, ``(batch, classes)``, and labels ``(batch,)``.
    """


class PairCount(Metric):
    """How many examples were evaluated, summed across ranks.

    Logged next to IIA so a run shows that every held-out pair was counted exactly once: a
    sampler that pads a split to a multiple of the world size, or a rank that evaluates the
    whole split, shows up here as a count larger than the split.
    """

    is_differentiable = False
    full_state_update = False

    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, target: torch.Tensor) -> None:
        """Counts the examples of a batch (one per entry of ``target``)."""
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.count.clone()


__all__ = ["CountingAccuracy", "InterchangeInterventionAccuracy", "PairCount"]
