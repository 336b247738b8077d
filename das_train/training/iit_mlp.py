"""The hierarchical equality MLP as the model an IIT job trains: its data, a fresh model, and
the model written to and read from a folder.

A model is written as ``model.safetensors`` (its weights) and ``config.json`` (the
:class:`~das_train.core.builtin_models.MLPConfig` it was built from): loading it back runs no
code, ``MLPClassifier(MLPConfig(**json))`` and the weights rebuild it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file
from torch import nn

from das_train.core.builtin_models import MLPClassifier, MLPConfig, create_mlp_classifier
from das_train.data.pair_contract import BASE_EMBEDS, BASE_LABEL
from das_train.data.pair_inputs import Position
from das_train.tasks.hierarchical_equality import EqualityTask, ExperimentSize, model_config
from das_train.training.iit_data import IITData, variable_pairs
from das_train.training.schema import RunConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclasses.dataclass(frozen=True)
class EqualityMLP:
    """The 3-layer MLP of :mod:`das_train.tasks.hierarchical_equality`, ``model.hidden`` wide."""

    task: EqualityTask
    is_language_model_task: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config: RunConfig) -> EqualityMLP:
        return cls(EqualityTask(seed=config.seed))

    def position(self, name: str | None) -> Position:
        """The MLP's layers have no token positions (the checks refuse a named one)."""
        return None

    def data(self, config: RunConfig) -> IITData:
        iit = config.iit
        inputs, labels = self.task.factual(iit.eval_pairs, seed=config.seed + 3)
        return IITData(variable_pairs(self.task, iit.variables, iit.train_pairs, seed=config.seed + 1),
                       variable_pairs(self.task, iit.variables, iit.eval_pairs, seed=config.seed + 2),
                       {BASE_EMBEDS: inputs, BASE_LABEL: labels})

    def fresh_model(self, config: RunConfig) -> nn.Module:
        """The MLP initialised from ``config.seed``."""
        return create_mlp_classifier(model_config(self.task, ExperimentSize(hidden=config.model.hidden)),
                                     seed=config.seed)[2]

    def write_model(self, model: nn.Module, folder: Path) -> None:
        """Fills ``folder`` with the model's weights and config."""
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(dataclasses.asdict(model.config), indent=2))

    def read_model(self, folder: Path) -> nn.Module:
        model = MLPClassifier(MLPConfig(**json.loads((folder / CONFIG).read_text())))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        return model


__all__ = ["EqualityMLP"]
