"""What every counterfactual-pair task provides to the training framework.

A task is a causal model over a fixed-length template: it names the template's positions,
generates seeded counterfactual pairs (base, source, the variable's values, the labels the
causal model predicts), and lists the factual sentences a tiny model can be trained on, so
every task also runs offline. Pairs are stored as a ``datasets.Dataset`` with the columns
below; a task adds nothing else to the framework, so adding a task is adding one file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

# Columns of a pair dataset. Text tasks fill the *_input_ids / *_attention_mask columns
# (each a list of ints, all rows the same length); vector tasks fill *_inputs_embeds.
BASE_IDS, BASE_MASK, BASE_EMBEDS = "base_input_ids", "base_attention_mask", "base_inputs_embeds"
SOURCE_IDS, SOURCE_MASK, SOURCE_EMBEDS = "source_input_ids", "source_attention_mask", "source_inputs_embeds"
BASE_LABEL = "base_label"  # int: the token id (LM) or class id the model should output on base
SOURCE_LABEL = "source_label"  # the same for the source
COUNTERFACTUAL_LABEL = "counterfactual_label"  # what the causal model says after the interchange
BASE_VARIABLE = "base_variable"  # int value of the causal variable in the base (probe target)
SOURCE_VARIABLE = "source_variable"
BASE_CONTROL = "base_control"  # control-task label of the base (a random class per word type)

# Pairs whose texts differ in length (pairs read from a file) add these columns. Rows are
# padded on the left to one length, so the prediction is still read at the last column, and
# every named position is a token index that may differ per row and between base and source.
BASE_POSITIONS = "base_positions"  # list[int]: the token index of each RowPosition, in column order
SOURCE_POSITIONS = "source_positions"
BASE_POSITION_IDS = "base_position_ids"  # list[int]: position ids that skip the left padding
SOURCE_POSITION_IDS = "source_position_ids"  # (pads get 0), so padded rows compute as unpadded

# Pair files scored with ``task.answer_score=sequence`` add these columns: each answer as its
# whole token sequence (tokenized after the base prompt; the source's after the source prompt),
# padded on the right with ANSWER_PAD to one length T, and the candidates a prediction is chosen
# from, ``(candidates, T)`` per row (a candidate row of ANSWER_PAD only is no candidate). The
# prompts keep their left padding to one length L, so appending an answer on the right leaves
# every named position where it was; ``last`` (-1 on the prompt) is column L-1.
BASE_ANSWER_IDS = "base_answer_ids"  # list[int]
SOURCE_ANSWER_IDS = "source_answer_ids"
COUNTERFACTUAL_ANSWER_IDS = "counterfactual_answer_ids"
CANDIDATE_ANSWER_IDS = "candidate_answer_ids"  # list[list[int]]
ANSWER_PAD = -100

LABEL_COLUMNS = (BASE_LABEL, SOURCE_LABEL, COUNTERFACTUAL_LABEL, BASE_VARIABLE, SOURCE_VARIABLE, BASE_CONTROL)


@dataclass(frozen=True)
class RowPosition:
    """A named position that stands at a different token in each pair (and may differ between
    a pair's base and its source): its indices are column ``column`` of the rows'
    ``BASE_POSITIONS`` and ``SOURCE_POSITIONS`` lists."""

    column: int


@dataclass(frozen=True)
class TaskSpec:
    """The facts about a task that sweeps, probes and reports need."""

    name: str
    positions: dict[str, int | RowPosition]
    """Named positions: a token index shared by every row of a fixed-length template, e.g.
    ``{"bos": 0, "name": 1, "verb": 2, "last": 3}``, or a :class:`RowPosition` read per row."""
    variable: str
    """Name of the causal variable that pairs interchange (e.g. ``"gender"``)."""
    variable_values: int
    """How many values the variable takes (the probe's number of classes)."""
    label_names: dict[int, str] = field(default_factory=dict)
    """Readable names of the output labels (token id or class id -> text), for reports."""
    is_language_model_task: bool = True
    """True when inputs are token ids and the prediction is the next token at the last
    position; False for vector inputs and a classifier's output."""
    value_names: tuple[str, ...] = ()
    """Readable name of each value (class id -> name) where the task has them, e.g. the values
    a pair file gives, in the sorted order their class ids follow."""


class CounterfactualTask(ABC):
    """A causal model that generates seeded counterfactual pairs."""

    name: ClassVar[str]

    @abstractmethod
    def spec(self) -> TaskSpec:
        """The task's positions, variable and label names."""

    @abstractmethod
    def pairs(self, n: int, seed: int, tokenizer=None):
        """``n`` counterfactual pairs as a ``datasets.Dataset`` with the columns above."""
