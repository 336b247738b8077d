"""Synthetic simple stories, and a tiny GPT-2 trained on them on the spot, for offline steering.

The pyvene paper's Figure 1 steers TinyStories-33M by adding a word's embedding to every
layer's MLP output. That works because GPT-2-style models tie their input and output
embeddings: pushing the residual stream along a word's embedding raises that word's logit,
and the word's topic comes along. The tiny gender model (untied embeddings, a vocabulary of
names) does not respond to it, so offline steering needs a free-text model with tied
embeddings: :func:`story_corpus` writes seeded stories from templates over word lists,
and :func:`train_story_lm` trains a small GPT-2 on them in well under a minute with the one
tiny-model trainer (``das_train.data.tiny_lm``), cached like the tasks' models.

Three choices, each found by measurement while building this, make steering act as on a real
model: on the word and its topic, with the text still readable.

- Every story has a *mood* ("happy", "sad", ...) that its mood slots repeat, with the mood's
  own reaction ("smiled") and weather ("sun"): a mood word then stands for a topic, not only
  for a slot, and a model that keeps a story's mood carries a steered word forward. (Without
  moods, words that share every slot get near-parallel embeddings, and adding one pushed all
  adjectives alike.)
- Moods also describe things now and then ("a happy dog"), so a mood word fits in more places.
- Weights start at std 0.1 instead of GPT-2's 0.02. At 0.02 the eight moods' embeddings ended
  with cosine 0.98 (one shared "mood" direction) and "happy" pushed every mood; the recipe's
  model has cosine 0.2-0.5 between moods and 0.44 between "happy" and "smiled".

Slot words are otherwise drawn uniformly, so a plain model writes "happy" in about one
continuation in ten: the share of continuations that contain the word measures steering.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from das_train.data.fingerprints import settings_fingerprint, tokenizer_fingerprint
from das_train.data.tiny_lm import (
    NextTokenObjective,
    cached_model,
    next_token_loss,
    save_pretrained_atomically,
    train_lm,
)
from das_train.data.tokenization import word_level_tokenizer

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the corpus or training changes, so cached models of the old code are not reused."""

CHARACTERS = ("cat", "dog", "bird", "frog", "bear", "duck", "fox", "girl", "boy", "rabbit", "mouse", "lion",
              "horse", "cow", "pig", "owl", "bee", "king", "queen", "puppy")
THINGS = ("ball", "boat", "kite", "cake", "hat", "box", "book", "apple", "flower", "toy", "cup", "shoe",
          "star", "bell", "drum", "car")
ADJECTIVES = ("big", "small", "red", "blue", "green", "little", "old", "tall", "soft", "loud", "pretty", "fast",
              "slow", "warm", "cold", "shiny", "yellow", "tiny", "round", "new")
"""Describing words, drawn afresh for every slot."""
MOODS = {
    # mood: (what the characters do, what the weather is)
    "happy": ("smiled", "sun"),
    "sad": ("cried", "rain"),
    "angry": ("shouted", "thunder"),
    "sleepy": ("yawned", "fog"),
    "scared": ("hid", "dark"),
    "proud": ("cheered", "wind"),
    "calm": ("rested", "snow"),
    "silly": ("giggled", "rainbow"),
}
"""Each story has one mood, which all its mood slots repeat, with the mood's own reaction and
weather: a word's embedding then carries a topic (the mood of the story), as real words do,
and not only a part of speech, so adding it steers towards the word and its topic."""
VERBS = ("ran", "walked", "jumped", "went", "flew", "swam", "danced", "hopped", "rolled", "raced",
         "came", "wandered")
PLACES = ("park", "garden", "forest", "house", "river", "school", "farm", "beach", "hill", "town", "lake",
          "cave")

OPENING = "once upon a time there was a {adj} {char} ."
SENTENCES = (
    "the {char} {verb} to the {place} .",
    "one day the {char} saw a {adj} {thing} .",
    "the {thing} was very {adj} .",
    "the {char} felt {mood} .",
    "a {adj} {char} lived in the {place} .",
    "the {char} and the {other} played in the {place} .",
    "the {char} had a {adj} {thing} .",
    "they {verb} to the {place} together .",
    "it was a {mood} day for the {char} .",
    "the {other} gave the {char} a {thing} .",
    "the {char} was very {mood} .",
    "everyone in the {place} was {mood} .",
    "the {char} {reaction} .",
    "there was {weather} over the {place} .",
    "the {char} was {mood} and {reaction} .",
    "the {thing} made the {char} {mood} .",
)
"""Body sentences; ``{char}`` is the story's hero half of the time, so the model also learns to
refer back to it, and ``{mood}`` is always the story's mood."""

FIXED_WORDS = tuple(
    w for text in (OPENING, *SENTENCES) for w in text.split() if not w.startswith("{")
)

def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word of the stories' vocabulary, ``<bos>`` prepended to every text."""
    mood_words = [w for mood, pair in MOODS.items() for w in (mood, *pair)]
    return word_level_tokenizer([*FIXED_WORDS, *CHARACTERS, *THINGS, *ADJECTIVES, *mood_words, *VERBS, *PLACES],
                                bos=True)


def _sentence(rng: random.Random, template: str, hero: str, mood: str) -> str:
    char = hero if rng.random() < 0.5 else rng.choice(CHARACTERS)
    other = rng.choice([c for c in CHARACTERS if c != char])
    # The mood also describes things now and then ("a happy dog"), as real mood words do:
    # that gives it more places in a sentence where it fits.
    adj = mood if rng.random() < 0.3 else rng.choice(ADJECTIVES)
    return template.format(char=char, other=other, adj=adj, thing=rng.choice(THINGS),
                           verb=rng.choice(VERBS), place=rng.choice(PLACES), mood=mood,
                           reaction=MOODS[mood][0], weather=MOODS[mood][1])


def story(rng: random.Random, sentences: int = 6) -> str:
    """One story of one hero and one mood: half open with "once upon a time ...", the rest
    start mid-scene."""
    hero, mood = rng.choice(CHARACTERS), rng.choice(sorted(MOODS))
    parts = []
    if rng.random() < 0.5:
        parts.append(OPENING.format(adj=rng.choice(ADJECTIVES), char=hero))
    while len(parts) < sentences:
        parts.append(_sentence(rng, rng.choice(SENTENCES), hero, mood))
    return " ".join(parts)


def story_corpus(n: int, seed: int) -> list[str]:
    """``n`` seeded stories."""
    rng = random.Random(seed)
    return [story(rng) for _ in range(n)]


def _token_stream(tokenizer: PreTrainedTokenizerFast, stories: list[str]) -> torch.Tensor:
    """Every story with its ``<bos>``, end to end: (tokens,)."""
    ids = tokenizer(stories)["input_ids"]
    return torch.tensor([t for row in ids for t in row], dtype=torch.long)


def story_lm_config(
    tokenizer: PreTrainedTokenizerFast, n_layer: int, hidden: int, heads: int, block: int, init_std: float
) -> GPT2Config:
    """The GPT-2 :func:`train_story_lm` builds: tied embeddings, no dropout, ``block``
    positions, weights initialised at std ``init_std``."""
    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=block, n_embd=hidden, n_layer=n_layer, n_head=heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
    )


def train_story_lm(
    tokenizer: PreTrainedTokenizerFast,
    n_layer: int = 2,
    hidden: int = 64,
    heads: int = 4,
    steps: int = 1500,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    stories: int = 4000,
    block: int = 64,
    batch_size: int = 16,
    lr: float = 3e-3,
    num_threads: int | None = 1,
    init_std: float = 0.1,
) -> GPT2LMHeadModel:
    """A GPT-2 with tied embeddings trained for ``steps`` AdamW steps on ``stories`` stories.

    Args:
        tokenizer: :func:`build_tokenizer`'s (its size is the vocabulary).
        n_layer, hidden, heads: the model's depth, width and attention heads.
        steps: optimizer steps (one-cycle schedule peaking at ``lr``) on random windows of
            ``block`` tokens, ``batch_size`` at a time. About 1500 are needed before a
            2-layer model keeps a story's mood: the recipe's model gives p("sad") = 0.99 after
            "the dog was very sad . they went to the park together . the cat felt", where
            shorter runs stayed near chance (1/8).
        seed: seed of the corpus, the windows and the initialisation.
        cache_dir: where to save the model and find it next time; None trains every time.
        block: the context trained on, and the model's ``n_positions``.
        num_threads: torch's intra-op threads while training (one is fastest at this size).
        init_std: std of the initial weights (see the module doc for why not GPT-2's 0.02).

    The loss on 200 held-out stories is logged, to tell a model that learned the stories from
    one that did not (1.19 nats a token for the recipe's model; slot words are drawn
    uniformly, so most of that cannot be learned).
    """
    config = story_lm_config(tokenizer, n_layer, hidden, heads, block, init_std)
    corpus = story_corpus(stories, seed)
    target = None
    if cache_dir is not None:
        # keyed by the corpus itself, so any change to the word lists or templates retrains
        key = settings_fingerprint(CACHE_VERSION, tokenizer_fingerprint(tokenizer), config.to_dict(), steps, seed,
                                   block, batch_size, lr, corpus)
        target = Path(cache_dir) / f"tiny-stories-{key[:16]}"
    model = cached_model(GPT2LMHeadModel, target)
    if model is not None:
        logger.info("loaded the tiny stories GPT-2 from %s", target)
        return _never_writes_pad_or_unk(model, tokenizer)

    stream = _token_stream(tokenizer, corpus)  # (tokens,)
    logger.info("training a %d-layer, %d-wide GPT-2 (tied embeddings) on %d stories (%d tokens), %d steps",
                n_layer, hidden, stories, stream.numel(), steps)
    start = time.perf_counter()
    model, _ = train_lm(GPT2LMHeadModel, config, NextTokenObjective(stream, block, batch_size), steps, lr, seed,
                        one_cycle=True, num_threads=num_threads)
    logger.info("tiny stories GPT-2: held-out loss %.3f after %d steps (%.1f s)",
                _held_out_loss(model, tokenizer, seed, block), steps, time.perf_counter() - start)
    if target is not None:
        save_pretrained_atomically(model, target)
    return _never_writes_pad_or_unk(model, tokenizer)


def _held_out_loss(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, seed: int, block: int) -> float:
    """Next-token loss on 200 stories of another seed, cut into windows of ``block`` tokens."""
    held_out = _token_stream(tokenizer, story_corpus(200, seed + 1))  # (tokens,)
    usable = held_out.numel() // block * block
    with torch.no_grad():
        return next_token_loss(model, held_out[:usable].view(-1, block)).item()


def _never_writes_pad_or_unk(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    """``<pad>`` and ``<unk>`` never occur in the stories, but their untrained logits are not
    minus infinity: sampling at temperature 1 would now and then write one."""
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.unk_token_id]
    return model

