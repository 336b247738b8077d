"""Each job's per-pair test outcomes, kept in the run directory beside its intervention.

A row of ``results.csv`` holds IIA as a share; the table's interval over test pairs resamples
the pairs, and needs to know which pairs each method got right, jointly across seeds and
methods (every job of a sweep is tested on the same pairs, in the same order). So each job's
outcomes are saved as ``outcomes/<site>-s<seed>.pt``: ``changing`` and one boolean vector per
method, written under a temporary name and renamed like every other output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from das_train.core.files import atomic_write

OUTCOMES_DIR = "outcomes"


def outcomes_path(run_dir: Path, component: str, layer: int, position_name: str, seed: int) -> Path:
    """Where the job at (layer, component, position_name) with ``seed`` keeps its outcomes,
    named as its intervention folder is."""
    return Path(run_dir) / OUTCOMES_DIR / f"{component}-L{layer}-{position_name}-s{seed}.pt"


def save_outcomes(path: Path, changing: torch.Tensor, correct: Mapping[str, torch.Tensor]) -> None:
    """Writes ``changing`` ``(N,)`` and each method's ``(N,)`` outcomes (as bool, on CPU) to ``path``."""
    data = {"changing": changing.bool().cpu(), "correct": {m: v.bool().cpu() for m, v in correct.items()}}
    atomic_write(path, lambda tmp: torch.save(data, tmp))


def load_outcomes(path: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """``(changing, correct)`` saved at ``path``; ``None`` where there is no file (a row from a
    version before the card, or a shard on another filesystem)."""
    if not Path(path).is_file():
        return None
    data = torch.load(path, weights_only=True)
    return data["changing"], dict(data["correct"])


__all__ = ["OUTCOMES_DIR", "load_outcomes", "outcomes_path", "save_outcomes"]
