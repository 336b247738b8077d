"""What the IIT job writes into its run directory, each file atomically: the table (csv and
markdown) and the curve of neuron-aligned IIA over training steps (PNG and csv). The trained
models and each training's finished row are written by :mod:`das_train.training.iit_stages`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from das_train.core.files import atomic_write, atomic_write_text

TRAININGS = {"iit": "with IIT", "no_iit": "without IIT"}
"""Each trained model's folder name and its label in the table and the plot."""
REFERENCE = "reference"
"""Suffix of the DAS IIA columns at the reference site (``das_iia_gender_reference``)."""


def site_label(layer: int, position: str | None) -> str:
    """``L0 last`` for a language model's site, ``layer 0`` for the MLP's."""
    return f"layer {layer}" if position is None else f"L{layer} {position}"


def columns(variables: Sequence[str], reference: bool = False) -> list[str]:
    """The csv's columns: per variable, neuron-aligned IIA, DAS IIA at the site and, with a
    reference site, DAS IIA there."""
    das = [f"das_iia_{v}" for v in variables] + ([f"das_iia_{v}_{REFERENCE}" for v in variables] if reference else [])
    return ["training", "task_accuracy"] + [f"neuron_iia_{v}" for v in variables] + das


def markdown(rows: Sequence[dict], variables: Sequence[str], sites: Sequence[str] = ()) -> str:
    """The table as markdown: one row per training, IIA over all held-out pairs. ``sites``
    labels the DAS columns: the IIT site, then the reference site, when there is one; without
    labels the headers name the variable alone."""
    at = [f" at {s}" for s in sites] or [""]
    head = (["training", "task accuracy"] + [f"neuron-aligned IIA {v}" for v in variables]
            + [f"DAS IIA {v}{where}" for where in at for v in variables])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [TRAININGS[row["training"]]] + [f"{row[c]:.3f}" for c in columns(variables, len(sites) > 1)[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(run_dir: Path, rows: Sequence[dict], variables: Sequence[str], sites: Sequence[str] = ()) -> str:
    """``iit.csv`` and ``iit.md``; returns the markdown."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns(variables, len(sites) > 1), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "iit.csv", buffer.getvalue())
    text = markdown(rows, variables, sites)
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


__all__ = ["REFERENCE", "TRAININGS", "columns", "markdown", "site_label", "write_curve", "write_table"]
