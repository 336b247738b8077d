"""Running the frozen model from a layer upward, on a cached input to that layer's block.

A batched fit trains on what :func:`~das_train.training.sweep.site_cache.collect_layer` cached:
each step starts at the site's block (or above it) instead of at the embeddings, so the blocks
below, the bulk of the frozen prefix, never run again while a group trains.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from das_train.core.hooks import StopForward, read_hooked, write_hooked
from das_train.training.sweep.site_cache import block_modules, run_until_read, starts_after_block


class PrefixSkip:
    """Runs the model from block ``layer`` upward on a cached input to that block.

    Inside ``with skip.active(prefix):`` the blocks below ``layer`` pass their input through
    untouched and block ``layer`` reads ``prefix`` instead of what arrives. Where ``component``
    is the block's whole output (:func:`starts_after_block`), ``prefix`` is that output, as
    :func:`collect_layer` keeps it: block ``layer`` is skipped too and its output is ``prefix``.
    The model's own forward still computes the embeddings, masks and position encodings the
    upper blocks need (a few cheap operations); the skipped blocks, the bulk of the frozen
    prefix, do not run. Blocks return a tensor or a tuple whose first item is the hidden state,
    depending on the transformers release; the skipped blocks mimic what block 0 returned on a
    probe call.
    """

    def __init__(self, model: nn.Module, layer: int, component: str, output_template: str | int) -> None:
        self.blocks = block_modules(model, layer)
        self.layer = layer
        self.template = output_template
        self.after_block = starts_after_block(model, layer, component)

    @staticmethod
    def output_template(model: nn.Module, inputs: dict[str, torch.Tensor]) -> str | int | None:
        """What block 0 returns, reduced to its shape: ``"tensor"``, a tuple length, or ``None``
        when a tuple's extras are not all ``None`` (skipping is then not safe)."""
        block = block_modules(model, 0)[0]
        seen: dict[str, Any] = {}

        def look(module, args, kwargs, output):
            seen["output"] = output
            raise StopForward

        with torch.no_grad():
            run_until_read(model, inputs, [(block, "output", look)])
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
        def cached(current: torch.Tensor) -> torch.Tensor:
            # What arrives is the model's input passed through the skipped blocks, a stand-in of
            # the right rows and positions but not necessarily of the block's width (an MLP's
            # first block widens its input): only rows and positions must match.
            if prefix.shape[:-1] != current.shape[:-1]:
                raise ValueError(
                    f"cached prefix of shape {tuple(prefix.shape)} does not match the block's "
                    f"{tuple(current.shape)} in rows and positions (was the batch built from the same rows?)"
                )
            return prefix.to(device=current.device, dtype=current.dtype)

        def replace_input(module, args, kwargs):
            return write_hooked(args, kwargs, None, cached(read_hooked(args, kwargs, None)))

        def replace_output(module, args, kwargs, output):
            return write_hooked(args, kwargs, output, cached(read_hooked(args, kwargs, output)))

        block = self.blocks[self.layer]
        # Registered first, so the cached tensor is in place before an intervention at the same
        # block's input (or output) reads it.
        if self.after_block:
            handle = block.register_forward_hook(replace_output, with_kwargs=True, prepend=True)
        else:
            handle = block.register_forward_pre_hook(replace_input, with_kwargs=True, prepend=True)
        skipped = self.blocks[: self.layer + 1] if self.after_block else self.blocks[: self.layer]
        # accelerate's dispatch also wraps `forward` as an instance attribute; put back what was there.
        saved = [b.__dict__.get("forward") for b in skipped]
        try:
            for b in skipped:
                b.forward = self._passthrough  # an instance attribute shadows the class's forward
            yield
        finally:
            for b, previous in zip(skipped, saved):
                if previous is None:
                    b.__dict__.pop("forward", None)
                else:
                    b.forward = previous
            handle.remove()


__all__ = ["PrefixSkip"]
