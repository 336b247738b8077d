"""What the frozen model computes once for a whole sweep, and running it from a layer upward.

A per-site DAS loop runs the frozen model twice per training step, on the source and on the
base, although nothing below the intervened layer changes while an intervention trains. For a
group of sites at one (layer, component), :func:`collect_layer` runs the model once per split
and keeps:

- the base's input to the layer's block (the *frozen prefix*), so training can start at the
  block instead of at the embeddings (:class:`PrefixSkip`);
- the component's activation at each swept position, for the sources (what an interchange
  writes in) and for the bases (what the probes read).

Each collection pass stops right after the site (nothing above it is needed). Activations are
kept on CPU in the model's dtype, one layer at a time, so a big model's sweep holds one layer's
worth, not all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, StopForward, as_3d, read_hooked, write_hooked
from das_train.core.sites import resolve_site, table_for
from das_train.training.das_module import model_inputs

Batch = Mapping[str, torch.Tensor]


def batched_sites_supported(model: nn.Module, layer: int, component: str) -> str | None:
    """``None`` when a site group at (layer, component) can run cached and batched, else why not.

    The batched path needs the model's block at every layer (to skip the frozen prefix) and a
    component that is a whole module input or output (not a slice of fused columns or heads).
    """
    table = table_for(model)
    if table is None:
        return f"{type(model).__name__} has no architecture table"
    if table.recurrent:
        return f"{table.name} is recurrent (its layer is called once per time step)"
    if "block_input" not in table.components:
        return f"the {table.name} table has no block_input component"
    site = resolve_site(model, layer, component, "pos")
    if site.columns is not None or site.n_heads is not None:
        return f"{component} is a slice of its module's activation (columns or heads)"
    return None


def block_modules(model: nn.Module, up_to: int) -> list[nn.Module]:
    """The blocks of layers ``0 .. up_to`` (the modules ``block_input`` hooks)."""
    return [resolve_site(model, layer, "block_input", "pos").module for layer in range(up_to + 1)]


@dataclass
class LayerActivations:
    """One split's activations at one (layer, component), in the split's row order."""

    prefix: torch.Tensor | None
    """``(N, seq, d)`` or ``(N, d)``: the base's input to the layer's block, as the block saw it
    (``None`` when not kept)."""
    base: torch.Tensor | None
    """``(N, P, w)``: the bases' component activation at the P swept positions (``None`` when
    not kept)."""
    source: torch.Tensor
    """``(N, P, w)``: the sources' component activation at the P swept positions."""


def _positions_index(positions: Sequence[int | None], seq: int) -> torch.Tensor:
    # ``None`` (vector tasks) is the whole activation, a one-position sequence.
    index = [0 if p is None else p for p in positions]
    bad = [p for p in index if not -seq <= p < seq]
    if bad:
        raise IndexError(f"positions {bad} out of range for a sequence of {seq}")
    return torch.tensor(index, dtype=torch.long)


@torch.no_grad()
def collect_layer(
    model: nn.Module,
    layer: int,
    component: str,
    positions: Sequence[int | None],
    batches: Iterable[Batch],
    is_language_model_task: bool = True,
    keep_prefix: bool = True,
    keep_base: bool = True,
) -> LayerActivations:
    """Runs base and source of every pair up to the site once; see the module docstring.

    ``keep_prefix`` and ``keep_base`` drop what a caller will not read (a layer-0 group has no
    prefix to skip; the test split needs no probe activations), so it is never held.
    """
    block = resolve_site(model, layer, "block_input", "pos")
    site = resolve_site(model, layer, component, "pos")
    device = input_device(model)
    found: dict[str, torch.Tensor] = {}

    def read_prefix(module, args, kwargs, output):
        found["prefix"] = read_hooked(args, kwargs, output).detach()

    def read_site(module, args, kwargs, output):
        found["site"] = as_3d(read_hooked(args, kwargs, output)).detach()
        raise StopForward

    def run(inputs: dict[str, torch.Tensor], with_prefix: bool) -> None:
        found.clear()
        with HookSet() as hooks:
            if with_prefix:
                hooks.add(block.module, "input", read_prefix)
            hooks.add(site.module, site.hook, read_site)
            try:
                model(**inputs)
            except StopForward:
                pass
        if "site" not in found:
            raise RuntimeError(f"the forward pass never reached {site.description}")

    rows = _known_rows(batches)
    prefixes, bases, sources = RowBuffer(rows), RowBuffer(rows), RowBuffer(rows)
    index: torch.Tensor | None = None
    for batch in batches:
        for side in ("base", "source"):
            inputs = {k: v.to(device) for k, v in model_inputs(batch, side, is_language_model_task).items()}
            run(inputs, with_prefix=side == "base" and keep_prefix)
            acts = found["site"]  # (batch, seq, w)
            if index is None:
                index = _positions_index(positions, acts.shape[1]).to(acts.device)
            picked = acts[:, index].cpu()  # (batch, P, w)
            if side == "source":
                sources.add(picked)
                continue
            if keep_prefix:
                prefixes.add(found["prefix"].cpu())
            if keep_base:
                bases.add(picked)
    if not sources.filled:
        raise ValueError("collect_layer: the batches were empty")
    return LayerActivations(prefixes.result() if keep_prefix else None, bases.result() if keep_base else None,
                            sources.result())


def _known_rows(batches: Iterable[Batch]) -> int | None:
    """The number of rows an in-order DataLoader will yield, else ``None``."""
    if isinstance(batches, DataLoader) and isinstance(batches.sampler, SequentialSampler):
        return len(batches.dataset)
    return None


class RowBuffer:
    """Batches of rows gathered into one tensor.

    With the number of rows known, the tensor is allocated at the first batch and filled in
    place, so a layer's cache never exists twice (pieces plus their concatenation); otherwise
    the pieces are concatenated at the end.
    """

    def __init__(self, rows: int | None) -> None:
        self.rows = rows
        self.filled = 0
        self.pieces: list[torch.Tensor] = []
        self.out: torch.Tensor | None = None

    def add(self, piece: torch.Tensor) -> None:
        if self.rows is None:
            self.pieces.append(piece)
        else:
            if self.out is None:
                self.out = piece.new_empty((self.rows, *piece.shape[1:]))
            if self.filled + len(piece) > self.rows:
                raise ValueError(f"more than the {self.rows} rows announced")
            self.out[self.filled : self.filled + len(piece)] = piece
        self.filled += len(piece)

    def result(self) -> torch.Tensor:
        if self.rows is None:
            return torch.cat(self.pieces)
        if self.filled != self.rows:
            raise ValueError(f"{self.filled} rows gathered, {self.rows} announced")
        return self.out


class PrefixSkip:
    """Runs the model from block ``layer`` upward on a cached input to that block.

    Inside ``with skip.active(prefix):`` the blocks below ``layer`` pass their input through
    untouched and block ``layer`` reads ``prefix`` instead of what arrives. The model's own
    forward still computes the embeddings, masks and position encodings the upper blocks need
    (a few cheap operations); the blocks below the site, the bulk of the frozen prefix, do not
    run. Blocks return a tensor or a tuple whose first item is the hidden state, depending on
    the transformers release; the skipped blocks mimic what block 0 returned on a probe call.
    """

    def __init__(self, model: nn.Module, layer: int, output_template: str | int) -> None:
        self.blocks = block_modules(model, layer)
        self.layer = layer
        self.template = output_template

    @staticmethod
    def output_template(model: nn.Module, inputs: dict[str, torch.Tensor]) -> str | int | None:
        """What block 0 returns, reduced to its shape: ``"tensor"``, a tuple length, or ``None``
        when a tuple's extras are not all ``None`` (skipping is then not safe)."""
        block = block_modules(model, 0)[0]
        seen: dict[str, Any] = {}

        def look(module, args, kwargs, output):
            seen["output"] = output
            raise StopForward

        with HookSet() as hooks, torch.no_grad():
            hooks.add(block, "output", look)
            try:
                model(**inputs)
            except StopForward:
                pass
        output = seen.get("output")
        if torch.is_tensor(output):
            return "tensor"
        if isinstance(output, tuple) and output and torch.is_tensor(output[0]) and all(o is None for o in output[1:]):
            return len(output)
        return None

    def _passthrough(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if self.template == "tensor":
            return hidden
        return (hidden,) + (None,) * (self.template - 1)

    @contextmanager
    def active(self, prefix: torch.Tensor) -> Iterator[None]:
        def replace_input(module, args, kwargs):
            current = read_hooked(args, kwargs, None)
            if prefix.shape != current.shape:
                raise ValueError(
                    f"cached prefix of shape {tuple(prefix.shape)} does not match the block input "
                    f"{tuple(current.shape)} (was the batch built from the same rows?)"
                )
            return write_hooked(args, kwargs, None, prefix.to(device=current.device, dtype=current.dtype))

        # Registered first, so the cached input is in place before an intervention at
        # block_input of the same block reads it.
        handle = self.blocks[self.layer].register_forward_pre_hook(replace_input, with_kwargs=True, prepend=True)
        # accelerate's dispatch also wraps `forward` as an instance attribute; put back what was there.
        saved = [block.__dict__.get("forward") for block in self.blocks[: self.layer]]
        try:
            for block in self.blocks[: self.layer]:
                block.forward = self._passthrough  # an instance attribute shadows the class's forward
            yield
        finally:
            for block, previous in zip(self.blocks[: self.layer], saved):
                if previous is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = previous
            handle.remove()


__all__ = ["LayerActivations", "PrefixSkip", "batched_sites_supported", "block_modules", "collect_layer"]
