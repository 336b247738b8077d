"""The columns ``task.answer_score=sequence`` adds: whole answers and the candidates to choose from.

Each side's answer keeps all its tokens (the base's and the counterfactual's read after the base
prompt, the source's after the source prompt, as their first-token labels are). The candidates
are the row's own choices where the file gives them (MIB's ``choices``, with the row's answers
added when they are not among them), else the file's distinct answer texts; each is tokenized
after the row's base prompt, so the one equal to a row's answer has the same ids. Every list is
padded on the right with :data:`~das_train.data.pair_contract.ANSWER_PAD` to the longest answer
of the file, and rows with fewer candidates get candidates of padding only (never chosen).
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import List, Value
from transformers import PreTrainedTokenizerBase

from das_train.data.pair_contract import (
    ANSWER_PAD,
    BASE_ANSWER_IDS,
    CANDIDATE_ANSWER_IDS,
    COUNTERFACTUAL_ANSWER_IDS,
    SOURCE_ANSWER_IDS,
)
from das_train.data.pair_files.answers import AnswerToken, answer_token
from das_train.data.pair_files.errors import Problems
from das_train.data.pair_files.records import PairRecord

SEQUENCE = "sequence"
"""The ``task.answer_score`` that scores whole answers."""
SEQUENCE_FEATURES = {
    BASE_ANSWER_IDS: List(Value("int64")),
    SOURCE_ANSWER_IDS: List(Value("int64")),
    COUNTERFACTUAL_ANSWER_IDS: List(Value("int64")),
    CANDIDATE_ANSWER_IDS: List(List(Value("int64"))),
}

RowAnswers = tuple[AnswerToken | None, AnswerToken | None, AnswerToken]
"""A kept pair's base, source and counterfactual answers (a side's is None where it has none)."""


def token_id_answers(records: Sequence[PairRecord], problems: Problems) -> None:
    """Reports every answer given as a token id: a sequence score needs the answer's text."""
    for record in records:
        for answer, column in ((record.base.answer, record.base.answer_column or record.base.column),
                               (record.source.answer, record.source.answer_column or record.source.column),
                               (record.counterfactual, record.counterfactual_column)):
            if answer is not None and not isinstance(answer, str):
                problems.add(f"task.answer_score=sequence scores answers as text, but this one is the token id "
                             f"{answer!r}; give text answers or use task.answer_score=first_token", record.row, column)


def sequence_columns(answers: Sequence[RowAnswers], prompts: Sequence[str],
                     choices: Sequence[tuple[str, ...] | None], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    """The answer and candidate columns of the kept pairs (``prompts``: each one's base text;
    ``choices``: each one's candidate texts, None for the file's distinct answers)."""
    texts = sorted({a.text for row in answers for a in row if a is not None and a.text is not None})
    candidates = []
    for row, prompt, own in zip(answers, prompts, choices):
        row_texts = texts if own is None else list(dict.fromkeys(
            [*own, *(a.text for a in row if a is not None and a.text is not None)]))
        candidates.append([_ids_after(tokenizer, prompt, text) for text in row_texts])
    sides = [[a.ids if a is not None else () for a in row] for row in answers]
    length = max(len(ids) for rows in (sides, candidates) for row in rows for ids in row)
    count = max(len(row) for row in candidates)
    columns: dict[str, list] = {name: [] for name in SEQUENCE_FEATURES}
    for row, row_candidates in zip(sides, candidates):
        for name, ids in zip((BASE_ANSWER_IDS, SOURCE_ANSWER_IDS, COUNTERFACTUAL_ANSWER_IDS), row):
            columns[name].append(_padded(ids, length))
        row_candidates = row_candidates + [()] * (count - len(row_candidates))
        columns[CANDIDATE_ANSWER_IDS].append([_padded(ids, length) for ids in row_candidates])
    return columns


def _ids_after(tokenizer: PreTrainedTokenizerBase, prompt: str, text: str) -> tuple[int, ...]:
    """``text``'s ids after ``prompt`` (it was tokenized as an answer already, so it has some)."""
    label = answer_token(tokenizer, prompt, text, "")
    if isinstance(label, str):
        raise ValueError(f"candidate answer {text!r} after {prompt!r}: {label}")
    return label.ids


def _padded(ids: Sequence[int], length: int) -> list[int]:
    return list(ids) + [ANSWER_PAD] * (length - len(ids))
