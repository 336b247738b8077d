"""The random-init control: the frozen model's weights drawn anew, as its architecture draws them.

DAS can reach a high IIA on a network that has learned nothing (a rotation of random features
can still carry the base's answer), so a localization is only believed when the trained model's
IIA stands out from that of the same architecture with fresh weights (``model.random_init``).
The weights are drawn by the architecture's own initialisation, not by one generic scheme, so
the control is the network the model started from before training, up to the seed:

- a Hugging Face ``PreTrainedModel``: its ``init_weights`` (each module's ``_init_weights``,
  composite sub-models dispatched to their own, tied weights tied again);
- any other ``nn.Module`` (the built-in MLP): each module's ``reset_parameters``.

The draw is seeded inside a forked RNG, so it is the same for a seed and leaves the caller's
random streams as they were. Shapes, dtype and devices are untouched (the tensors are written
in place); a model with a parameter the scheme does not redraw is refused, naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel

log = logging.getLogger("das_train")

HF_INIT_FLAG = "_is_hf_initialized"
"""transformers' mark on a module or tensor it has initialised or loaded; its init functions skip
marked tensors, so the marks are removed before drawing anew."""


class ReinitError(ValueError):
    """The model has weights its initialisation scheme would leave as they are."""


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Redraws every weight of ``model`` in place with its architecture's initialisation, seeded
    by ``seed``; returns the model. Raises :class:`ReinitError` naming each parameter that was
    not redrawn (a module with parameters and no ``reset_parameters``, or a custom parameter an
    ``_init_weights`` leaves alone)."""
    if not isinstance(model, PreTrainedModel):
        refuse_unresettable(model)
    before = {name: _checksum(p) for name, p in model.named_parameters()}
    with torch.random.fork_rng(devices=_cuda_devices(model)), torch.no_grad():
        torch.manual_seed(seed)
        if isinstance(model, PreTrainedModel):
            _clear_init_marks(model)
            model.init_weights()
        else:
            for module in model.modules():
                if _own_parameters(module):
                    module.reset_parameters()
    kept = [name for name, p in model.named_parameters() if _checksum(p) == before[name] and not _constant(p)]
    if kept:
        raise ReinitError(f"{type(model).__name__}: its initialisation left {kept} as they were, so the "
                          "random-init control would still hold trained weights; model.random_init needs a "
                          "model whose every weight its initialisation draws")
    log.info("model.random_init: re-initialised every weight of %s (%d tensors) with seed %d",
             type(model).__name__, len(before), seed)
    return model


def refuse_unresettable(model: nn.Module) -> None:
    """Raises :class:`ReinitError` naming each module of a plain torch model that holds
    parameters of its own but has no ``reset_parameters`` to draw them."""
    bad = [f"{name or '<root>'} ({type(module).__name__})" for name, module in model.named_modules()
           if _own_parameters(module) and not callable(getattr(module, "reset_parameters", None))]
    if bad:
        raise ReinitError(f"cannot re-initialise {type(model).__name__}: these modules hold parameters and have "
                          f"no reset_parameters: {bad}. model.random_init works with Hugging Face models "
                          "(their _init_weights) and torch models whose parameter-holding modules have "
                          "reset_parameters")


def _own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _clear_init_marks(model: nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop(HF_INIT_FLAG, None)
    for tensor in _tensors(model):
        if hasattr(tensor, HF_INIT_FLAG):
            delattr(tensor, HF_INIT_FLAG)


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from (buffer for buffer in model.buffers() if buffer is not None)


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def _checksum(tensor: torch.Tensor) -> tuple[float, float]:
    """Sum and sum of squares in float64: a redrawn tensor of more than a few values differs in
    both with certainty, and nothing as large as the tensor is copied."""
    values = tensor.detach().double()
    return values.sum().item(), values.square().sum().item()


def _constant(tensor: torch.Tensor) -> bool:
    """A tensor of one value (a norm's ones, a bias's zeros): its initialisation may equal what
    it held, so an unchanged one is no sign of a weight left out."""
    return tensor.numel() == 0 or bool((tensor == tensor.reshape(-1)[0]).all())


__all__ = ["ReinitError", "reinitialize", "refuse_unresettable"]
