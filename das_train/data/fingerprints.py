"""Fingerprints of tokenizers and settings.

Caches of pairs and of tiny models are keyed by everything that changes their content; these
hashes are stable across runs and machines, so a cache is reused exactly when it would be
rebuilt the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from transformers import PreTrainedTokenizerBase


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides the token ids (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    body += json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def settings_fingerprint(*parts: object) -> str:
    """A hash of dataclasses, dicts and plain values, stable across runs and machines."""

    def plain(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"__class__": type(value).__name__, **dataclasses.asdict(value)}
        return value

    text = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
