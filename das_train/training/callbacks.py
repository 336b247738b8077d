"""Callbacks for training interventions; chiefly the boundless temperature schedule.

Boundless DAS (Wu et al., 2023) relaxes the boundary of the interchanged subspace into a
sigmoid mask whose temperature is annealed from soft to hard. The temperature is a *schedule*,
not a parameter: pyvene 0.1.8 made it a ``Parameter`` and so both optimized and scheduled it.
Here it is a buffer of the intervention, and :class:`TemperatureAnnealing` is the only thing
that moves it, from the trainer's step count, before every training batch. Because the value is
a function of ``trainer.global_step`` alone, a run resumed from a checkpoint continues the
schedule where it stopped.
"""

from __future__ import annotations

from typing import Any

import lightning
from torch import nn

from das_train.core.fault_points import fault_point, requested_fault
from das_train.interventions.masks import BoundlessRotatedSpaceIntervention
from das_train.training.das_loop import boundless_temperature


def boundless_interventions(module: nn.Module) -> list[tuple[str, BoundlessRotatedSpaceIntervention]]:
    """(name, intervention) for every boundless intervention in ``module``, each once.

    Only Boundless DAS is annealed: the sigmoid-mask interventions' temperatures live on a
    different scale (per-logit, ~0.01), so one schedule would be wrong for both.
    """
    found: list[tuple[str, BoundlessRotatedSpaceIntervention]] = []
    # named_modules() already yields a shared (linked) intervention only once.
    for name, sub in module.named_modules():
        if isinstance(sub, BoundlessRotatedSpaceIntervention):
            found.append((name, sub))
    return found


class TemperatureAnnealing(lightning.Callback):
    """Sets every boundless intervention's temperature on a geometric schedule.

    ``T(step) = start * (end / start) ** (step / (total - 1))``, with ``step`` the trainer's
    ``global_step`` and ``total`` its ``max_steps`` (or, without ``max_steps``, its estimated
    number of optimizer steps). Logs ``train/temperature`` and each intervention's
    ``intervention_size`` (rotated coordinates its boundary marks) every step.

    Args:
        start: temperature at step 0 (50 makes the mask nearly flat).
        end: temperature at the last step (0.1 makes it nearly a hard step).
    """

    def __init__(self, start: float = 50.0, end: float = 0.1) -> None:
        super().__init__()
        if start <= 0 or end <= 0:
            raise ValueError(f"temperatures must be > 0, got start={start}, end={end}")
        self.start = start
        self.end = end
        self.current: float | None = None

    @staticmethod
    def total_steps(trainer: lightning.Trainer) -> int:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return int(trainer.estimated_stepping_batches)

    def on_train_batch_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, batch: Any,
        batch_idx: int,
    ) -> None:
        found = boundless_interventions(pl_module)
        if not found:
            return
        value = boundless_temperature(trainer.global_step, self.total_steps(trainer), self.start, self.end)
        for _, intervention in found:
            intervention.set_temperature(value)
        self.current = value
        pl_module.log("train/temperature", value, on_step=True, on_epoch=False)
        for name, intervention in found:
            # One intervention: a short key; several: keyed by module name so curves differ.
            key = "train/intervention_size" if len(found) == 1 else f"train/intervention_size/{name}"
            pl_module.log(key, float(intervention.intervention_size()), on_step=True, on_epoch=False)


__all__ = ["TemperatureAnnealing", "boundless_interventions"]


class StopHalfway(lightning.Callback):
    """Stops the process half way through a fit (``DAS_TRAIN_FAULT=fit_step:...``), after the
    batch that completes the middle step, so a checkpoint lies behind the stop and steps lie
    ahead of it: what a crash in the middle of training leaves. Installed only on request."""

    def on_train_batch_end(self, trainer: lightning.Trainer, *args: Any) -> None:
        if trainer.global_step >= max(trainer.max_steps // 2, 1):
            fault_point("fit_step")


def fault_callbacks() -> list[lightning.Callback]:
    """:class:`StopHalfway` when the fault-injection variable asks for a mid-fit stop."""
    request = requested_fault()
    return [StopHalfway()] if request is not None and request[0] == "fit_step" else []
