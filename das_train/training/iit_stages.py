"""What an IIT run has finished, kept in its run directory so a re-run does not do it again.

Each of the two trainings passes two stages, each recorded whole or not at all:

- **trained**: ``models/<training>/``, the model's files and ``curve.json`` (its points of
  neuron-aligned IIA over the steps), written to a temporary folder and renamed into place.
  A re-run finding it reads the model back instead of training; a training cut off before it
  resumes from ``checkpoints/<training>/last.ckpt`` (the curve's earlier points travel in the
  checkpoint, :class:`~das_train.training.iit_module.IIACurve`).
- **evaluated**: ``rows/<training>.json``, the training's row of the table. A re-run finding it
  and the model reuses the row; the DAS fits of an evaluation cut off part way resume from their
  own checkpoints (:mod:`das_train.training.iit_das`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from torch import nn

from das_train.core.files import atomic_write_text
from das_train.data.cache_folders import write_folder_atomically

CURVE = "curve.json"
Curve = list[tuple[int, str, float]]
"""``(step, variable, neuron-aligned IIA)`` points."""


class ModelFiles(Protocol):
    """How a trained model is written to a folder and read back (the MLP's, a language model's)."""

    def write_model(self, model: nn.Module, folder: Path) -> None: ...

    def read_model(self, folder: Path) -> nn.Module: ...


def model_folder(run_dir: Path, training: str) -> Path:
    return run_dir / "models" / training


def row_path(run_dir: Path, training: str) -> Path:
    return run_dir / "rows" / f"{training}.json"


def save_trained(files: ModelFiles, model: nn.Module, curve: Curve, folder: Path) -> None:
    """The model and its curve in ``folder``, whole or not at all."""

    def write(staging: Path) -> None:
        files.write_model(model, staging)
        (staging / CURVE).write_text(json.dumps([list(point) for point in curve]))

    write_folder_atomically(folder, write, "model")


def load_trained(files: ModelFiles, folder: Path) -> tuple[nn.Module, Curve] | None:
    """The model and curve a finished training saved in ``folder``, or None when it has not."""
    if not (folder / CURVE).is_file():
        return None
    curve = [(int(step), str(variable), float(iia)) for step, variable, iia in json.loads((folder / CURVE).read_text())]
    return files.read_model(folder), curve


def save_row(run_dir: Path, training: str, row: dict) -> None:
    atomic_write_text(row_path(run_dir, training), json.dumps(row, indent=2))


def load_row(run_dir: Path, training: str) -> dict | None:
    path = row_path(run_dir, training)
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = ["CURVE", "Curve", "ModelFiles", "load_row", "load_trained", "model_folder", "row_path", "save_row",
           "save_trained"]
