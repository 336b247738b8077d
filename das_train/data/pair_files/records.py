"""One counterfactual pair as every format reads it, before tokenization.

Each format (plain columns, CausalGym, MIB, RAVEL, pyvene tensors) turns a row into these
records, so positions, answers and padding are written once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Answer = str | int | None
"""A string is tokenized after the prompt; an int is a token id; None: the file has none."""


@dataclass(frozen=True)
class Side:
    """The base or the source of a pair.

    Attributes:
        text: the prompt, or None when the file gives token ids instead.
        ids: the prompt's token ids (pyvene-style tensors), or None for text.
        column: the column the prompt came from (named in error messages).
        answer: what the model should output after the prompt.
        answer_column: the column the answer came from.
        value: the causal variable's value (a probe's target), or None.
        spans: the pieces the text is the concatenation of (CausalGym), for ``span:i``.
        slots: values of ``{slot}`` positions and the column each came from.
        slot_chars: where a template placed each slot's value: ``{slot: (start, end)}``.
    """

    text: str | None
    ids: tuple[int, ...] | None
    column: str
    answer: Answer = None
    answer_column: str = ""
    value: str | int | None = None
    spans: tuple[str, ...] | None = None
    slots: dict[str, tuple[str, str]] = field(default_factory=dict)
    slot_chars: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PairRecord:
    """A pair read from row ``row`` (0-based) of a table."""

    row: int
    base: Side
    source: Side
    counterfactual: Answer
    counterfactual_column: str
    split: str | None = None
    choices: tuple[str, ...] | None = None
    """The answers a sequence score chooses among (MIB's ``choices``); None: the file's
    distinct answers."""
