"""The validity card's columns of ``results.csv``: each (site, seed) row's IIA on the changing
pairs and every untrained featurizer's IIA, measured on the same test pairs as DAS.

A row holds what one process measured for its job. Methods the sweep did not ask for are left
empty (read back as ``nan``), so a results file written before the card, or with fewer
methods, still reads. Companion sweeps (``boundless``, ``random_init``) keep their own rows in
their own run directories; the table joins them (:mod:`~das_train.training.validity.card`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from das_train.training.schema import UNTRAINED_METHODS

DAS_FIELDS = ("iia_changing", "changing_pairs")
"""The trained intervention's IIA on the pairs whose label should change, and how many there are."""
METHOD_FIELDS = tuple(name for m in UNTRAINED_METHODS for name in (f"iia_{m}", f"iia_changing_{m}"))
"""Each untrained featurizer's IIA on all test pairs and on the changing ones."""
FIELDS = (*DAS_FIELDS, *METHOD_FIELDS)


def accuracy(correct: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of ``correct`` ``(N,)`` that is true, over the rows ``mask`` keeps; ``nan`` over none."""
    values = correct if mask is None else correct[mask]
    return float(values.double().mean()) if values.numel() else math.nan


def outcome_fields(changing: torch.Tensor, correct: Mapping[str, torch.Tensor]) -> dict[str, float | int | str]:
    """A row's card fields from per-pair outcomes: ``changing`` ``(N,)`` bool and, per method
    (``das`` and the untrained ones measured), ``(N,)`` bool "predicted as the counterfactual
    label says". Methods not measured are left empty."""
    fields: dict[str, float | int | str] = {name: "" for name in METHOD_FIELDS}
    fields["changing_pairs"] = int(changing.sum())
    fields["iia_changing"] = accuracy(correct["das"], changing)
    for method, values in correct.items():
        if method != "das":
            fields[f"iia_{method}"] = accuracy(values)
            fields[f"iia_changing_{method}"] = accuracy(values, changing)
    return fields


def written_fields(row: dict) -> dict:
    """``row`` as results.csv writes it: a card field without a figure (absent or ``nan``) is
    left empty, so a row reads back and writes again the same."""
    out = dict(row)
    for name in FIELDS:
        value = out.get(name, "")
        if isinstance(value, float) and math.isnan(value):
            out[name] = ""
    return out


def parse_fields(row: dict) -> None:
    """``row``'s card fields (as read from CSV) as numbers, in place: empty or absent is
    ``nan``; a value that is not a number raises ValueError naming the field."""
    for name in FIELDS:
        text = row.get(name, "")
        if text in ("", None):
            row[name] = math.nan
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{name} {text!r} is not a number") from None
        row[name] = int(value) if name == "changing_pairs" and math.isfinite(value) else value


__all__ = ["DAS_FIELDS", "FIELDS", "METHOD_FIELDS", "accuracy", "outcome_fields", "parse_fields", "written_fields"]
