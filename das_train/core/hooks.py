"""Reading and writing the selected units of a hooked activation, and the hooks' lifetime.

A hook sees a module's first input or first output: a tensor, or a tuple whose first item is
the tensor (decoder blocks return either, depending on the transformers release). The units an
intervention acts on are picked with one advanced-indexing gather, ``x[b, s, c]``, whose index
tensors broadcast to the unit layout:

- ``pos``: ``(batch, units, width)``;
- ``h``: ``(batch, heads, seq, head_dim)``;
- ``h.pos``: ``(batch, heads, positions, head_dim)``;

and written back with ``index_put`` of the same indices, so only the selected units are ever
copied. The write is in place when that is safe (no autograd graph needs the old values, and
the tensor is not one the caller passed in or the module's own input) and out of place
otherwise. Hooks live in a :class:`HookSet` context: removed in ``finally``, also after an
exception, and never touching hooks that were on the model before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from das_train.core.locations import Location
from das_train.core.sites import Site


class HookSet:
    """Hooks registered for one call; removed on exit whatever happens."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add(self, module: nn.Module, side: str, fn: Callable[..., Any]) -> None:
        """``fn(module, args, kwargs, output)``; ``output`` is ``None`` for input hooks."""
        if side == "input":

            def pre_hook(mod, args, kwargs):
                return fn(mod, args, kwargs, None)

            handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            handle = module.register_forward_hook(fn, with_kwargs=True)
        self._handles.append(handle)

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class StopForward(Exception):
    """Raised by the last getter of a source run: nothing after it is needed."""


_INPUT_KWARGS = ("hidden_states", "input", "x", "inputs_embeds", "x_t")


def read_hooked(args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    """The tensor a hook acts on: the first output, or the first input."""
    if output is not None:
        value = output[0] if isinstance(output, (tuple, list)) else output
    elif args:
        value = args[0]
    else:
        value = next((kwargs[k] for k in _INPUT_KWARGS if k in kwargs), None)
        if value is None:
            value = next((v for v in kwargs.values() if torch.is_tensor(v)), None)
    if not torch.is_tensor(value):
        raise TypeError(
            f"the hooked value is a {type(value).__name__}, not a tensor; choose a module whose "
            "first input/output is a tensor"
        )
    return value


def write_hooked(args: tuple, kwargs: dict, output: Any, new: torch.Tensor) -> Any:
    """What the hook returns so that the module sees / emits ``new`` instead."""
    if output is not None:
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        return new
    if args:
        return (new, *args[1:]), kwargs
    for k in _INPUT_KWARGS:
        if k in kwargs:
            return args, {**kwargs, k: new}
    key = next(k for k, v in kwargs.items() if torch.is_tensor(v))
    return args, {**kwargs, key: new}


def storage_ptrs(tensors: Iterable[Any]) -> set[int]:
    ptrs = set()
    for t in tensors:
        if torch.is_tensor(t) and t.numel() > 0:
            ptrs.add(t.untyped_storage().data_ptr())
    return ptrs


def can_write_in_place(x: torch.Tensor, protected: set[int]) -> bool:
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    return x.numel() > 0 and x.untyped_storage().data_ptr() not in protected


class UnitIndex:
    """Index tensors that pick a site's units out of a ``(batch, seq, full_width)`` tensor."""

    def __init__(self, site: Site, loc: Location | None, x3: torch.Tensor) -> None:
        device = x3.device
        batch, seq, full = x3.shape
        columns = site.columns.to(device) if site.columns is not None else None
        self.whole = False
        if site.n_heads is None:
            if loc is None or loc.units is None:
                if columns is None:
                    self.whole = True  # the intervention sees the whole tensor
                    return
                positions = torch.arange(seq, device=device).expand(batch, seq)
            else:
                positions = loc.units.to(device)
            cols = columns if columns is not None else torch.arange(full, device=device)
            self.index = (
                torch.arange(batch, device=device)[:, None, None],  # (batch, 1, 1)
                positions[:, :, None],  # (batch, units, 1)
                cols[None, None, :],  # (1, 1, width)
            )
            return
        heads_total = site.n_heads
        cols = columns if columns is not None else torch.arange(full, device=device)
        cols = cols.view(heads_total, -1)  # (heads, head_dim)
        if site.unit == "h.pos":
            heads = loc.heads if loc is not None else None
            positions = loc.units if loc is not None else None
        else:  # "h": chosen heads at every position
            heads = loc.units if loc is not None else None
            positions = None
        if heads is None:
            heads = torch.arange(heads_total).expand(batch, heads_total)
        if positions is None:
            positions = torch.arange(seq).expand(batch, seq)
        heads, positions = heads.to(device), positions.to(device)
        self.index = (
            torch.arange(batch, device=device)[:, None, None, None],  # (batch, 1, 1, 1)
            positions[:, None, :, None],  # (batch, 1, positions, 1)
            cols[heads][:, :, None, :],  # (batch, heads, 1, head_dim)
        )

    def gather(self, x3: torch.Tensor) -> torch.Tensor:
        if self.whole:
            return x3
        return x3[self.index]

    def scatter(self, x3: torch.Tensor, values: torch.Tensor, in_place: bool) -> torch.Tensor:
        values = values.to(x3.dtype)
        if self.whole:
            if values.shape != x3.shape:
                values = values.expand(x3.shape)
            return values
        if in_place:
            return x3.index_put_(self.index, values)
        return x3.index_put(self.index, values)


def as_3d(x: torch.Tensor) -> torch.Tensor:
    """(batch, width) activations (MLPs, recurrent cells) as one-position sequences."""
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() != 3:
        raise ValueError(
            f"expected an activation of shape (batch, seq, width) or (batch, width), got "
            f"{tuple(x.shape)}; use a module path to a module with such an output"
        )
    return x


def from_3d(x3: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return x3.squeeze(1) if like.dim() == 2 else x3


def check_location_in_range(loc: Location | None, x3: torch.Tensor, site: Site, what: str) -> None:
    """The in-hook check for sizes unknown before the forward (module paths, odd inputs)."""
    if loc is None:
        return
    seq = x3.shape[1]
    if site.n_heads is None or site.unit == "h.pos":
        if loc.units is not None and (int(loc.units.max()) >= seq or int(loc.units.min()) < 0):
            raise IndexError(
                f"{what}: position(s) {loc.units.tolist()} out of range for a sequence of {seq}"
            )
