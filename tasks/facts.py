"""Synthetic subject -> attribute facts for causal tracing: "<bos> Anna Berg lives in" -> " Oslo".

Each subject is two words, a first and a last name, and lives in one city. First and last
names are shared between subjects, so neither word alone says where a subject lives: a model
must combine both subject tokens, which is what makes the subject's *last* token the place
where the fact is looked up (Meng et al., 2022, on GPT-2 XL; the pyvene paper's case study I).

With the word-level tokenizer of :meth:`FactsTask.build_tokenizer` the positions are
``{"bos": 0, "first": 1, "subject": 2, "verb": 3, "last": 4}``; the subject's tokens are
positions 1 and 2 (:meth:`FactsTask.subject_positions`).

Causal tracing needs no counterfactual pairs, but every task of the framework provides them:
:meth:`FactsTask.pairs` interchanges the subject, so the counterfactual label is the source
subject's city (variable ``city``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_LABEL,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_LABEL,
    SOURCE_VARIABLE,
    CounterfactualTask,
    TaskSpec,
)
from das_train.data.tokenization import encode_sentences, text_pairs, word_level_tokenizer

FIRST_NAMES = ("Anna", "Bruno", "Clara", "Dario", "Elena", "Felix")
LAST_NAMES = ("Berg", "Costa", "Dahl", "Ferro", "Greco", "Holm")
CITIES = ("Oslo", "Lima", "Kyoto", "Cairo", "Quito", "Dakar")
VERB = "lives"


def _default_facts() -> tuple[tuple[str, str, str], ...]:
    """24 of the 36 (first, last) subjects with a seeded city each, balanced over the cities."""
    gen = torch.Generator().manual_seed(1234)
    subjects = list(itertools.product(FIRST_NAMES, LAST_NAMES))
    keep = torch.randperm(len(subjects), generator=gen)[:24].tolist()
    cities = torch.randperm(24, generator=gen).remainder(len(CITIES)).tolist()
    return tuple((*subjects[k], CITIES[c]) for k, c in zip(sorted(keep), cities))


FACTS = _default_facts()


@dataclass(frozen=True)
class FactsTask(CounterfactualTask):
    """Facts "FIRST LAST lives in" -> " CITY".

    Args:
        facts: (first name, last name, city) triples; each (first, last) subject once.
        control_seed: seed of the control task's random class per subject.
    """

    name: ClassVar[str] = "facts"

    facts: tuple[tuple[str, str, str], ...] = FACTS
    control_seed: int = 0

    def __post_init__(self) -> None:
        subjects = [(f, last) for f, last, _ in self.facts]
        if len(set(subjects)) != len(subjects):
            raise ValueError("a subject is listed twice in FactsTask.facts")
        if len(self.facts) < 2:
            raise ValueError("FactsTask needs at least two facts")

    @property
    def cities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for _, _, c in self.facts))

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the task's words that prepends ``<bos>``."""
        words = [w for fact in self.facts for w in fact]
        return word_level_tokenizer([*words, VERB, "in"], bos=True)

    def prompt(self, first: str, last: str) -> str:
        return f"{first} {last} {VERB} in"

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]:
        """(prompt, answer) of every fact: the data a tiny model learns and tracing runs on."""
        return [(self.prompt(first, last), f" {city}") for first, last, city in self.facts]

    def subject_positions(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[int]:
        """Positions of the subject's tokens (the same in every prompt)."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        first, last, _ = self.facts[0]
        enc = tokenizer(self.prompt(first, last), return_offsets_mapping=True)
        end = len(first) + 1 + len(last)
        return [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end]

    def spec(self, tokenizer: PreTrainedTokenizerBase | None = None) -> TaskSpec:
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        ids, answers = encode_sentences(tokenizer, self.sentences(tokenizer))
        subject = self.subject_positions(tokenizer)
        length = ids.shape[1]
        positions = {"bos": 0} if subject[0] == 1 else {}
        positions.update({"first": subject[0], "subject": subject[-1], "verb": length - 2, "last": length - 1})
        return TaskSpec(
            name=self.name,
            positions=positions,
            variable="city",
            variable_values=len(self.cities),
            label_names={int(a): f" {c}" for a, (_, _, c) in zip(answers.tolist(), self.facts)},
        )

    def pairs(self, n: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> Dataset:
        """``n`` pairs of independently drawn base and source facts, interchanging the subject."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        ids, answers = encode_sentences(tokenizer, self.sentences(tokenizer))  # (facts, length), (facts,)
        city_index = torch.tensor([self.cities.index(c) for _, _, c in self.facts])
        control = torch.randint(0, len(self.cities), (len(self.facts),),
                                generator=torch.Generator().manual_seed(self.control_seed))
        gen = torch.Generator().manual_seed(seed)
        base = torch.randint(0, len(self.facts), (n,), generator=gen)
        source = torch.randint(0, len(self.facts), (n,), generator=gen)
        return text_pairs(
            ids[base],
            ids[source],
            {
                BASE_LABEL: answers[base],
                SOURCE_LABEL: answers[source],
                COUNTERFACTUAL_LABEL: answers[source],
                BASE_VARIABLE: city_index[base],
                SOURCE_VARIABLE: city_index[source],
                BASE_CONTROL: control[base],
            },
        )
