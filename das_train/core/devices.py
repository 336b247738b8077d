"""Where a model computes, including models that accelerate spread over devices or offloaded.

A model loaded with ``device_map`` (or wrapped by ``accelerate.dispatch_model``,
``cpu_offload`` or ``disk_offload``) keeps its offloaded weights on the ``meta`` device and
lets accelerate's ``AlignDevicesHook`` bring them to an execution device for each forward.
Two things that are right for a plain model are then wrong: the first parameter's device
(``meta``) is no place for inputs or interventions, and ``model.to(device)`` either fails
("cannot copy out of meta tensor") or undoes the dispatch. Everything that places inputs,
interventions or the model asks here instead.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn


def _execution_device(hook: Any) -> torch.device | None:
    """The execution device of an accelerate hook (or of the first in a ``SequentialHook``)."""
    if hook is None:
        return None
    for part in getattr(hook, "hooks", None) or (hook,):
        device = getattr(part, "execution_device", None)
        if device is not None:
            return torch.device(device)  # an int means a CUDA index, as accelerate writes it
    return None


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate placed ``model``: a ``hf_device_map``, or its hooks on any module.

    ``cpu_offload`` sets no ``hf_device_map``, so the hooks are looked for too.
    """
    if getattr(model, "hf_device_map", None) is not None:
        return True
    return any(hasattr(module, "_hf_hook") for module in model.modules())


CPU = torch.device("cpu")


def input_device(model: nn.Module, default: torch.device | None = CPU) -> torch.device | None:
    """The device to send ``model``'s inputs to and to keep its interventions on.

    The first module in registration order (for a language model, the embedding) that either
    has an accelerate hook with an execution device or holds a tensor off the ``meta``
    device decides. A model whose tensors are all on ``meta`` with no hook to load them (built
    there on purpose) answers ``meta``; a model with no tensors at all answers ``default``.
    """
    first: torch.device | None = None
    for module in model.modules():
        device = _execution_device(getattr(module, "_hf_hook", None))
        if device is not None:
            return device
        own = itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
        for tensor in own:
            if tensor.device.type != "meta":
                return tensor.device
            first = first or tensor.device
    return first if first is not None else default


__all__ = ["input_device", "is_dispatched"]


def place_model(model: nn.Module, device: torch.device) -> None:
    """Moves ``model`` to ``device`` unless it is there already or accelerate placed it.

    A Lightning module holding a frozen model calls this when a fit or test starts: the first
    site of a sweep moves the model, every later one copies nothing. Only the device changes;
    the model keeps its dtype.
    """
    if is_dispatched(model):
        return
    if any(t.device != device for t in itertools.chain(model.parameters(), model.buffers())):
        model.to(device)
