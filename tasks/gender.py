"""The gender task of the pyvene paper's DAS case study: "John walked because" -> " he".

The causal model has one variable, the gender of the name (0: male, " he"; 1: female,
" she"); the verb is a distractor. Interchanging the gender from a source sentence makes the
counterfactual label the source name's pronoun. The name lists are balanced (20 male, 20
female, unlike the paper's 47/10) and pairs draw the gender first, then a name of that gender,
so probe and IIA chance stay at 50% even after a hub tokenizer drops some names.

Positions come from the tokenizer (see ``das_train.data.templates``): with the word-level tokenizer
of :meth:`GenderTask.build_tokenizer` they are ``{"bos": 0, "name": 1, "verb": 2, "last": 3}``;
with Pythia's BPE, which adds no ``<bos>``, ``{"name": 0, "verb": 1, "last": 2}``, and names
that are not one token are dropped (logged, and listed in ``layout(tokenizer).template.dropped``).
"""

from __future__ import annotations

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
from das_train.data.templates import Piece, TemplateLayout, resolve_template
from das_train.data.tokenization import answer_token, text_pairs, word_level_tokenizer

MALE_NAMES = (
    "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
    "Daniel", "Matthew", "Mark", "Paul", "Steven", "Andrew", "Kevin", "Brian", "George", "Edward",
)
FEMALE_NAMES = (
    "Mary", "Sarah", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Karen", "Nancy", "Lisa",
    "Emily", "Laura", "Anna", "Rachel", "Emma", "Julia", "Helen", "Alice", "Rose", "Amy",
)
VERBS = ("walked", "ran", "left", "laughed", "smiled", "cried", "stayed", "waited", "slept", "shouted",
         "sang", "danced")
PRONOUNS = (" he", " she")
"""The answer for each gender value."""

TEMPLATE = (Piece("name", "", slot=True), Piece("verb", " ", slot=True), Piece("last", " because"))


@dataclass(frozen=True)
class GenderLayout:
    """The task under one tokenizer."""

    template: TemplateLayout
    pronoun_ids: tuple[int, int]
    """Token ids of " he" and " she" after the prompt."""
    genders: tuple[int, ...]
    """Gender of each kept name, in ``template.words["name"]`` order."""


@dataclass(frozen=True)
class GenderTask(CounterfactualTask):
    """Name lists, verbs and the control task's seed.

    Args:
        male_names, female_names: the names (disjoint); each a single word.
        verbs: intransitive past-tense verbs.
        control_seed: seed of the control task's random class per name.
    """

    name: ClassVar[str] = "gender"

    male_names: tuple[str, ...] = MALE_NAMES
    female_names: tuple[str, ...] = FEMALE_NAMES
    verbs: tuple[str, ...] = VERBS
    control_seed: int = 0

    def __post_init__(self) -> None:
        both = set(self.male_names) & set(self.female_names)
        if both:
            raise ValueError(f"names listed as both male and female: {sorted(both)}")
        if not self.male_names or not self.female_names or not self.verbs:
            raise ValueError("GenderTask needs at least one male name, one female name and one verb")

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the task's words that prepends ``<bos>``."""
        return word_level_tokenizer(
            [*self.male_names, *self.female_names, *self.verbs, "because", *(p.strip() for p in PRONOUNS)],
            bos=True,
        )

    def gender_of(self, name: str) -> int:
        return 0 if name in self.male_names else 1

    def control_classes(self) -> dict[str, int]:
        """The control task (Hewitt & Liang, 2019): a fixed random class per name type."""
        names = (*self.male_names, *self.female_names)
        classes = torch.randint(0, 2, (len(names),), generator=torch.Generator().manual_seed(self.control_seed))
        return dict(zip(names, classes.tolist()))

    def layout(self, tokenizer: PreTrainedTokenizerBase | None = None) -> GenderLayout:
        """Positions, kept words and pronoun ids under ``tokenizer`` (default: the word-level one)."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        template = resolve_template(
            tokenizer, TEMPLATE, {"name": (*self.male_names, *self.female_names), "verb": self.verbs}
        )
        prompt = next(iter(template.texts.values()))
        pronouns = tuple(answer_token(tokenizer, prompt, p) for p in PRONOUNS)
        if None in pronouns:
            raise ValueError(f"{PRONOUNS} must each be one token after the prompt; got ids {pronouns}")
        genders = tuple(self.gender_of(n) for n in template.words["name"])
        if len(set(genders)) < 2:
            raise ValueError("after dropping multi-token names, only one gender is left")
        return GenderLayout(template, (int(pronouns[0]), int(pronouns[1])), genders)  # type: ignore[arg-type]

    def spec(self, tokenizer: PreTrainedTokenizerBase | None = None) -> TaskSpec:
        layout = self.layout(tokenizer)
        return TaskSpec(
            name=self.name,
            positions=dict(layout.template.positions),
            variable="gender",
            variable_values=2,
            label_names=dict(zip(layout.pronoun_ids, PRONOUNS)),
        )

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]:
        """(prompt, answer) for every kept name x verb: the factual data a tiny model learns."""
        layout = self.layout(tokenizer)
        return [(text, PRONOUNS[self.gender_of(key[0])]) for key, text in layout.template.texts.items()]

    def pairs(self, n: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> Dataset:
        """``n`` pairs of independently drawn base and source sentences, interchanging gender.

        Each sentence draws a gender uniformly, then a name of that gender and a verb.
        """
        layout = self.layout(tokenizer)
        words = layout.template.words
        ids = torch.tensor(
            [[layout.template.ids[(name, verb)] for verb in words["verb"]] for name in words["name"]]
        )  # (names, verbs, length)
        genders = torch.tensor(layout.genders)  # (names,)
        by_gender = [torch.nonzero(genders == g).flatten() for g in (0, 1)]
        counts = torch.tensor([len(b) for b in by_gender])  # (2,)
        table = torch.zeros(2, int(counts.max()), dtype=torch.long)  # (2, max names of a gender)
        for g, rows in enumerate(by_gender):
            table[g, : len(rows)] = rows
        control = torch.tensor([self.control_classes()[name] for name in words["name"]])  # (names,)
        pronouns = torch.tensor(layout.pronoun_ids)  # (2,)

        gen = torch.Generator().manual_seed(seed)

        def draw() -> tuple[torch.Tensor, torch.Tensor]:
            gender = torch.randint(0, 2, (n,), generator=gen)
            within = (torch.rand(n, generator=gen, dtype=torch.float64) * counts[gender]).long()
            verb = torch.randint(0, len(words["verb"]), (n,), generator=gen)
            return table[gender, within], verb  # (n,) name rows, (n,) verb rows

        base_name, base_verb = draw()
        source_name, source_verb = draw()
        base_gender, source_gender = genders[base_name], genders[source_name]
        return text_pairs(
            ids[base_name, base_verb],  # (n, length)
            ids[source_name, source_verb],
            {
                BASE_LABEL: pronouns[base_gender],
                SOURCE_LABEL: pronouns[source_gender],
                COUNTERFACTUAL_LABEL: pronouns[source_gender],  # the output reads gender alone
                BASE_VARIABLE: base_gender,
                SOURCE_VARIABLE: source_gender,
                BASE_CONTROL: control[base_name],
            },
        )
