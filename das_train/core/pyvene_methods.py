"""``IntervenableModel`` methods that pyvene 0.1.8 tutorials call in their training loops.

Kept apart from the hook core (model.py) because they are conveniences over its public state
(``interventions``, ``model``), not part of how a call is planned or hooked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PyveneTrainingMethods:
    """``set_temperature``, ``set_zero_grad`` and ``model_config``, as pyvene names them."""

    interventions: nn.ModuleDict
    model: nn.Module

    def _unique_interventions(self) -> list[nn.Module]:
        """Each intervention once, although linked keys share one."""
        seen: dict[int, nn.Module] = {}
        for intervention in self.interventions.values():
            seen.setdefault(id(intervention), intervention)
        return list(seen.values())

    def set_temperature(self, temp: float | torch.Tensor) -> None:
        """Sets the temperature of every intervention that has one (Boundless DAS and the
        sigmoid masks), e.g. from a schedule once per step. pyvene skips the rotated sigmoid
        mask; a temperature it has is set here too."""
        for intervention in self._unique_interventions():
            if hasattr(intervention, "set_temperature"):
                intervention.set_temperature(temp)

    def set_zero_grad(self) -> None:
        """Clears the interventions' gradients (the frozen model's are left alone)."""
        for intervention in self._unique_interventions():
            if intervention.trainable:
                intervention.zero_grad()

    @property
    def model_config(self) -> Any:
        """The wrapped model's ``config`` (``None`` for a model without one); tutorials read
        ``intervenable.model_config.vocab_size``."""
        return getattr(self.model, "config", None)
