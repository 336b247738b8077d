"""A factual-recall task: "The capital of France is" -> " Paris".

The causal model has one variable, the country (one value per kept country); the answer is
its capital. Interchanging the country from a source sentence makes the counterfactual label
the source country's capital. It is the many-valued counterpart of the gender task: a site
that carries "country" must carry a 20-way choice, not one bit.

Positions come from the tokenizer (see ``das_train.data.templates``): with the word-level tokenizer of
:meth:`CapitalsTask.build_tokenizer` (no ``<bos>``) they are
``{"the": 0, "capital": 1, "of": 2, "country": 3, "is": 4}``. Under a hub tokenizer, countries
that are not one token, or whose capital is not one token after the prompt, are dropped and
logged (``layout(tokenizer).dropped_countries`` / ``dropped_capitals``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from das_train.data.fingerprints import tokenizer_fingerprint
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

logger = logging.getLogger(__name__)

COUNTRIES = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
    ("Greece", "Athens"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Portugal", "Lisbon"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Ireland", "Dublin"),
    ("Hungary", "Budapest"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"),
    ("Thailand", "Bangkok"), ("Iran", "Tehran"),
)

TEMPLATE = (
    Piece("the", "The"),
    Piece("capital", " capital"),
    Piece("of", " of"),
    Piece("country", " ", slot=True),
    Piece("is", " is"),
)


@dataclass(frozen=True)
class CapitalsLayout:
    """The task under one tokenizer."""

    template: TemplateLayout
    countries: tuple[str, ...]
    """Kept countries; a country's index here is its variable value."""
    capital_ids: tuple[int, ...]
    """Token id of each kept country's capital after the prompt."""
    dropped_countries: tuple[str, ...]
    """Countries that are not one token."""
    dropped_capitals: tuple[str, ...]
    """Countries whose capital is not one token."""


_LAYOUTS: dict[tuple[CapitalsTask, str], CapitalsLayout] = {}


@dataclass(frozen=True)
class CapitalsTask(CounterfactualTask):
    """(country, capital) pairs and the control task's seed.

    Args:
        countries: (country, capital) pairs, each name a single word.
        control_seed: seed of the control task's random class per country.
    """

    name: ClassVar[str] = "capitals"

    countries: tuple[tuple[str, str], ...] = COUNTRIES
    control_seed: int = 0

    def __post_init__(self) -> None:
        names = [c for c, _ in self.countries]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"CapitalsTask needs at least two distinct countries; got {names}")

    def capital_of(self, country: str) -> str:
        return dict(self.countries)[country]

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        """A word-level tokenizer over the task's words, with no ``<bos>``."""
        words = [p.text.strip() for p in TEMPLATE if not p.slot]
        return word_level_tokenizer([*words, *(w for pair in self.countries for w in pair)], bos=False)

    def layout(self, tokenizer: PreTrainedTokenizerBase | None = None) -> CapitalsLayout:
        """Positions, kept countries and capital ids under ``tokenizer`` (default: word-level)."""
        tokenizer = tokenizer if tokenizer is not None else self.build_tokenizer()
        key = (self, tokenizer_fingerprint(tokenizer))
        if key not in _LAYOUTS:  # cached so that the drops are logged once
            _LAYOUTS[key] = self._measure(tokenizer)
        return _LAYOUTS[key]

    def _measure(self, tokenizer: PreTrainedTokenizerBase) -> CapitalsLayout:
        template = resolve_template(tokenizer, TEMPLATE, {"country": [c for c, _ in self.countries]})
        kept, capital_ids, no_capital = [], [], []
        for (country,), text in template.texts.items():
            token = answer_token(tokenizer, text, " " + self.capital_of(country))
            if token is None:
                no_capital.append(country)
            else:
                kept.append(country)
                capital_ids.append(token)
        if no_capital:
            logger.warning("capitals: dropped %d countries whose capital is not one token: %s",
                           len(no_capital), no_capital)
        if len(kept) < 2:
            raise ValueError(f"fewer than two countries are left under this tokenizer: {kept}")
        return CapitalsLayout(template, tuple(kept), tuple(capital_ids),
                              template.dropped["country"], tuple(no_capital))

    def control_classes(self, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, int]:
        """The control task (Hewitt & Liang, 2019): a fixed random class per country type,
        from as many classes as the variable has values."""
        countries = self.layout(tokenizer).countries
        gen = torch.Generator().manual_seed(self.control_seed)
        return dict(zip(countries, torch.randint(0, len(countries), (len(countries),), generator=gen).tolist()))

    def spec(self, tokenizer: PreTrainedTokenizerBase | None = None) -> TaskSpec:
        layout = self.layout(tokenizer)
        return TaskSpec(
            name=self.name,
            positions=dict(layout.template.positions),
            variable="country",
            variable_values=len(layout.countries),
            label_names={i: " " + self.capital_of(c) for i, c in zip(layout.capital_ids, layout.countries)},
        )

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]:
        """(prompt, answer) for every kept country."""
        layout = self.layout(tokenizer)
        return [(layout.template.texts[(c,)], " " + self.capital_of(c)) for c in layout.countries]

    def pairs(self, n: int, seed: int, tokenizer: PreTrainedTokenizerBase | None = None) -> Dataset:
        """``n`` pairs of independently, uniformly drawn base and source countries."""
        layout = self.layout(tokenizer)
        ids = torch.tensor([layout.template.ids[(c,)] for c in layout.countries])  # (countries, length)
        capitals = torch.tensor(layout.capital_ids)  # (countries,)
        classes = self.control_classes(tokenizer)
        control = torch.tensor([classes[c] for c in layout.countries])  # (countries,)
        gen = torch.Generator().manual_seed(seed)
        base = torch.randint(0, len(layout.countries), (n,), generator=gen)  # (n,)
        source = torch.randint(0, len(layout.countries), (n,), generator=gen)
        return text_pairs(
            ids[base],  # (n, length)
            ids[source],
            {
                BASE_LABEL: capitals[base],
                SOURCE_LABEL: capitals[source],
                COUNTERFACTUAL_LABEL: capitals[source],  # the answer reads the country alone
                BASE_VARIABLE: base,
                SOURCE_VARIABLE: source,
                BASE_CONTROL: control[base],
            },
        )
