"""What the IIT job writes into its run directory, each file atomically: the table (csv and
markdown), the curve of neuron-aligned IIA over training steps (PNG) and the trained models.

A model is written as ``model.safetensors`` (its weights) and ``config.json`` (the
:class:`~das_train.core.builtin_models.MLPConfig` it was built from): loading it back runs no
code, ``MLPClassifier(MLPConfig(**json))`` and the weights rebuild it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from das_train.core.files import atomic_write, atomic_write_text

TRAININGS = {"iit": "with IIT", "no_iit": "without IIT"}
"""Each trained model's folder name and its label in the table and the plot."""


def columns(variables: Sequence[str]) -> list[str]:
    return (["training", "task_accuracy"] + [f"neuron_iia_{v}" for v in variables]
            + [f"das_iia_{v}" for v in variables])


def markdown(rows: Sequence[dict], variables: Sequence[str]) -> str:
    """The table as markdown: one row per training, IIA over all held-out pairs."""
    head = (["training", "task accuracy"] + [f"neuron-aligned IIA {v}" for v in variables]
            + [f"DAS IIA {v}" for v in variables])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [TRAININGS[row["training"]]] + [f"{row[c]:.3f}" for c in columns(variables)[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(run_dir: Path, rows: Sequence[dict], variables: Sequence[str]) -> str:
    """``iit.csv`` and ``iit.md``; returns the markdown."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(variables), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "iit.csv", buffer.getvalue())
    text = markdown(rows, variables)
    atomic_write_text(run_dir / "iit.md", text)
    return text


def write_curve(run_dir: Path, curves: dict[str, list[tuple[int, str, float]]], title: str) -> Path:
    """``iit_curve.png``: neuron-aligned IIA per variable over training steps, with and
    without IIT, and ``iit_curve.csv`` with the same points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["training,step,variable,neuron_iia"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for training, points in curves.items():
        for variable in dict.fromkeys(v for _, v, _ in points):
            mine = [(s, iia) for s, v, iia in points if v == variable]
            style = "-" if training == "iit" else "--"
            ax.plot(*zip(*mine, strict=True), style, label=f"{variable}, {TRAININGS[training]}")
            lines += [f"{training},{s},{variable},{iia}" for s, iia in mine]
    ax.set(xlabel="training step", ylabel="neuron-aligned IIA", ylim=(0.0, 1.02), title=title)
    ax.legend()
    fig.tight_layout()
    path = run_dir / "iit_curve.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    atomic_write_text(run_dir / "iit_curve.csv", "\n".join(lines) + "\n")
    return path


def save_model(model: nn.Module, directory: Path) -> None:
    """The model's weights and config, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write_text(directory / "config.json", json.dumps(dataclasses.asdict(model.config), indent=2))


__all__ = ["TRAININGS", "columns", "markdown", "save_model", "write_curve", "write_table"]
