"""The field's counterfactual datasets, read as they are published.

- CausalGym (Arora et al. 2024): ``base`` and ``src`` are lists of text pieces whose
  concatenation is the prompt (``span:N`` names a piece), ``base_label``/``src_label`` the
  answers, ``base_type``/``src_type`` the variable's values; the counterfactual label is the
  source's answer.
- MIB's causal-variable datasets: ``prompt`` with ``choices``/``answerKey`` (or ``label``), and
  each ``<name>_counterfactual`` column a nested row of the same shape; ``task.counterfactual``
  picks one (needed when there are several). The counterfactual label is the nested row's
  answer unless ``task.counterfactual_label`` names a column of it (or of the row).
- RAVEL instances: ``input``/``label``, ``source_input``/``source_label``, ``inv_label`` (the
  counterfactual label), ``entity``/``source_entity`` (``{entity}`` positions). RAVEL's
  ``split`` column holds the prompt template, not a data split, so it is not read as one.
- pyvene-style tensors: ``input_ids``, ``source_input_ids`` (one list, or one per source),
  ``labels`` (a token id, or a sequence whose last entry other than -100 is the counterfactual
  token), optional ``attention_mask``/``source_attention_mask`` (zeros are padding and are
  dropped) and ``intervention_ids`` (one intervention here; not read). They carry no base or
  source labels: name such columns with ``task.base_label``/``task.source_label``, or turn
  ``task.filter_pairs`` off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from datasets import Dataset

from das_train.data.pair_files.columns import (
    BASE_PREFIXES,
    missing_columns,
    optional,
    slot_values,
    source_prefixes,
)
from das_train.data.pair_files.errors import Problems
from das_train.data.pair_files.records import PairRecord, Side
from das_train.data.pair_files.settings import PairFileSettings

COUNTERFACTUAL_SUFFIX = "_counterfactual"
IGNORED_LABEL = -100
"""pyvene's (and transformers') label of a position that has no target."""


def _split(row: Mapping[str, Any], settings: PairFileSettings) -> str | None:
    value = optional(row, settings.split)
    return None if value is None else str(value)


def causalgym_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    if not missing_columns(table, ["base", "src", "base_label", "src_label"], problems):
        return []
    records = []
    for i, row in enumerate(table):
        sides = []
        for column, label, kind in (("base", "base_label", "base_type"), ("src", "src_label", "src_type")):
            spans = row[column]
            if not isinstance(spans, list) or not all(isinstance(s, str) for s in spans) or not "".join(spans):
                problems.add(f"expected a non-empty list of text pieces, found {spans!r}", i, column)
                continue
            value = optional(row, settings.base_value if column == "base" else settings.source_value)
            sides.append(Side("".join(spans), None, column, row[label], label,
                              value if value is not None else row.get(kind), spans=tuple(spans)))
        if len(sides) == 2:
            records.append(PairRecord(i, sides[0], sides[1], row["src_label"], "src_label", _split(row, settings)))
    return records


def mib_counterfactual_column(table: Dataset, settings: PairFileSettings, problems: Problems) -> str | None:
    """The ``*_counterfactual`` column the config picks (or the only one)."""
    found = sorted(c for c in table.column_names if c.endswith(COUNTERFACTUAL_SUFFIX))
    wanted = settings.counterfactual
    if wanted is not None:
        column = wanted if wanted.endswith(COUNTERFACTUAL_SUFFIX) else wanted + COUNTERFACTUAL_SUFFIX
        if column in found:
            return column
        problems.add(f"task.counterfactual = {wanted!r}: no column {column!r}; allowed: {found}")
        return None
    if len(found) != 1:
        problems.add(f"the file has {len(found)} counterfactual columns {found}; pick one with task.counterfactual")
        return None
    return found[0]


def mib_answer(row: Mapping[str, Any]) -> Any:
    """A MIB row's answer: its choice at ``answerKey`` (the choice's label, e.g. a letter, when
    choices come as ``{label, text}``), else its ``label``."""
    choices, key = row.get("choices"), row.get("answerKey")
    if choices is not None and key is not None:
        options = choices.get("label") if isinstance(choices, Mapping) else choices
        if isinstance(key, str) and not key.lstrip("-").isdigit():
            return key
        if isinstance(options, list) and -len(options) <= int(key) < len(options):
            return options[int(key)]
    return row.get("label")


def mib_choices(row: Mapping[str, Any]) -> tuple[str, ...] | None:
    """A MIB row's choices in the form :func:`mib_answer` gives its answer (labels when the
    choices come as ``{label, text}``), or None when it has no list of text choices."""
    choices = row.get("choices")
    options = choices.get("label") if isinstance(choices, Mapping) else choices
    if isinstance(options, list) and options and all(isinstance(o, str) for o in options):
        return tuple(options)
    return None


def mib_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    column = mib_counterfactual_column(table, settings, problems)
    if column is None or not missing_columns(table, ["prompt"], problems):
        return []
    records = []
    for i, row in enumerate(table):
        nested = row[column]
        if not isinstance(nested, Mapping) or not nested.get("prompt"):
            problems.add(f"expected a nested row with a prompt, found {nested!r}", i, column)
            continue
        base = Side(row["prompt"], None, "prompt", mib_answer(row), "answerKey", optional(row, settings.base_value),
                    slots=slot_values(row, slots, BASE_PREFIXES))
        source = Side(nested["prompt"], None, column, mib_answer(nested), column,
                      optional(nested, settings.source_value), slots=slot_values(nested, slots, ("",)))
        label = settings.counterfactual_columns()[0]
        counterfactual = nested.get(label, row.get(label))
        records.append(PairRecord(i, base, source, source.answer if counterfactual is None else counterfactual,
                                  column if counterfactual is None else label, _split(row, settings),
                                  mib_choices(row)))
    return records


def ravel_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    if not missing_columns(table, ["input", "label", "source_input", "source_label", "inv_label"], problems):
        return []
    return [
        PairRecord(
            i,
            Side(row["input"], None, "input", row["label"], "label", optional(row, settings.base_value),
                 slots=slot_values(row, slots, BASE_PREFIXES)),
            Side(row["source_input"], None, "source_input", row["source_label"], "source_label",
                 optional(row, settings.source_value), slots=slot_values(row, slots, source_prefixes("source_input"))),
            row["inv_label"],
            "inv_label",
        )
        for i, row in enumerate(table)
    ]


def pyvene_records(table: Dataset, settings: PairFileSettings, slots: set[str], problems: Problems) -> list[PairRecord]:
    if not missing_columns(table, ["input_ids", "source_input_ids", "labels"], problems):
        return []
    records = []
    for i, row in enumerate(table):
        base_ids = _unpadded(row["input_ids"], row.get("attention_mask"))
        sources = row["source_input_ids"]
        masks = row.get("source_attention_mask")
        if sources and not isinstance(sources[0], list):
            sources, masks = [sources], [masks] if masks is not None else None
        counterfactual = _last_label(row["labels"])
        if counterfactual is None:
            problems.add(f"no label other than {IGNORED_LABEL}", i, "labels")
            continue
        base = Side(None, base_ids, "input_ids", optional(row, settings.base_label), settings.base_label,
                    optional(row, settings.base_value))
        for k, source_ids in enumerate(sources):
            source_ids = _unpadded(source_ids, masks[k] if masks is not None else None)
            source = Side(None, source_ids, "source_input_ids", optional(row, settings.source_label),
                          settings.source_label or "", optional(row, settings.source_value))
            records.append(PairRecord(i, base, source, counterfactual, "labels", _split(row, settings)))
    return records


def _unpadded(ids: list[int], mask: list[int] | None) -> tuple[int, ...]:
    if mask is None:
        return tuple(int(t) for t in ids)
    return tuple(int(t) for t, m in zip(ids, mask) if m)


def _last_label(labels: Any) -> int | None:
    if isinstance(labels, int):
        return labels
    kept = [int(t) for t in labels if int(t) != IGNORED_LABEL]
    return kept[-1] if kept else None
