"""Pair records to the pair contract's columns under one tokenizer.

Texts differ in length, so every base and source is padded on the LEFT to the longest text of
the file, whatever the tokenizer's own ``padding_side``: the prediction is then read at the last
column of every row. Pads take the tokenizer's pad id (its eos id when it has none), attention
mask 0 and position id 0; real tokens count their position ids from 0, so a padded row computes
what the unpadded text does. ``last`` is the TaskSpec's int -1; every other named position is a
:class:`RowPosition` whose per-row token indices (after padding, and possibly different in the
base and the source of a pair) fill ``base_positions``/``source_positions``.

With ``task.answer_score=sequence`` the columns of :mod:`~das_train.data.pair_files.sequences`
are added (whole answers and the candidates), and answers may share their first token.

Every problem of every row is collected and raised together, before any training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset, Features, List, Value
from transformers import PreTrainedTokenizerBase

from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_POSITION_IDS,
    BASE_POSITIONS,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_LABEL,
    SOURCE_MASK,
    SOURCE_POSITION_IDS,
    SOURCE_POSITIONS,
    SOURCE_VARIABLE,
    RowPosition,
)
from das_train.data.pair_files.answers import (
    AnswerToken,
    answer_token,
    shared_first_tokens,
    value_classes,
)
from das_train.data.pair_files.errors import Problems
from das_train.data.pair_files.positions import LAST, Rule, token_index
from das_train.data.pair_files.records import PairRecord, Side
from das_train.data.pair_files.sequences import SEQUENCE, SEQUENCE_FEATURES, sequence_columns
from das_train.data.pair_files.settings import PairFileSettings

logger = logging.getLogger(__name__)

NO_LABEL = -100
"""The label of a side whose file gives none (allowed only with the pair filter off)."""
CONTROL_SEED = 0


@dataclass(frozen=True)
class EncodedSide:
    """A side's token ids, its named positions (unpadded token indices) and its label."""

    ids: list[int]
    positions: list[int]
    label: AnswerToken | None
    value: str | int


@dataclass(frozen=True)
class BuiltPairs:
    """A file's pairs under one tokenizer: contract columns, one row per record."""

    dataset: Dataset
    positions: dict[str, int | RowPosition]
    label_names: dict[int, str]
    value_names: tuple[str, ...]


def spec_positions(rules: dict[str, Rule]) -> dict[str, int | RowPosition]:
    """The TaskSpec positions: ``last`` is -1, the others per-row columns in config order."""
    out: dict[str, int | RowPosition] = {}
    for name, rule in rules.items():
        out[name] = -1 if rule.kind == LAST else RowPosition(sum(isinstance(p, RowPosition) for p in out.values()))
    return out


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The id left padding uses: the pad token's, else the eos token's."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def build_pairs(records: Sequence[PairRecord], tokenizer: PreTrainedTokenizerBase, settings: PairFileSettings,
                rules: dict[str, Rule], problems: Problems) -> BuiltPairs:
    """The contract's columns of ``records``; raises every problem found at once."""
    if pad_id(tokenizer) is None:
        problems.add("the tokenizer has neither a pad nor an eos token to pad rows with")
    row_rules = {name: rule for name, rule in rules.items() if rule.kind != LAST}
    encoded: list[tuple[EncodedSide, EncodedSide, AnswerToken]] = []
    prompts: list[str | None] = []  # each kept pair's base text, which candidates are read after
    choices: list[tuple[str, ...] | None] = []  # and its own candidates, where the file gives them
    for record in records:
        counterfactual = answer_token(tokenizer, record.base.text, record.counterfactual, settings.answer_prefix)
        if isinstance(counterfactual, str):
            problems.add(f"counterfactual answer: {counterfactual}", record.row, record.counterfactual_column)
            counterfactual = None
        base = _encode(record.base, tokenizer, settings, row_rules, record.row, problems, None)
        source = _encode(record.source, tokenizer, settings, row_rules, record.row, problems, counterfactual)
        if base is not None and source is not None and counterfactual is not None:
            encoded.append((base, source, counterfactual))
            prompts.append(record.base.text)
            choices.append(None if record.choices is None else
                           tuple(settings.answer_prefix + choice for choice in record.choices))
    answers = [a for b, s, c in encoded for a in (b.label, s.label, c) if a is not None]
    sequence = settings.answer_score == SEQUENCE
    for line in [] if sequence else shared_first_tokens(answers, tokenizer):
        problems.add(line)
    problems.raise_if_any()
    if not sequence:
        _log_multi_token(answers)
    built = _columns(encoded, tokenizer, spec_positions(rules))
    if sequence:
        extra = sequence_columns([(b.label, s.label, c) for b, s, c in encoded], prompts, choices, tokenizer)
        dataset = built.dataset
        for name, values in extra.items():
            dataset = dataset.add_column(name, values, feature=SEQUENCE_FEATURES[name])
        built = dataclasses.replace(built, dataset=dataset)
    return built


def _encode(side: Side, tokenizer: PreTrainedTokenizerBase, settings: PairFileSettings, rules: dict[str, Rule],
            row: int, problems: Problems, stand_in: AnswerToken | None) -> EncodedSide | None:
    """A side's ids, named token indices and label, or None after reporting what is wrong.
    Without a value or an answer, ``stand_in`` (the source's counterfactual answer, which
    carries the source's value into the base) stands for the value."""
    if side.ids is not None:
        ids, offsets = list(side.ids), [(0, 0)] * len(side.ids)
    else:
        encoding = tokenizer(side.text, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    ok = bool(ids)
    if not ok:
        problems.add("the text tokenizes to no token", row, side.column)
    positions = []
    for name, rule in rules.items():
        index = token_index(rule, side, offsets, settings.span_token) if ids else 0
        if isinstance(index, str):
            problems.add(f"position {name!r}: {index}", row, side.column)
            ok = False
        positions.append(index)
    label = _side_label(side, tokenizer, settings, row, problems)
    if label is False:
        return None
    value = side.value
    for answer in (label, stand_in):
        if value is None and answer:
            value = answer.text if answer.text is not None else answer.token
    if value is None:
        problems.add("no variable value and no answer to stand for it", row, side.column)
    return EncodedSide(ids, positions, label, value) if ok and value is not None else None


def _side_label(side: Side, tokenizer: PreTrainedTokenizerBase, settings: PairFileSettings, row: int,
                problems: Problems) -> AnswerToken | None | bool:
    """The side's label; None where the file gives none and the pair filter is off; False
    after reporting a problem."""
    if side.answer is None and not settings.filter_pairs:
        return None
    label = answer_token(tokenizer, side.text, side.answer, settings.answer_prefix)
    if isinstance(label, str):
        if side.answer is None:
            label += ("; the pair filter compares the model's output with it: name the label column "
                      "(task.base_label / task.source_label) or set task.filter_pairs=false")
        problems.add(label, row, side.answer_column or side.column)
        return False
    return label


def _log_multi_token(answers: list[AnswerToken]) -> None:
    longer = sorted({a.text for a in answers if a.pieces > 1 and a.text is not None})
    if longer:
        logger.info("%d answers are several tokens (e.g. %s); labels are their first tokens "
                    "(task.answer_score=sequence scores them whole)", len(longer), longer[:5])


def _columns(encoded: list[tuple[EncodedSide, EncodedSide, AnswerToken]], tokenizer: PreTrainedTokenizerBase,
             positions: dict[str, int | RowPosition]) -> BuiltPairs:
    length = max(len(side.ids) for row in encoded for side in row[:2])
    pad = int(pad_id(tokenizer))  # type: ignore[arg-type]
    classes = value_classes(side.value for row in encoded for side in row[:2])
    columns: dict[str, list] = {name: [] for name in (
        BASE_IDS, BASE_MASK, BASE_POSITION_IDS, BASE_POSITIONS, SOURCE_IDS, SOURCE_MASK, SOURCE_POSITION_IDS,
        SOURCE_POSITIONS, BASE_LABEL, SOURCE_LABEL, COUNTERFACTUAL_LABEL, BASE_VARIABLE, SOURCE_VARIABLE)}
    for base, source, counterfactual in encoded:
        for side, (ids, mask, position_ids, indices, label, variable) in (
            (base, (BASE_IDS, BASE_MASK, BASE_POSITION_IDS, BASE_POSITIONS, BASE_LABEL, BASE_VARIABLE)),
            (source, (SOURCE_IDS, SOURCE_MASK, SOURCE_POSITION_IDS, SOURCE_POSITIONS, SOURCE_LABEL, SOURCE_VARIABLE)),
        ):
            padding = length - len(side.ids)
            columns[ids].append([pad] * padding + side.ids)
            columns[mask].append([0] * padding + [1] * len(side.ids))
            columns[position_ids].append([0] * padding + list(range(len(side.ids))))
            columns[indices].append([padding + i for i in side.positions])
            columns[label].append(side.label.token if side.label is not None else NO_LABEL)
            columns[variable].append(classes[side.value])
        columns[COUNTERFACTUAL_LABEL].append(counterfactual.token)
    columns[BASE_CONTROL] = control_classes(columns[BASE_IDS], len(classes))
    labels = {t for name in (BASE_LABEL, SOURCE_LABEL, COUNTERFACTUAL_LABEL) for t in columns[name] if t != NO_LABEL}
    # typed, so a file with no per-row position (only ``last``) still stacks its empty lists
    features = Features({name: List(Value("int64")) if isinstance(values[0], list) else Value("int64")
                         for name, values in columns.items()})
    return BuiltPairs(
        Dataset.from_dict(columns, features=features),
        positions,
        {token: tokenizer.decode([token]) for token in sorted(labels)},
        tuple(str(v) for v in classes),
    )


def control_classes(base_ids: list[list[int]], n_classes: int) -> list[int]:
    """The control task (Hewitt & Liang, 2019) of a file: a seeded random class per distinct
    base input, so a probe that only memorizes inputs scores high on it too."""
    distinct = sorted({tuple(ids) for ids in base_ids})
    drawn = torch.randint(0, max(n_classes, 1), (len(distinct),), generator=torch.Generator().manual_seed(CONTROL_SEED))
    lookup = dict(zip(distinct, drawn.tolist()))
    return [lookup[tuple(ids)] for ids in base_ids]
