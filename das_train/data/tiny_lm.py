"""The one trainer of the tiny language models that tests, recipes and examples train on the spot.

Tests, recipes and examples need a language model that really computes the task, offline and
in seconds. Two kinds are trained here, with one loop (seeded initialisation that leaves the
caller's RNG alone, AdamW, one thread, a cache folder keyed by everything that decides the
weights) and a different :class:`Objective` each:

- a task's tiny GPT-NeoX (:func:`train_tiny_lm`): a 4-layer, 64-wide model learns
  "<bos> NAME VERB because he/she" perfectly in a few seconds on a CPU. Training stops as soon
  as every answer is right (and the loss is low), checked on every sentence, so the model is
  exactly as good as the task needs and no better (:class:`AnswerObjective`);
- the stories' GPT-2 with tied embeddings for steering (``das_train.data.stories``), trained a
  fixed number of steps on random windows of free text (:class:`NextTokenObjective`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from transformers import (
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from das_train.data.cache_folders import write_folder_atomically
from das_train.data.fingerprints import settings_fingerprint, tokenizer_fingerprint
from das_train.data.tokenization import encode_prompts

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when a task model's training changes, so cached models of the old code are not reused."""


class Objective(Protocol):
    """What a tiny model learns: one step's loss, and whether training is done before it."""

    def step_loss(self, model: PreTrainedModel) -> tuple[torch.Tensor, bool]: ...


@dataclass(frozen=True)
class AnswerObjective:
    """Full-batch cross-entropy on the answer token only (the rest of a prompt is random
    words, nothing to learn); done once every answer is right *and* the loss is at most
    ``target_loss``.

    Stopping at the first perfect step leaves answers with tiny margins, whose circuits are
    barely formed: interventions then measure noise more than the mechanism."""

    inputs: dict[str, torch.Tensor]  # input_ids (n, length), with a mask and position ids when padded
    answers: torch.Tensor  # (n,)
    target_loss: float

    def step_loss(self, model: PreTrainedModel) -> tuple[torch.Tensor, bool]:
        logits = model(**self.inputs).logits[:, -1]  # (n, vocab)
        loss = torch.nn.functional.cross_entropy(logits, self.answers)
        # checked before the update, so the returned weights are the ones found good enough
        perfect = bool((logits.argmax(-1) == self.answers).all())
        return loss, perfect and loss.item() <= self.target_loss


def next_token_loss(model: PreTrainedModel, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every next token of ``windows`` (batch, block)."""
    logits = model(input_ids=windows).logits[:, :-1]  # (batch, block - 1, vocab)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())


@dataclass(frozen=True)
class NextTokenObjective:
    """Next-token loss on ``batch_size`` random windows of ``block`` tokens of one token
    stream per step, drawn from the seeded RNG the trainer holds; never done early."""

    stream: torch.Tensor  # (tokens,)
    block: int
    batch_size: int

    def step_loss(self, model: PreTrainedModel) -> tuple[torch.Tensor, bool]:
        offsets = torch.randint(0, self.stream.numel() - self.block, (self.batch_size, 1))
        windows = self.stream[offsets + torch.arange(self.block)]  # (batch, block)
        return next_token_loss(model, windows), False


def train_lm(
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    objective: Objective,
    max_steps: int,
    lr: float,
    seed: int,
    one_cycle: bool = False,
    num_threads: int | None = 1,
) -> tuple[PreTrainedModel, int]:
    """A ``model_class(config)`` trained by AdamW on ``objective``; returns it (in eval mode)
    and the optimizer steps taken.

    Args:
        max_steps: steps at most; fewer when the objective is done first.
        lr: AdamW's learning rate, or the peak of the one-cycle schedule.
        seed: seeds the initialisation and whatever the objective draws, inside a forked RNG
            so the caller's RNG is left as it was.
        one_cycle: a one-cycle schedule over ``max_steps`` (10% warm-up) instead of a constant
            learning rate.
        num_threads: torch's intra-op threads while training, restored afterwards; None leaves
            them alone. One is fastest at this size (64-wide matmuls gain nothing from more)
            and avoids the many-fold slowdown of spinning threads on a busy machine.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_class(config)
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            schedule = None
            if one_cycle:
                schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max_steps,
                                                               pct_start=0.1)
            model.train()
            steps = _optimize(model, objective, optimizer, schedule, max_steps)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return model, steps


def _optimize(model, objective: Objective, optimizer, schedule, max_steps: int) -> int:
    for step in range(max_steps):
        loss, done = objective.step_loss(model)
        if done:
            return step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
    return max_steps


def cached_model(model_class: type[PreTrainedModel], target: Path | None) -> PreTrainedModel | None:
    """The model saved at ``target`` (in eval mode), or None when there is none."""
    if target is None or not target.is_dir():
        return None
    return model_class.from_pretrained(target).eval()


def save_pretrained_atomically(model: PreTrainedModel, target: Path) -> None:
    """save_pretrained whole or not at all: a cut-off run leaves no half-written model where
    the next run would load it (:func:`write_folder_atomically`)."""
    if write_folder_atomically(target, model.save_pretrained, "model"):
        logger.info("saved the tiny model to %s", target)


# -- a task's tiny GPT-NeoX ------------------------------------------------------------------------


class SentenceTask(Protocol):
    """What training needs from a task: a name and its factual (prompt, answer) sentences."""

    name: ClassVar[str]

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]: ...


def tiny_lm_config(
    tokenizer: PreTrainedTokenizerBase, n_layer: int, hidden: int, heads: int, length: int
) -> GPTNeoXConfig:
    """The architecture :func:`train_tiny_lm` builds for sentences of ``length`` tokens; also
    read before training, so a run's sites and widths are checked without training it."""
    special = [t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None]
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=n_layer,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max(64, length),
        bos_token_id=special[0] if special else 0,
        eos_token_id=special[0] if special else 0,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        hidden_dropout=0.0,  # training checks the train-mode logits: they must be the eval ones
        attention_dropout=0.0,
    )


def train_tiny_lm(
    task: SentenceTask,
    tokenizer: PreTrainedTokenizerBase,
    n_layer: int = 4,
    hidden: int = 64,
    heads: int = 4,
    max_steps: int = 500,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    lr: float = 3e-3,
    num_threads: int | None = 1,
    target_loss: float = 0.05,
) -> GPTNeoXForCausalLM:
    """A GPT-NeoX that answers every one of ``task.sentences(tokenizer)`` right.

    Args:
        task: the task whose factual sentences the model learns.
        tokenizer: the tokenizer the sentences are encoded with (its size is the vocabulary).
        n_layer, hidden, heads: the model's depth, width and attention heads.
        max_steps: full-batch steps at most; training stops once every answer is right and
            the loss is at most ``target_loss``.
        seed: seed of the initialisation.
        cache_dir: where to save the model and find it next time; None trains every time.
        lr: AdamW's learning rate.
        num_threads: as for :func:`train_lm`.

    If ``max_steps`` run out first, the model is returned anyway and a warning gives its
    accuracy.
    """
    sentences = task.sentences(tokenizer)
    inputs, answers = encode_prompts(tokenizer, sentences)  # {input_ids: (n, length), ...}, (n,)
    config = tiny_lm_config(tokenizer, n_layer, hidden, heads, inputs["input_ids"].shape[1])
    target = None
    if cache_dir is not None:
        key = settings_fingerprint(
            CACHE_VERSION, task.name, task, sorted(sentences), tokenizer_fingerprint(tokenizer),
            config.to_dict(), max_steps, lr, seed, target_loss,
        )
        target = Path(cache_dir) / f"tiny-{task.name}-{key[:16]}"
    model = cached_model(GPTNeoXForCausalLM, target)
    if model is not None:
        logger.info("loaded the tiny %s model from %s (accuracy %.3f on %d sentences)",
                    task.name, target, _accuracy(model, inputs, answers), len(sentences))
        return model

    logger.info("training a %d-layer, %d-wide GPT-NeoX on %d %s sentences (at most %d steps)",
                n_layer, hidden, len(sentences), task.name, max_steps)
    start = time.perf_counter()
    model, steps = train_lm(GPTNeoXForCausalLM, config, AnswerObjective(inputs, answers, target_loss),
                            max_steps, lr, seed, num_threads=num_threads)
    accuracy = _accuracy(model, inputs, answers)
    log = logger.info if accuracy == 1.0 else logger.warning
    log("tiny %s model: accuracy %.3f on %d sentences after %d steps (%.1f s)",
        task.name, accuracy, len(sentences), steps, time.perf_counter() - start)
    if target is not None:
        save_pretrained_atomically(model, target)
    return model


def _accuracy(model: PreTrainedModel, inputs: dict[str, torch.Tensor], answers: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]  # (n, vocab)
    return (logits.argmax(-1) == answers).float().mean().item()


def answer_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[tuple[str, str]]
) -> float:
    """Share of ``sentences`` whose answer is the model's top next token after the prompt."""
    inputs, answers = encode_prompts(tokenizer, sentences)  # {input_ids: (n, length), ...}, (n,)
    return _accuracy(model, inputs, answers)
