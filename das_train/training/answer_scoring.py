"""A language model scored among the task's answers only (``task.score_among=answers``).

By default a language model's prediction is the argmax over its whole vocabulary, as pyvene's
tutorials score IIA. A network that never ranks the answers first (an untrained one: the
validity card's random-init control) then scores 0 whatever an intervention does. Scoring
among the answers (the task's output labels, ``TaskSpec.label_names``) asks instead which
answer the model prefers, as CausalGym's and MIB's evaluations do; it is a different
question, so it is a result-affecting setting of its own.

The restriction is one forward hook on the model's output embedding that gives every other
token the dtype's lowest logit: the frozen-model filter, DAS's loss, IIA, the untrained
featurizers' outcomes and the companion sweeps all read the same restricted logits, with no
path left scoring over the vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

log = logging.getLogger("das_train")


def restrict_to_answers(model: nn.Module, answer_ids: Iterable[int]) -> RemovableHandle:
    """Masks ``model``'s output logits to ``answer_ids`` (every other token gets the lowest
    value of the logits' dtype) until the returned handle is removed.

    Raises ValueError when the model has no output embedding, or an id is outside its
    vocabulary, or fewer than two answers are given (one answer leaves nothing to choose)."""
    ids = sorted({int(i) for i in answer_ids})
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"task.score_among=answers needs a language model with an output embedding; "
                         f"{type(model).__name__} has none")
    vocabulary = head.weight.shape[0]
    if len(ids) < 2 or ids[0] < 0 or ids[-1] >= vocabulary:
        raise ValueError(f"task.score_among=answers needs two or more answer token ids in 0..{vocabulary - 1}, "
                         f"got {ids}")
    keep = torch.zeros(vocabulary, dtype=torch.bool)
    keep[ids] = True

    def mask(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        allowed = keep.to(output.device)
        return output.masked_fill(~allowed, torch.finfo(output.dtype).min)

    log.info("scoring among the task's %d answers (task.score_among=answers)", len(ids))
    return head.register_forward_hook(mask)


__all__ = ["restrict_to_answers"]
