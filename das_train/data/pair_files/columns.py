"""Reading cells of a pair table: required columns, slot values by the side's prefixes, and
templates filled from a row. Shared by every format reader."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from datasets import Dataset

from das_train.data.pair_files.errors import Problems

BASE_PREFIXES = ("base",)
"""Prefixes of the base's slot columns: ``base_<slot>``, then ``<slot>``."""


def missing_columns(table: Dataset, needed: Iterable[str | None], problems: Problems) -> bool:
    """Reports each needed column the table lacks; True when all are there."""
    absent = [c for c in dict.fromkeys(needed) if c is not None and c not in table.column_names]
    for column in absent:
        problems.add(f"missing; the file has columns {table.column_names}", column=column)
    return not absent


def optional(row: Mapping[str, Any], column: str | None) -> Any:
    """A cell of a column that may be absent (None then)."""
    return row.get(column) if column is not None else None


def source_prefixes(source_column: str) -> tuple[str, ...]:
    """Prefixes of a source's slot columns: ``<source column>_<slot>``, ``source_<slot>``."""
    return tuple(dict.fromkeys((source_column, "source")))


def slot_values(row: Mapping[str, Any], slots: Iterable[str], prefixes: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{slot: (value, column)}`` for each slot the row has a column for."""
    found = {}
    for slot in slots:
        for column in (*(f"{p}_{slot}" for p in prefixes), slot):
            if row.get(column) is not None:
                found[slot] = (str(row[column]), column)
                break
    return found


def fill_template(template: str, values: Mapping[str, tuple[str, str]]) -> tuple[str, dict[str, tuple[int, int]]] | str:
    """The template with each ``{slot}`` replaced by its value, and where each value landed;
    or a sentence naming a slot the row gives no value for."""
    text, chars = "", {}
    for literal, slot, _, _ in string.Formatter().parse(template):
        text += literal
        if slot is None:
            continue
        if slot not in values:
            return f"the template's slot {{{slot}}} has no column ({slot!r}, or with a base_/source_ prefix)"
        start = len(text)
        text += values[slot][0]
        chars[slot] = (start, len(text))
    return text, chars


def template_slots(template: str) -> list[str]:
    """The slot names of a template, in order."""
    return [slot for _, slot, _, _ in string.Formatter().parse(template) if slot]
