"""A tiny GPT-NeoX trained on the spot on a task's factual sentences.

Tests, recipes and examples need a language model that really computes the task, offline and
in seconds: a 4-layer, 64-wide GPT-NeoX learns "<bos> NAME VERB because he/she" perfectly in a
few seconds on a CPU. Training stops as soon as every answer is right, checked on every
sentence, so the model is exactly as good as the task needs and no better. With a cache
directory, the model is saved under a hash of everything that decides its weights and
reloaded next time.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from das_train.core.fault_points import fault_point
from das_train.core.files import temporary_folder
from das_train.tasks.tokenizers import encode_sentences, settings_fingerprint, tokenizer_fingerprint

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when training changes, so cached models of the old code are not reused."""


class SentenceTask(Protocol):
    """What training needs from a task: a name and its factual (prompt, answer) sentences."""

    name: ClassVar[str]

    def sentences(self, tokenizer: PreTrainedTokenizerBase | None = None) -> list[tuple[str, str]]: ...


def _accuracy(model: GPTNeoXForCausalLM, ids: torch.Tensor, answers: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1]  # (n, vocab)
    return (logits.argmax(-1) == answers).float().mean().item()


def _train(
    ids: torch.Tensor,
    answers: torch.Tensor,
    config: GPTNeoXConfig,
    max_steps: int,
    lr: float,
    seed: int,
    target_loss: float,
) -> tuple[GPTNeoXForCausalLM, int]:
    """Full-batch AdamW on the answer token only (the rest of a prompt is random words,
    nothing to learn) until every answer is right *and* the loss is below ``target_loss``;
    returns the model and the steps taken.

    Stopping at the first perfect step leaves answers with tiny margins, whose circuits are
    barely formed: interventions then measure noise more than the mechanism."""
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    steps = 0
    while True:
        logits = model(input_ids=ids).logits[:, -1]  # (n, vocab)
        loss = torch.nn.functional.cross_entropy(logits, answers)
        # checked before the update, so the returned weights are the ones found good enough
        perfect = bool((logits.argmax(-1) == answers).all())
        if steps == max_steps or (perfect and loss.item() <= target_loss):
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    return model, steps


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
        num_threads: torch's intra-op threads while training, restored afterwards; None leaves
            them alone. One is fastest at this size (64-wide matmuls gain nothing from more)
            and avoids the many-fold slowdown of spinning threads on a busy machine.

    If ``max_steps`` run out first, the model is returned anyway and a warning gives its
    accuracy.
    """
    sentences = task.sentences(tokenizer)
    ids, answers = encode_sentences(tokenizer, sentences)  # (n, length), (n,)
    config = tiny_lm_config(tokenizer, n_layer, hidden, heads, ids.shape[1])

    target: Path | None = None
    if cache_dir is not None:
        key = settings_fingerprint(
            CACHE_VERSION, task.name, task, sorted(sentences), tokenizer_fingerprint(tokenizer),
            config.to_dict(), max_steps, lr, seed, target_loss,
        )
        target = Path(cache_dir) / f"tiny-{task.name}-{key[:16]}"
        if target.is_dir():
            model = GPTNeoXForCausalLM.from_pretrained(target)
            model.eval()
            logger.info("loaded the tiny %s model from %s (accuracy %.3f on %d sentences)",
                        task.name, target, _accuracy(model, ids, answers), len(sentences))
            return model

    logger.info("training a %d-layer, %d-wide GPT-NeoX on %d %s sentences (at most %d steps)",
                n_layer, hidden, len(sentences), task.name, max_steps)
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        model, steps = _train(ids, answers, config, max_steps, lr, seed, target_loss)
    finally:
        torch.set_num_threads(previous_threads)
    accuracy = _accuracy(model, ids, answers)
    log = logger.info if accuracy == 1.0 else logger.warning
    log("tiny %s model: accuracy %.3f on %d sentences after %d steps (%.1f s)",
        task.name, accuracy, len(sentences), steps, time.perf_counter() - start)

    if target is not None:
        save_pretrained_atomically(model, target)
    return model


def save_pretrained_atomically(model: PreTrainedModel, target: Path) -> None:
    """save_pretrained into a temporary sibling, then rename: a cut-off run leaves no
    half-written model where the next run would load it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_folder(target.parent, target.name)
    try:
        model.save_pretrained(staging)
        fault_point("model")
        os.rename(staging, target)
        logger.info("saved the tiny model to %s", target)
    except OSError:
        if not target.is_dir():  # a concurrent run that won the rename is fine; anything else is not
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def answer_accuracy(
    model: GPTNeoXForCausalLM, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[tuple[str, str]]
) -> float:
    """Share of ``sentences`` whose answer is the model's top next token after the prompt."""
    ids, answers = encode_sentences(tokenizer, sentences)  # (n, length), (n,)
    return _accuracy(model, ids, answers)
