"""Checks the inputs of an intervention call against the wrapped model, before any forward.

Inputs a model cannot take fail deep inside it otherwise, after the source runs: float token
ids as an embedding's dtype error, an id past the vocabulary as an index error (on a GPU a
device-side assert that poisons the process), a sequence longer than the model's positions
as a shape mismatch in its position embedding, an attention mask of the wrong shape as a
broadcasting error in attention; NaN or inf in ``inputs_embeds`` or a vector model's inputs
turn every output into NaN with no error at all. Here each problem is named with the input it
is in (``base``, ``sources[i]``) and reported with the call's location problems, all at once.

Cost: shapes and dtypes are read without touching the data; the value checks (id range,
finiteness) each reduce to one boolean on the input's device, and all of a call's booleans
are read back together, one transfer per device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

POSITION_LIMIT_FIELDS = ("n_positions", "max_position_embeddings")
"""Config fields that bound a model's sequence length (GPT-2's first, then the rest)."""


def vocabulary_size(model: nn.Module) -> int | None:
    """How many token ids the model embeds (``config.vocab_size``, which a resize updates;
    else its input embedding's rows), or ``None`` for a model that takes no token ids."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    return int(embeddings.num_embeddings) if isinstance(embeddings, nn.Embedding) else None


def position_limit(model: nn.Module) -> tuple[int, str] | None:
    """(longest sequence the model takes, the config field that says so), when it says."""
    config = getattr(model, "config", None)
    for name in POSITION_LIMIT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None


def _is_integer(t: torch.Tensor) -> bool:
    return not (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


class InputChecks:
    """Collects the problems of one call's inputs; :meth:`problems` returns them all.

    Args:
        model: the wrapped model; its vocabulary and position limit are read once per call.
    """

    def __init__(self, model: nn.Module) -> None:
        self.vocab = vocabulary_size(model)
        self.limit = position_limit(model)
        self.found: list[str] = []
        self._pending: list[tuple[torch.Tensor, Callable[[], str]]] = []  # (0-d bool "is bad", message)

    def add(self, inputs: Any, what: str) -> None:
        """Checks one input of the call (a dict of model kwargs, a tensor, or a list of them)."""
        if isinstance(inputs, Mapping):
            self._check_mapping(inputs, what)
        elif torch.is_tensor(inputs):
            self._check_positional(inputs, what)
        elif isinstance(inputs, (list, tuple)):
            for k, value in enumerate(inputs):
                if torch.is_tensor(value):
                    self._check_positional(value, f"{what}[{k}]" if k else what)

    def problems(self) -> list[str]:
        """Every problem found, the value checks read back with one transfer per device."""
        by_device: dict[torch.device, list[tuple[torch.Tensor, Callable[[], str]]]] = {}
        for flag, message in self._pending:
            by_device.setdefault(flag.device, []).append((flag, message))
        for pending in by_device.values():
            flags = torch.stack([flag for flag, _ in pending]).tolist()
            self.found += [message() for bad, (_, message) in zip(flags, pending) if bad]
        self._pending = []
        return self.found

    def _check_positional(self, t: torch.Tensor, what: str) -> None:
        """A bare tensor is what the model's first argument takes: token ids for a model with
        a vocabulary, features (checked for NaN and inf) for a vector model."""
        if self.vocab is not None:
            self._check_ids(t, f"{what} (input_ids)")
        elif t.dtype.is_floating_point:
            self._check_finite(t, what)

    def _check_mapping(self, inputs: Mapping[str, Any], what: str) -> None:
        ids, embeds, mask = (inputs.get(k) for k in ("input_ids", "inputs_embeds", "attention_mask"))
        tokens = ids if torch.is_tensor(ids) else embeds if torch.is_tensor(embeds) else None
        if torch.is_tensor(ids):
            self._check_ids(ids, f"{what} input_ids")
        if torch.is_tensor(embeds):
            self._check_embeds(embeds, f"{what} inputs_embeds")
        if torch.is_tensor(mask) and tokens is not None and mask.dim() != 4:
            expected = _shape(tokens) if tokens is ids else _shape(tokens)[:-1]
            if _shape(mask) != expected:
                source = "input_ids" if tokens is ids else "inputs_embeds"
                self.found.append(f"{what} attention_mask has shape {_shape(mask)} but {source} {_shape(tokens)}; "
                                  f"it must be {expected}, one entry per token")
        for name, value in inputs.items():
            if (torch.is_tensor(value) and value.dtype.is_floating_point and "mask" not in name
                    and name not in ("input_ids", "inputs_embeds")):
                self._check_finite(value, f"{what} {name}")

    def _check_length(self, length: int, shape: tuple[int, ...], what: str) -> None:
        if length == 0:
            self.found.append(f"{what} is an empty sequence (shape {shape}); give at least one token")
        elif self.limit is not None and length > self.limit[0]:
            self.found.append(f"{what} is {length} tokens long; the model takes at most {self.limit[0]} "
                              f"(config.{self.limit[1]})")

    def _check_ids(self, ids: torch.Tensor, what: str) -> None:
        if not _is_integer(ids):
            self.found.append(f"{what} are {ids.dtype}; token ids must be an integer tensor (torch.long)")
            return
        if ids.dim() == 0 or ids.numel() == 0:
            self._check_length(0, _shape(ids), what)
            return
        self._check_length(int(ids.shape[-1]), _shape(ids), what)
        if self.vocab is None:
            return
        vocab = self.vocab

        def message() -> str:
            bad = sorted({int(v) for v in ids[(ids < 0) | (ids >= vocab)].tolist()})
            shown = bad[:8] + (["..."] if len(bad) > 8 else [])
            return f"{what} hold ids {shown} outside the model's vocabulary; allowed 0..{vocab - 1}"

        lowest, highest = torch.aminmax(ids)  # two scalars: cheaper than a mask of every id
        self._pending.append(((lowest < 0) | (highest >= vocab), message))

    def _check_embeds(self, embeds: torch.Tensor, what: str) -> None:
        if embeds.numel() == 0:
            self.found.append(f"{what} are empty (shape {_shape(embeds)}); give at least one position")
            return
        if embeds.dim() == 3:
            self._check_length(int(embeds.shape[1]), _shape(embeds), what)
        self._check_finite(embeds, what)

    def _check_finite(self, t: torch.Tensor, what: str) -> None:
        def message() -> str:
            kinds = [name for name, hit in (("nan", torch.isnan(t).any()), ("inf", torch.isinf(t).any())) if bool(hit)]
            return f"{what} hold {' and '.join(kinds)} values; inputs must be finite"

        self._pending.append((~torch.isfinite(t).all(), message))
