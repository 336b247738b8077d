"""Templates measured against a tokenizer: which token sits at which named position.

A text task is a template of named pieces ("John", " walked", " because"), some of them slots
filled from word lists. Which token sits at which named position depends on the tokenizer: a
word-level tokenizer built in code gives one token per word after a ``<bos>``, while a hub BPE
(Pythia's GPT-NeoX tokenizer) adds no ``<bos>`` and splits some names in two. Rather than
assume a layout, :func:`resolve_template` tokenizes every filled prompt, reads the positions
from the tokenizer's character offsets, drops slot words that are not exactly one token, and
checks that every prompt has the same length and positions, so pairs can be stacked and a
position means the same token in every row.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from das_train.data.fingerprints import tokenizer_fingerprint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Piece:
    """One named piece of a template.

    A literal piece is ``text`` itself; a slot piece is ``text`` followed by one word of the
    slot's list (``text`` is then the separator before the word, e.g. ``" "``).
    """

    name: str
    """The position name the piece's (last) token gets, e.g. ``"name"`` or ``"last"``."""
    text: str
    slot: bool = False


def fill(pieces: Sequence[Piece], words: Mapping[str, str]) -> tuple[str, list[tuple[int, int]]]:
    """The prompt text and the character span of each piece."""
    text, spans = "", []
    for piece in pieces:
        start = len(text)
        text += piece.text + (words[piece.name] if piece.slot else "")
        spans.append((start, len(text)))
    return text, spans


@dataclass(frozen=True)
class TemplateLayout:
    """A template as one tokenizer sees it."""

    positions: dict[str, int]
    """Named positions: ``"bos"`` when the tokenizer prepends a special token, then each
    piece's last token."""
    length: int
    """Tokens per prompt, the same for every prompt."""
    words: dict[str, tuple[str, ...]]
    """Per slot, the words kept (exactly one token in the template), in the given order."""
    dropped: dict[str, tuple[str, ...]]
    """Per slot, the words dropped because the tokenizer splits them (or merges them with
    their neighbours)."""
    ids: dict[tuple[str, ...], tuple[int, ...]]
    """Token ids of every prompt, keyed by its slot words in slot order."""
    texts: dict[tuple[str, ...], str]
    """Text of every prompt, keyed like ``ids``."""


def _assign(
    offsets: Sequence[tuple[int, int]], special: Sequence[int], spans: Sequence[tuple[int, int]]
) -> tuple[int, list[list[int]]]:
    """(number of leading special tokens, token indices per piece).

    A token that crosses a piece boundary is listed twice under every piece it touches, so
    those pieces count as not being one token of their own.
    """
    leading, per_piece = 0, [[] for _ in spans]
    for i, ((start, end), is_special) in enumerate(zip(offsets, special)):
        if is_special:
            if any(per_piece):
                raise ValueError("the tokenizer adds special tokens after the text; use one that does not")
            leading += 1
            continue
        if start == end:  # e.g. a lone "Ġ" whose offsets were trimmed: it belongs where it sits
            touched = [p for p, (ps, pe) in enumerate(spans) if ps <= start < pe] or [len(spans) - 1]
        else:
            touched = [p for p, (ps, pe) in enumerate(spans) if start < pe and end > ps]
        for p in touched:
            per_piece[p].extend([i] if len(touched) == 1 else [i, i])  # twice: not a token of its own
    return leading, per_piece


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer: positions are read from character "
            "offsets, which only fast (Rust) tokenizers give; load it with use_fast=True"
        )


_LAYOUTS: dict[tuple, TemplateLayout] = {}


def resolve_template(
    tokenizer: PreTrainedTokenizerBase,
    pieces: Sequence[Piece],
    candidates: Mapping[str, Sequence[str]],
) -> TemplateLayout:
    """Cached :func:`measure_template`; logs the dropped words the first time (treat the
    returned layout as read-only: it is shared)."""
    key = (
        tokenizer_fingerprint(tokenizer),
        tuple(pieces),
        tuple(sorted((slot, tuple(words)) for slot, words in candidates.items())),
    )
    if key not in _LAYOUTS:
        layout = measure_template(tokenizer, pieces, candidates)
        for slot, dropped in layout.dropped.items():
            if dropped:
                logger.warning(
                    "slot %r: dropped %d of %d words that are not one token under %s: %s",
                    slot, len(dropped), len(candidates[slot]), type(tokenizer).__name__, list(dropped),
                )
        _LAYOUTS[key] = layout
    return _LAYOUTS[key]


def measure_template(
    tokenizer: PreTrainedTokenizerBase,
    pieces: Sequence[Piece],
    candidates: Mapping[str, Sequence[str]],
) -> TemplateLayout:
    """Tokenizes the template with every candidate word and measures the layout.

    Args:
        tokenizer: a fast tokenizer; its own special tokens are added (a ``<bos>`` or not).
        pieces: the template.
        candidates: per slot piece name, the words that may fill it.

    A slot word is kept when, with the other slots at their first candidate, it is exactly one
    token of its own. Every prompt of kept words is then tokenized; all must have the same
    length and positions, or the template does not suit the tokenizer (``ValueError``).
    """
    _require_fast(tokenizer)
    slots = [p.name for p in pieces if p.slot]
    if sorted(slots) != sorted(candidates):
        raise ValueError(f"candidates are given for {sorted(candidates)}, the template's slots are {slots}")
    reference = {s: candidates[s][0] for s in slots}
    kept: dict[str, tuple[str, ...]] = {}
    dropped: dict[str, tuple[str, ...]] = {}
    for slot in slots:
        kept[slot], dropped[slot] = _single_token_words(tokenizer, pieces, slot, candidates[slot], reference)

    keys = list(itertools.product(*(kept[s] for s in slots)))
    texts_and_spans = [fill(pieces, dict(zip(slots, key))) for key in keys]
    encoded = tokenizer(
        [t for t, _ in texts_and_spans], return_offsets_mapping=True, return_special_tokens_mask=True
    )
    length, positions = _common_layout(pieces, texts_and_spans, encoded)
    return TemplateLayout(
        positions=positions,
        length=length,
        words=kept,
        dropped=dropped,
        ids={key: tuple(ids) for key, ids in zip(keys, encoded["input_ids"])},
        texts={key: text for key, (text, _) in zip(keys, texts_and_spans)},
    )


def _single_token_words(
    tokenizer: PreTrainedTokenizerBase,
    pieces: Sequence[Piece],
    slot: str,
    words: Sequence[str],
    reference: Mapping[str, str],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped) words of ``slot``: kept when, with the other slots at ``reference``,
    the word is exactly one token of its own."""
    index = [p.name for p in pieces].index(slot)
    texts, all_spans = [], []
    for word in words:
        text, spans = fill(pieces, {**reference, slot: word})
        texts.append(text)
        all_spans.append(spans)
    encoded = tokenizer(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
    single = [
        len(_assign(offsets, special, spans)[1][index]) == 1
        for offsets, special, spans in zip(encoded["offset_mapping"], encoded["special_tokens_mask"], all_spans)
    ]
    kept = tuple(w for w, ok in zip(words, single) if ok)
    if not kept:
        raise ValueError(f"no word of slot {slot!r} is a single token under this tokenizer")
    return kept, tuple(w for w, ok in zip(words, single) if not ok)


def _common_layout(
    pieces: Sequence[Piece], texts_and_spans: Sequence[tuple[str, list[tuple[int, int]]]], encoded
) -> tuple[int, dict[str, int]]:
    """(length, positions) shared by every encoded prompt; ``ValueError`` naming the first
    prompt that differs from the first one."""
    layout: tuple[int, dict[str, int]] | None = None
    for (text, spans), offsets, special, ids in zip(
        texts_and_spans, encoded["offset_mapping"], encoded["special_tokens_mask"], encoded["input_ids"]
    ):
        leading, per_piece = _assign(offsets, special, spans)
        if any(not tokens for tokens in per_piece):
            raise ValueError(f"a piece of {text!r} has no token of its own under this tokenizer")
        positions = {"bos": 0} if leading else {}
        positions.update({p.name: tokens[-1] for p, tokens in zip(pieces, per_piece)})
        if layout is None:
            layout = (len(ids), positions)
        elif layout != (len(ids), positions):
            raise ValueError(
                f"{text!r} tokenizes to {len(ids)} tokens at {positions}, but "
                f"{texts_and_spans[0][0]!r} to {layout[0]} at {layout[1]}: the template's layout "
                "depends on the words under this tokenizer"
            )
    assert layout is not None
    return layout
