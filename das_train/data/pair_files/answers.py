"""Answers and variable values of a pair file as the ids a metric and a probe compare.

A string answer is tokenized with the model's tokenizer right after its prompt, as the model
would continue it (``task.answer_prefix``, e.g. a space, is put before it; a leading space
written in the file is kept). The label is the answer's **first** token: IIA and the pair
filter compare the next-token argmax with it, so a multi-token answer counts as right when its
first token is predicted (the count of such answers is logged). Two different answers that share
their first token cannot be told apart that way, so they are refused, listed. An int answer is
a token id as it stands. With ``task.answer_score=sequence`` the whole token sequence is kept
as well (:mod:`das_train.data.answer_sequences` scores it), answers may share first tokens, and
only text answers are allowed.

Variable values (strings or ints) become class ids in sorted order; without a value column an
answer serves as its side's value (the variable is read off the output).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from das_train.data.pair_files.records import Answer


@dataclass(frozen=True)
class AnswerToken:
    """An answer's label: its first token id and the whole answer's token ids."""

    token: int
    ids: tuple[int, ...]
    text: str | None

    @property
    def pieces(self) -> int:
        """How many tokens the whole answer has."""
        return len(self.ids)


def answer_token(tokenizer: PreTrainedTokenizerBase, prompt: str | None, answer: Answer, prefix: str) -> AnswerToken | str:
    """The label of ``answer`` after ``prompt`` (None: the prompt is token ids), or a sentence
    saying why it has none."""
    if answer is None:
        return "no answer given"
    if isinstance(answer, bool) or isinstance(answer, float) and not answer.is_integer():
        return f"answer {answer!r} is neither text nor a token id"
    if not isinstance(answer, str):
        token = int(answer)
        if not 0 <= token < len(tokenizer):
            return f"token id {token} is outside the vocabulary (0..{len(tokenizer) - 1})"
        return AnswerToken(token, (token,), None)
    if not answer.strip():
        return f"answer {answer!r} is empty"
    text = prefix + answer
    pieces = _continuation(tokenizer, prompt, text)
    if not pieces:
        return f"answer {text!r} tokenizes to nothing"
    if tokenizer.unk_token_id is not None and pieces[0] == tokenizer.unk_token_id:
        return f"answer {text!r} is not in the tokenizer's vocabulary (its first token is {tokenizer.unk_token!r})"
    return AnswerToken(pieces[0], tuple(pieces), text)


def _continuation(tokenizer: PreTrainedTokenizerBase, prompt: str | None, text: str) -> list[int]:
    """The tokens ``text`` adds after ``prompt``: read from the two tokenized together (what the
    model sees), or from ``text`` alone where the prompt's tokens change at the seam."""
    if prompt is not None:
        before = tokenizer(prompt)["input_ids"]
        together = tokenizer(prompt + text)["input_ids"]
        if together[: len(before)] == before and len(together) > len(before):
            return together[len(before):]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def shared_first_tokens(answers: Iterable[AnswerToken], tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """A sentence for each first token that two different answers share."""
    texts: dict[int, set[str]] = defaultdict(set)
    for answer in answers:
        if answer.text is not None:
            texts[answer.token].add(answer.text)
    return [
        f"answers {sorted(group)} share their first token {token} ({tokenizer.decode([token])!r}); the metric "
        "reads the first token and could not tell them apart: reword them, give token ids or score whole "
        "answers with task.answer_score=sequence"
        for token, group in sorted(texts.items()) if len(group) > 1
    ]


def value_classes(values: Iterable[str | int]) -> dict[str | int, int]:
    """A class id per distinct value, in sorted order (ints before strings)."""
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    return {value: i for i, value in enumerate(distinct)}
