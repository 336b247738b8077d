"""Train/val/test rows of a pair file.

A file that names each row's split keeps it (``validation``/``dev`` read as ``val``), each split
cut to at most its configured size. A file without splits is shuffled with the run's seed and
cut into n_test, n_val and n_train rows, in that order, so no pair is in two splits; when the
file has fewer rows than asked for, every split shrinks in proportion (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from das_train.data.pair_files.errors import PairFileError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
NEEDED = ("train", "test")
"""Splits a run reads; a file that names splits must give rows to both."""


def split_rows(named: Sequence[str | None], sizes: Mapping[str, int], seed: int, source: str) -> dict[str, list[int]]:
    """Row indices per split (``named``: each row's split from the file, or all None)."""
    if named and named[0] is not None:
        return _named_rows(named, sizes, source)
    return _shuffled_rows(len(named), sizes, seed)


def _named_rows(named: Sequence[str | None], sizes: Mapping[str, int], source: str) -> dict[str, list[int]]:
    rows = {split: [i for i, s in enumerate(named) if s == split] for split in SPLITS}
    empty = [split for split in NEEDED if not rows[split]]
    if empty:
        found = {split: len(r) for split, r in rows.items()}
        raise PairFileError(source, [f"the file's splits give no {split} pairs (it has {found})" for split in empty])
    clipped = {split: r[: sizes[split]] for split, r in rows.items()}
    cut = {split: len(rows[split]) for split in SPLITS if len(rows[split]) > sizes[split]}
    if cut:
        logger.info("%s: using the first n_train/n_val/n_test pairs of the file's splits %s",
                    source, {split: f"{sizes[split]} of {n}" for split, n in cut.items()})
    return clipped


def _shuffled_rows(n_rows: int, sizes: Mapping[str, int], seed: int) -> dict[str, list[int]]:
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed)).tolist()
    wanted = {split: sizes[split] for split in SPLITS}
    total = sum(wanted.values())
    if total > n_rows:
        scaled = {split: n * n_rows // total for split, n in wanted.items()}
        scaled["train"] += n_rows - sum(scaled.values())
        logger.info("the file has %d pairs, fewer than the %d asked for; splits shrink in proportion to %s",
                    n_rows, total, scaled)
        wanted = scaled
    out, start = {}, 0
    for split in ("test", "val", "train"):
        out[split] = order[start : start + wanted[split]]
        start += wanted[split]
    return {split: out[split] for split in SPLITS}
