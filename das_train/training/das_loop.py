"""A small, dependency-free loop that fits interventions on counterfactual pairs.

The Lightning modules are for sweeps, logging and many devices; this loop is for a notebook, a
script or a test that wants DAS on one site in a few lines. Both use the same pieces:
:func:`counterfactual_loss` and :func:`boundless_temperature`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from das_train.core.model import IntervenableModel

Batch = dict[str, Any]


def counterfactual_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the intervened prediction against the counterfactual label."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def boundless_temperature(step: int, total_steps: int, start: float = 50.0, end: float = 0.1) -> float:
    """Geometric annealing from ``start`` to ``end`` over ``total_steps`` (Wu et al. 2023)."""
    if total_steps <= 1:
        return end
    fraction = min(max(step / (total_steps - 1), 0.0), 1.0)
    return float(start * (end / start) ** fraction)


def boundary_penalty(intervenable: IntervenableModel) -> torch.Tensor | None:
    """Sum of the boundary sparsity penalties of the boundless interventions, if any."""
    terms = [
        i.boundary_sparsity_loss()
        for i in {id(i): i for i in intervenable.interventions.values()}.values()
        if hasattr(i, "boundary_sparsity_loss")
    ]
    return torch.stack([t.reshape(()) for t in terms]).sum() if terms else None


def set_temperature(intervenable: IntervenableModel, value: float) -> None:
    for intervention in intervenable.interventions.values():
        if hasattr(intervention, "set_temperature"):
            intervention.set_temperature(value)


@dataclass
class FitResult:
    losses: list[float]
    final_temperature: float | None


def fit(
    intervenable: IntervenableModel,
    batches: Callable[[int], Batch],
    run: Callable[[IntervenableModel, Batch], torch.Tensor],
    steps: int,
    lr: float = 1e-2,
    penalty_weight: float = 0.0,
    temperature: tuple[float, float] | None = None,
    seed: int = 0,
) -> FitResult:
    """Trains the intervenable's trainable parameters.

    Args:
        batches: ``step -> batch`` (a dict holding at least ``counterfactual_label``).
        run: ``(intervenable, batch) -> logits`` for the counterfactual prediction.
        penalty_weight: weight of the boundless boundary penalty.
        temperature: ``(start, end)`` of the boundless annealing schedule, set before each step.
    """
    torch.manual_seed(seed)
    params = intervenable.get_trainable_parameters()
    if not params:
        raise ValueError("nothing to train: the intervenable model has no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    current = None
    intervenable.train()
    intervenable.model.eval()  # the frozen model keeps eval behaviour (dropout off)
    for step in range(steps):
        if temperature is not None:
            current = boundless_temperature(step, steps, *temperature)
            set_temperature(intervenable, current)
        batch = batches(step)
        loss = counterfactual_loss(run(intervenable, batch), batch["counterfactual_label"])
        penalty = boundary_penalty(intervenable)
        if penalty is not None and penalty_weight:
            loss = loss + penalty_weight * penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    intervenable.eval()
    return FitResult(losses, current)


@torch.no_grad()
def accuracy(
    intervenable: IntervenableModel,
    batches: Iterator[Batch],
    run: Callable[[IntervenableModel, Batch], torch.Tensor],
) -> float:
    """Interchange intervention accuracy: the share of pairs predicted as the counterfactual."""
    right = total = 0
    for batch in batches:
        prediction = run(intervenable, batch).argmax(-1)
        right += int((prediction == batch["counterfactual_label"]).sum())
        total += prediction.numel()
    return right / max(total, 1)
