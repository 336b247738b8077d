"""Counterfactual pairs from a file, with no Python written: ``task=pairs task.path=pairs.jsonl``.

The file is read when the task is built (``load_task`` hands it the ``task`` config), so a
missing file, column or split is refused before a model is made; positions and answers need
the model's tokenizer and are checked, all rows at once, when :meth:`PairsTask.spec` or the
pairs are first asked for. See ``das_train/data/pair_files`` for the formats and rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from das_train.data.fingerprints import tokenizer_fingerprint
from das_train.data.pair_contract import CounterfactualTask, TaskSpec
from das_train.data.pair_files import (
    BuiltPairs,
    LoadedPairs,
    PairFileError,
    PairFileSettings,
    build_pairs,
    load_pairs,
    split_rows,
)
from das_train.data.pair_files.errors import Problems
from das_train.data.tokenization import word_level_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairsTask(CounterfactualTask):
    """The pairs of ``settings.path``; ``file_fingerprint`` (the file's content hash) keys the
    pair cache, so an edited file is read again."""

    name: ClassVar[str] = "pairs"

    settings: PairFileSettings
    file_fingerprint: str = field(init=False, default="")

    def __post_init__(self) -> None:
        loaded = load_pairs(self.settings)
        object.__setattr__(self, "file_fingerprint", loaded.fingerprint)
        object.__setattr__(self, "_loaded", loaded)
        object.__setattr__(self, "_built", {})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PairsTask:
        """The task of a run's ``task`` config section."""
        return cls(PairFileSettings.from_mapping(config))

    @property
    def loaded(self) -> LoadedPairs:
        return self._loaded  # type: ignore[attr-defined]

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the file's words (for a model trained on the spot)."""
        words = []
        for record in self.loaded.records:
            for side in (record.base, record.source):
                if side.text is None:
                    raise PairFileError(self.loaded.source, ["the file gives token ids, not text: it needs the "
                                                             "model's own tokenizer (model.kind=hub)"])
                words += side.text.split()
            for answer in (record.base.answer, record.source.answer, record.counterfactual):
                if isinstance(answer, str):
                    words += (self.settings.answer_prefix + answer).split()
        return word_level_tokenizer(words, bos=True)

    def built(self, tokenizer: PreTrainedTokenizerBase | None = None) -> BuiltPairs:
        """Every pair of the file under ``tokenizer`` (default: :meth:`build_tokenizer`'s)."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        key = tokenizer_fingerprint(tokenizer)
        cache: dict[str, BuiltPairs] = self._built  # type: ignore[attr-defined]
        if key not in cache:
            problems = Problems(self.loaded.source)
            cache[key] = build_pairs(self.loaded.records, tokenizer, self.settings, self.loaded.rules, problems)
        return cache[key]

    def spec(self, tokenizer: PreTrainedTokenizerBase | None = None) -> TaskSpec:
        built = self.built(tokenizer)
        return TaskSpec(
            name=self.name,
            positions=dict(built.positions),
            variable=self.settings.variable,
            variable_values=len(built.value_names),
            label_names=dict(built.label_names),
            value_names=built.value_names,
        )

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]:
        """(prompt, answer) of every base and source whose answer is text: what a model
        trained on the spot learns."""
        seen: dict[tuple[str, str], None] = {}
        for record in self.loaded.records:
            for side in (record.base, record.source):
                if side.text is not None and isinstance(side.answer, str):
                    seen[(side.text, self.settings.answer_prefix + side.answer)] = None
        return list(seen)

    def pairs(self, n: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> Dataset:
        """``n`` pairs of the file (all, when it has fewer) in a seeded order."""
        dataset = self.built(tokenizer).dataset
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        return dataset.select(order[:n])

    def split_pairs(self, sizes: Mapping[str, int], seed: int,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Dataset]:
        """The train/val/test pairs: the file's own splits, or a seeded cut of its rows."""
        dataset = self.built(tokenizer).dataset
        rows = split_rows(self.loaded.splits, sizes, seed, self.loaded.source)
        return {split: dataset.select(indices) for split, indices in rows.items()}
