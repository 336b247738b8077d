"""A sweep's splits read once, and a split's pairs next to one layer's cached activations.

Every group of a sweep trains on the same training pairs and tests on the same test pairs.
:class:`SplitReader` reads each split's columns and distinct inputs once for the whole sweep;
:func:`cached_pairs` puts a split's columns next to the activations
:func:`~das_train.training.sweep.site_cache.collect_layer` cached for one (layer, component),
so a batched fit reads its batches without running the frozen prefix again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_EMBEDS,
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_POSITION_IDS,
    BASE_POSITIONS,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_EMBEDS,
    SOURCE_IDS,
    SOURCE_MASK,
    SOURCE_POSITION_IDS,
    SOURCE_POSITIONS,
)
from das_train.training.sweep.multi_site import CACHED_PREFIX, CACHED_SOURCES
from das_train.training.sweep.site_cache import DistinctInputs, LayerActivations


class CachedPairs(Dataset):
    """A split's pair columns next to one layer's cached activations, fetched a batch at a time.

    ``columns`` hold one row per pair; each of ``lookups`` is ``(table, rows)``, a table of
    activations per distinct input and the ``(N,)`` row of each pair in it, gathered per batch
    (so a pair's activations are never stored twice). ``__getitems__`` lets the DataLoader
    index every column once per batch instead of stacking rows; the row order is the split's,
    so samplers pick the same pairs as for the split itself.
    """

    def __init__(self, columns: dict[str, torch.Tensor],
                 lookups: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.columns = columns
        self.lookups = lookups or {}
        sizes = {name: len(value) for name, value in columns.items()}
        sizes.update({name: len(rows) for name, (_, rows) in self.lookups.items()})
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columns of different lengths: {sizes}")
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        batch = {name: value[rows] for name, value in self.columns.items()}
        batch.update({name: table[pointers[rows]] for name, (table, pointers) in self.lookups.items()})
        return batch


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function of :class:`CachedPairs` loaders: the batch is already stacked."""
    return batch


PAIR_COLUMNS = (BASE_IDS, BASE_MASK, BASE_EMBEDS, BASE_POSITION_IDS, BASE_POSITIONS, COUNTERFACTUAL_LABEL,
                BASE_LABEL, BASE_VARIABLE, BASE_CONTROL, SOURCE_IDS, SOURCE_MASK, SOURCE_EMBEDS,
                SOURCE_POSITION_IDS, SOURCE_POSITIONS)
"""The columns of a split the batched path reads: inputs and per-row positions (for the caches),
labels (for training, the probes, and which test pairs should change)."""
TRAINING_COLUMNS = (BASE_IDS, BASE_MASK, BASE_EMBEDS, BASE_POSITION_IDS, BASE_POSITIONS, COUNTERFACTUAL_LABEL)
"""The columns a training batch carries next to the cache: the base's inputs and per-row
positions (where each row's intervention writes), no source inputs (the cache holds what the
sources give at their own positions) and no probe labels."""


def split_columns(loader: DataLoader) -> dict[str, torch.Tensor]:
    """The pair columns of an unshuffled split loader, stacked in row order.

    Read through the loader's batches, as training reads them, rather than by slicing the
    whole ``datasets.Dataset`` (which materializes the columns through Arrow's memory pool).
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        for name in PAIR_COLUMNS:
            if name in batch:
                parts.setdefault(name, []).append(batch[name])
    return {name: torch.cat(values) for name, values in parts.items()}


class SplitReader:
    """The splits of one sweep, each read once: its pair columns and its distinct inputs.

    Every group of a sweep trains on the same training pairs and tests on the same test pairs;
    reading a split goes through the Arrow dataset row by row, so the sweep reads each once
    here instead of twice per group. The distinct inputs are found in batches of the split
    loader's size, so each collection runs the model on chunks of the size training uses.
    """

    def __init__(self, datamodule, is_language_model_task: bool) -> None:
        self.datamodule = datamodule
        self.is_language_model_task = is_language_model_task
        self._columns: dict[str, dict[str, torch.Tensor]] = {}
        self._inputs: dict[tuple[str, tuple[str, ...]], DistinctInputs] = {}

    def columns(self, split: str) -> dict[str, torch.Tensor]:
        """:func:`split_columns` of ``split``."""
        if split not in self._columns:
            self._columns[split] = split_columns(self.datamodule.ordered_dataloader(split))
        return self._columns[split]

    def inputs(self, split: str, sides: Sequence[str] = ("base", "source")) -> DistinctInputs:
        """The distinct inputs of ``split``'s pairs on ``sides``."""
        key = (split, tuple(sides))
        if key not in self._inputs:
            columns = self.columns(split)
            size = self.datamodule.ordered_dataloader(split).batch_size
            total = len(next(iter(columns.values())))
            batches = ({name: value[start : start + size] for name, value in columns.items()}
                       for start in range(0, total, size))
            self._inputs[key] = DistinctInputs(batches, self.is_language_model_task, sides=sides)
        return self._inputs[key]


def cached_pairs(columns: dict[str, torch.Tensor], activations: LayerActivations) -> CachedPairs:
    """A split's inputs and counterfactual labels next to one layer's cached activations."""
    wanted = {name: value for name, value in columns.items() if name in TRAINING_COLUMNS}
    lookups = {CACHED_SOURCES: (activations.site_table, activations.source_row)}
    if activations.prefix_table is not None:
        lookups[CACHED_PREFIX] = (activations.prefix_table, activations.base_row)
    return CachedPairs(wanted, lookups)


def first_rows(columns: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` rows of split ``columns``.

    Read from the columns, not from a loader: iterating a shuffled loader would draw from its
    generator and change the order of the training batches."""
    return {name: value[:count] for name, value in columns.items()}


__all__ = ["PAIR_COLUMNS", "TRAINING_COLUMNS", "CachedPairs", "SplitReader", "cached_pairs", "first_rows",
           "split_columns", "whole_batch"]
