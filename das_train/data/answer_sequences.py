"""Answers of several tokens scored as whole sequences (``task.answer_score=sequence``).

A prompt's answer is scored teacher-forced: the model reads the prompt followed by the answer
without its last token, and the logits at the prompt's last position and after it predict the
answer's tokens one by one. The prompts of a pair batch are left-padded to one length L, so
the answer goes on the right: every named position keeps its index, the answer's position ids
continue from the prompt's last one, and an answer shorter than the longest is padded on the
right with attention mask 0 (a causal model's earlier positions never see those pads).

A prediction is the candidate whose summed token log-probability is highest, one forward per
candidate: the forward itself is the caller's (the frozen model for the pair filter, the
intervened model for IIA), given as a function of the answer batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from das_train.data.pair_contract import ANSWER_PAD

AnswerForward = Callable[[torch.Tensor], torch.Tensor]
"""``(batch, T)`` answer ids -> ``(batch, T, vocab)`` logits that predict them."""


def with_answer(inputs: Mapping[str, torch.Tensor], answer: torch.Tensor) -> dict[str, torch.Tensor]:
    """A side's model inputs (``input_ids`` of length L, with its attention mask and position
    ids where given) followed by ``answer[:, :-1]``, ``(batch, L + T - 1)``. Pads of the answer
    (:data:`ANSWER_PAD`) become token 0 with attention mask 0."""
    ids = inputs["input_ids"]  # (batch, L)
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    fed = answer[:, :-1]  # (batch, T - 1)
    real = fed != ANSWER_PAD
    positions = inputs.get("position_ids")
    if positions is None:
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # (batch, L): left pads at 0, as the contract has
    after = positions[:, -1:] + 1 + torch.arange(fed.shape[1], device=ids.device)  # (batch, T - 1)
    return {
        "input_ids": torch.cat([ids, torch.where(real, fed, torch.zeros_like(fed))], dim=1),
        "attention_mask": torch.cat([mask, real.to(mask.dtype)], dim=1),
        "position_ids": torch.cat([positions, after], dim=1),
    }


def answer_logits(outputs: Any, length: int) -> torch.Tensor:
    """The ``(batch, length, vocab)`` logits that predict an answer of ``length`` tokens from a
    forward on :func:`with_answer`'s inputs: its last ``length`` positions."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return logits[:, -length:]


def answer_log_probs(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """``(batch,)``: the summed log-probability of each row's answer tokens (pads count 0)."""
    real = answer != ANSWER_PAD  # (batch, T)
    picked = torch.log_softmax(logits.float(), dim=-1).gather(-1, answer.clamp_min(0)[..., None])[..., 0]
    return (picked * real).sum(-1)


def answer_nll(logits: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """The negative log-likelihood per answer token, averaged over the batch's real tokens
    (a one-token answer gives the first-token cross-entropy)."""
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), answer.reshape(-1),
                                             ignore_index=ANSWER_PAD)


def candidate_scores(forward: AnswerForward, candidates: torch.Tensor) -> torch.Tensor:
    """``(batch, candidates)``: each candidate's summed log-probability, ``-inf`` where a row's
    candidate is all padding; one forward per candidate column that some row holds."""
    scores = torch.full(candidates.shape[:2], -torch.inf, device=candidates.device)
    for k in range(candidates.shape[1]):
        answer = candidates[:, k]  # (batch, T)
        present = (answer != ANSWER_PAD).any(-1)  # (batch,)
        if present.any():
            log_probs = answer_log_probs(forward(answer), answer).to(scores.device)
            scores[:, k] = torch.where(present, log_probs, scores[:, k])
    return scores


def choice_index(candidates: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """``(batch,)``: the index of each row's ``answer`` among its candidates, -1 where it is
    none of them (it then matches no prediction)."""
    same = (candidates == answer[:, None]).all(-1)  # (batch, candidates)
    return torch.where(same.any(-1), same.float().argmax(-1), torch.full_like(same[:, 0], -1, dtype=torch.long))


__all__ = ["answer_log_probs", "answer_logits", "answer_nll", "candidate_scores", "choice_index", "with_answer"]
