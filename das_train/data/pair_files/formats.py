"""Which format a pair table is in, and its rows as :class:`PairRecord` s.

``task.format=auto`` tells the formats apart by their columns: CausalGym's ``src`` and
``base_type``, MIB's ``prompt`` with a ``*_counterfactual`` column, RAVEL's ``source_input`` and
``inv_label``, pyvene's ``input_ids`` and ``source_input_ids``; anything else is plain columns
named by the config. Rows may be narrowed first with ``task.where`` (e.g. CausalGym's
``task`` column holds many tasks in one dataset).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from datasets import Dataset

from das_train.data.pair_files.errors import Problems
from das_train.data.pair_files.field_formats import (
    COUNTERFACTUAL_SUFFIX,
    causalgym_records,
    mib_records,
    pyvene_records,
    ravel_records,
)
from das_train.data.pair_files.plain import plain_records
from das_train.data.pair_files.records import PairRecord
from das_train.data.pair_files.settings import PairFileSettings

Reader = Callable[[Dataset, PairFileSettings, set[str], Problems], list[PairRecord]]
READERS: dict[str, Reader] = {
    "plain": plain_records,
    "causalgym": causalgym_records,
    "mib": mib_records,
    "ravel": ravel_records,
    "pyvene": pyvene_records,
}
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}
"""How split names of files map to the framework's train/val/test."""


def detect_format(columns: list[str]) -> str:
    """The format whose signature columns ``columns`` hold (plain when none does)."""
    have = set(columns)
    if {"src", "base_type"} <= have:
        return "causalgym"
    if "prompt" in have and any(c.endswith(COUNTERFACTUAL_SUFFIX) for c in have):
        return "mib"
    if {"source_input", "inv_label"} <= have:
        return "ravel"
    if {"input_ids", "source_input_ids"} <= have:
        return "pyvene"
    return "plain"


def table_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    """The pairs of one table; the table's problems go to ``problems``."""
    table = _narrowed(table, settings, problems)
    if len(table) == 0:
        problems.add("no rows to read" + (f" where {dict(settings.where)}" if settings.where else ""))
        return []
    kind = detect_format(table.column_names) if settings.format == "auto" else settings.format
    if kind == "ravel" and settings.split == "split":  # RAVEL's split column names the prompt template
        settings = dataclasses.replace(settings, split=None)
    return READERS[kind](table, settings, slots, problems)


def _narrowed(table: Dataset, settings: PairFileSettings, problems: Problems) -> Dataset:
    """The rows whose columns equal ``task.where``'s values."""
    if not settings.where:
        return table
    absent = [c for c in settings.where if c not in table.column_names]
    if absent:
        for column in absent:
            problems.add(f"task.where names it, but the file has columns {table.column_names}", column=column)
        return table.select([])
    wanted = dict(settings.where)
    return table.filter(lambda row: all(row[c] == v for c, v in wanted.items()))


def split_name(name: str | None, row: int | None, problems: Problems, column: str | None) -> str | None:
    """The framework's split for a file's split name (None stays None)."""
    if name is None:
        return None
    mapped = SPLIT_NAMES.get(name.strip().lower())
    if mapped is None:
        problems.add(f"split {name!r} is not one of {sorted(SPLIT_NAMES)}", row, column)
    return mapped
