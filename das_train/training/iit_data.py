"""The IIT job's data: counterfactual pairs per variable, in the pair contract's columns.

Every label an IIT step reads comes from the task's causal model: the base's own output (for
the task loss) and the output after the variable is taken from the source (the counterfactual
label the interchange loss and IIA are measured against). Pairs hold the pair contract's
columns (:mod:`das_train.data.pair_contract`), ``inputs_embeds`` for the hierarchical equality
MLP and token ids with their masks for a language model, so one module, one DAS fit and one
:func:`~das_train.data.pair_inputs.model_inputs` serve both. A row of :func:`variable_rows`
holds one pair per variable, so a batch gives every variable a source of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from das_train.data.pair_contract import (
    BASE_EMBEDS,
    BASE_LABEL,
    COUNTERFACTUAL_LABEL,
    SOURCE_EMBEDS,
)
from das_train.data.samplers import EpochShuffleSampler
from das_train.tasks.hierarchical_equality import VARIABLES, EqualityTask

Pairs = dict[str, torch.Tensor]
"""Pair contract columns, one tensor each: a side's inputs (``base_inputs_embeds`` ``(n, 4 *
dim)``, or ``base_input_ids`` ``(n, length)`` and its mask), ``base_label`` and
``counterfactual_label`` ``(n,)``."""
EQUALITY_COLUMNS = {"base": BASE_EMBEDS, "source": SOURCE_EMBEDS, "base_label": BASE_LABEL,
                    "counterfactual_label": COUNTERFACTUAL_LABEL}
"""The hierarchical equality task's pair keys and the contract columns they fill."""


@dataclasses.dataclass(frozen=True)
class IITData:
    """Everything both trainings (with and without IIT) read: the same pairs and held-out data."""

    train: dict[str, Pairs]
    """Training pairs per variable (the bases also feed the task loss)."""
    test: dict[str, Pairs]
    """Held-out pairs per variable: neuron-aligned and DAS IIA."""
    factual: Pairs
    """Held-out inputs as base columns with their ``base_label``: task accuracy."""


def variable_pairs(task: EqualityTask, variables: Sequence[str], n: int, seed: int) -> dict[str, Pairs]:
    """``n`` pairs per variable, each variable's drawn with a seed of its own (derived from
    ``seed`` and the variable's index in the causal model, so adding a variable leaves the
    others' pairs as they were)."""
    out = {}
    for name in variables:
        pairs = task.counterfactual_pairs(n, seed=seed * 1_000 + VARIABLES.index(name), variable=name)
        out[name] = {column: pairs[key] for key, column in EQUALITY_COLUMNS.items()}
    return out


class Rows(torch.utils.data.Dataset):
    """Row ``i`` of every column; the default collate turns a list of rows into a batch of the
    same keys."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        sizes = {len(v) for v in columns.values()}
        if len(sizes) != 1:
            raise ValueError(f"every column needs as many rows; got sizes {sorted(sizes)}")
        self.columns = columns
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.columns.items()}


def variable_rows(pairs: dict[str, Pairs]) -> Rows:
    """Every variable's pairs side by side, keyed ``"<variable>.<column>"``: a batch gives each
    variable a source of its own."""
    return Rows({f"{name}.{key}": value for name, fields in pairs.items() for key, value in fields.items()})


def batch_pairs(batch: dict[str, torch.Tensor], variable: str) -> Pairs:
    """One variable's pairs out of a :func:`variable_rows` batch."""
    prefix = f"{variable}."
    return {key[len(prefix):]: value for key, value in batch.items() if key.startswith(prefix)}


def contract_rows(pairs: Pairs) -> Rows:
    """Pairs as :class:`~das_train.training.das_module.DASModule` reads them: a vector task's
    embeddings get their one position, ``(n, 1, 4 * dim)``; token columns pass as they are."""
    return Rows({key: value[:, None] if key in (BASE_EMBEDS, SOURCE_EMBEDS) else value
                 for key, value in pairs.items()})


def loader(rows: torch.utils.data.Dataset, batch_size: int, shuffle_seed: int | None) -> torch.utils.data.DataLoader:
    """A loader of ``rows``: shuffled by a seeded, resumable order, or in order (evaluation)."""
    sampler = None if shuffle_seed is None else EpochShuffleSampler(rows, shuffle_seed, batch_size)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, sampler=sampler)


__all__ = ["EQUALITY_COLUMNS", "IITData", "Pairs", "Rows", "batch_pairs", "contract_rows", "loader", "variable_pairs",
           "variable_rows"]
