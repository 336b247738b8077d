"""The intervened model scored on whole answers, for pairs built with ``task.answer_score=sequence``.

A pair batch that carries ``counterfactual_answer_ids`` is scored this way by
:class:`~das_train.training.das_module.DASModule`: training minimizes the counterfactual
answer's teacher-forced negative log-likelihood, and IIA compares the best-scoring candidate
with the counterfactual answer (:mod:`das_train.data.answer_sequences` holds the arithmetic).
The intervention reads the source prompt and writes into the base prompt's positions; the
answer appended after the base prompt only extends what the intervened model predicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from das_train.core.model import IntervenableModel
from das_train.data.answer_sequences import (
    AnswerForward,
    answer_logits,
    answer_nll,
    candidate_scores,
    choice_index,
    with_answer,
)
from das_train.data.pair_contract import (
    CANDIDATE_ANSWER_IDS,
    COUNTERFACTUAL_ANSWER_IDS,
    RowPosition,
)
from das_train.data.pair_inputs import Position, model_inputs

Batch = Mapping[str, torch.Tensor]


def is_sequence_batch(batch: Batch) -> bool:
    """Whether the batch's answers are scored as whole sequences."""
    return COUNTERFACTUAL_ANSWER_IDS in batch


def prompt_position(position: Position, batch: Batch) -> Position:
    """A negative index counted from the prompt's end (``last`` is -1): the prompts of base and
    source share one padded length L, while the base's input grows by the answer."""
    if isinstance(position, RowPosition) or position is None or position >= 0:
        return position
    return position + batch["base_input_ids"].shape[1]


def answer_forward(intervenable: IntervenableModel, batch: Batch, locations: Any,
                   keeps_logits: bool) -> AnswerForward:
    """The intervened forward on ``batch`` as a function of the base's answer ids: ``(batch, T)``
    to the ``(batch, T, vocab)`` logits that predict them. ``keeps_logits``: the model takes
    ``logits_to_keep``, so only the answer's positions go through the head."""
    prompt = model_inputs(batch, "base", True)
    source = model_inputs(batch, "source", True)

    def forward(answer: torch.Tensor) -> torch.Tensor:
        options = {"logits_to_keep": answer.shape[1]} if keeps_logits else {}
        _, outputs = intervenable(with_answer(prompt, answer), [source], unit_locations=locations, **options)
        return answer_logits(outputs, answer.shape[1])

    return forward


def sequence_loss(forward: AnswerForward, batch: Batch) -> torch.Tensor:
    """The counterfactual answer's negative log-likelihood per token, teacher-forced."""
    answer = batch[COUNTERFACTUAL_ANSWER_IDS]  # (batch, T)
    return answer_nll(forward(answer), answer)


def sequence_predictions(forward: AnswerForward, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(predicted, target, loss)``: each row's best candidate index, the counterfactual
    answer's index among the candidates, and :func:`sequence_loss`."""
    candidates = batch[CANDIDATE_ANSWER_IDS]  # (batch, candidates, T)
    predicted = candidate_scores(forward, candidates).argmax(-1)  # (batch,)
    return predicted, choice_index(candidates, batch[COUNTERFACTUAL_ANSWER_IDS]), sequence_loss(forward, batch)


__all__ = ["answer_forward", "is_sequence_batch", "prompt_position", "sequence_loss", "sequence_predictions"]
