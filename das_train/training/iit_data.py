"""The IIT job's data: counterfactual pairs per variable from the task's causal model.

Every label an IIT step reads comes from the causal model of
:mod:`das_train.tasks.hierarchical_equality`: the base's own output (for the task loss) and the
output after the variable is taken from the source (the counterfactual label the interchange
loss and IIA are measured against). A row of :func:`variable_rows` holds one pair per
variable, so a batch gives every variable a source of its own. Pairs of DAS, in the pair
contract's columns, come from the same generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from das_train.data.pair_contract import BASE_EMBEDS, COUNTERFACTUAL_LABEL, SOURCE_EMBEDS
from das_train.data.samplers import EpochShuffleSampler
from das_train.tasks.hierarchical_equality import VARIABLES, EqualityTask

Pairs = dict[str, torch.Tensor]
"""``base``, ``source`` ``(n, 4 * dim)``; ``base_label``, ``counterfactual_label`` ``(n,)``."""
PAIR_FIELDS = ("base", "source", "base_label", "counterfactual_label")


def variable_pairs(task: EqualityTask, variables: Sequence[str], n: int, seed: int) -> dict[str, Pairs]:
    """``n`` pairs per variable, each variable's drawn with a seed of its own (derived from
    ``seed`` and the variable's index in the causal model, so adding a variable leaves the
    others' pairs as they were)."""
    out = {}
    for name in variables:
        pairs = task.counterfactual_pairs(n, seed=seed * 1_000 + VARIABLES.index(name), variable=name)
        out[name] = {key: pairs[key] for key in PAIR_FIELDS}
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
    """Every variable's pairs side by side, keyed ``"<variable>.<field>"``: a batch gives each
    variable a source of its own."""
    return Rows({f"{name}.{key}": value for name, fields in pairs.items() for key, value in fields.items()})


def batch_pairs(batch: dict[str, torch.Tensor], variable: str) -> Pairs:
    """One variable's pairs out of a :func:`variable_rows` batch."""
    return {key: batch[f"{variable}.{key}"] for key in PAIR_FIELDS}


def contract_rows(pairs: Pairs) -> Rows:
    """Pairs in the pair contract's columns, as :class:`~das_train.training.das_module.DASModule`
    reads a vector task: one position per input, ``(n, 1, 4 * dim)`` embeddings."""
    return Rows({BASE_EMBEDS: pairs["base"][:, None], SOURCE_EMBEDS: pairs["source"][:, None],
                 COUNTERFACTUAL_LABEL: pairs["counterfactual_label"]})


def loader(rows: torch.utils.data.Dataset, batch_size: int, shuffle_seed: int | None) -> torch.utils.data.DataLoader:
    """A loader of ``rows``: shuffled by a seeded, resumable order, or in order (evaluation)."""
    sampler = None if shuffle_seed is None else EpochShuffleSampler(rows, shuffle_seed, batch_size)
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, sampler=sampler)


__all__ = ["PAIR_FIELDS", "Pairs", "Rows", "batch_pairs", "contract_rows", "loader", "variable_pairs", "variable_rows"]
