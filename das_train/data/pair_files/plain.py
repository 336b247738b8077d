"""The plain format: the config names the columns (base text, one or several source texts,
labels, optional variable values and split), or a template column whose ``{slot}``s each row
fills (``base_<slot>``/``<slot>`` for the base, ``<source>_<slot>``/``source_<slot>``/``<slot>``
for each source).

Several source columns give one pair per source, each with its own counterfactual-label column
(``task.counterfactual_label`` as a list), since a pair interchanges from one source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datasets import Dataset

from das_train.data.pair_files.columns import (
    BASE_PREFIXES,
    fill_template,
    missing_columns,
    optional,
    slot_values,
    source_prefixes,
    template_slots,
)
from das_train.data.pair_files.errors import Problems
from das_train.data.pair_files.records import PairRecord, Side
from das_train.data.pair_files.settings import PairFileSettings


def plain_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    """The pairs of a table in the plain format (one per row and source column)."""
    counterfactuals = settings.counterfactual_columns()
    if len(counterfactuals) != len(settings.sources):
        problems.add(f"task.counterfactual_label names {len(counterfactuals)} columns for "
                     f"{len(settings.sources)} sources {list(settings.sources)}; give one, or one per source")
        return []
    templated = settings.template is not None
    texts = [] if templated else [settings.base, *settings.sources]
    if not missing_columns(table, [*texts, settings.template, settings.base_label, *counterfactuals], problems):
        return []
    records = []
    for i, row in enumerate(table):
        for source_column, counterfactual in zip(settings.sources, counterfactuals):
            base = _side(row, i, settings, None, slots, problems)
            source = _side(row, i, settings, source_column, slots, problems)
            if base is not None and source is not None:
                split = optional(row, settings.split)
                records.append(PairRecord(i, base, source, row[counterfactual], counterfactual,
                                          None if split is None else str(split)))
    return records


def _side(row: Mapping[str, Any], i: int, settings: PairFileSettings, source_column: str | None,
          slots: set[str], problems: Problems) -> Side | None:
    """The base (``source_column`` None) or one source of a row."""
    prefixes = BASE_PREFIXES if source_column is None else source_prefixes(source_column)
    answer_column = settings.base_label if source_column is None else settings.source_label
    value_column = settings.base_value if source_column is None else settings.source_value
    if settings.template is None:
        column = settings.base if source_column is None else source_column
        text, chars = row[column], {}
        if not isinstance(text, str) or not text:
            problems.add(f"expected a non-empty text, found {text!r}", i, column)
            return None
    else:
        column = settings.template
        wanted = set(template_slots(str(row[column]))) | slots
        filled = fill_template(str(row[column]), slot_values(row, wanted, prefixes))
        if isinstance(filled, str):
            problems.add(filled, i, column)
            return None
        text, chars = filled
    return Side(text, None, column, optional(row, answer_column), answer_column or "", optional(row, value_column),
                slots=slot_values(row, slots, prefixes), slot_chars=chars)
