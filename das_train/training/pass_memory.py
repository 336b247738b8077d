"""How many of a layer's sites may share a forward pass without holding more than one site does.

A batched pass over ``k`` sites repeats the batch ``k`` times from the site upward, so autograd
keeps ``k`` times the activations one site's step keeps. ``sweep.sites_per_pass=auto`` bounds
that by the per-site path: the budget is the autograd memory of the most expensive one-site
step in the run (usually the embedding row or the lowest layer, whose gradient runs through
every block), and each group takes as many sites per pass as fit in it. The upper layers,
whose gradient runs through few blocks, then train many sites at once, the lowest ones one
at a time, and no pass holds more than the per-site loop's costliest step.

The memory is measured, not modelled: one forward of a real batch with the gradient starting
at the site, counting the distinct storages autograd saves for the backward. That covers any
architecture, dtype and sequence length without a table of per-block costs.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, read_hooked, write_hooked
from das_train.core.sites import resolve_site


def saved_bytes_of_forward(model: nn.Module, layer: int, component: str, inputs: Mapping[str, torch.Tensor]) -> int:
    """Bytes autograd saves for the backward when the gradient starts at (layer, component).

    The site's activation is made a leaf that requires grad, as a trained intervention's output
    would be; the frozen model's weights need none, so everything below the site saves nothing.
    The weights and buffers a backward saves (a linear layer keeps its weight) are left out:
    they are held whether or not a step runs, and a pass of k sites shares them, so counting
    them would charge every site again for the model itself.
    """
    site = resolve_site(model, layer, component, "pos")
    saved: list[weakref.ref] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # A detached alias: the same storage without the grad_fn, so the graph holding it makes
        # no reference cycle (one would keep the whole graph alive until a cyclic collection).
        alias = tensor.detach()
        saved.append(weakref.ref(alias))
        return alias

    def start_gradient(module, args, kwargs, output):
        value = read_hooked(args, kwargs, output)
        return write_hooked(args, kwargs, output, value.detach().requires_grad_(True))

    device = input_device(model)
    # Frozen, as while interventions train (a model fresh from loading still wants gradients).
    wanting = [p for p in model.parameters() if p.requires_grad]
    try:
        for parameter in wanting:
            parameter.requires_grad_(False)
        with HookSet() as hooks, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            hooks.add(site.module, site.hook, start_gradient)
            outputs = model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        for parameter in wanting:
            parameter.requires_grad_(True)
    # What the graph still holds with the outputs alive (a branch the forward dropped freed its
    # saved tensors, as in a real step), each storage once (views share one).
    resident = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {}
    for ref in saved:
        tensor = ref()
        if tensor is not None:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in resident:
                storages[storage.data_ptr()] = storage.nbytes()
    del outputs
    return sum(storages.values())


def step_costs(model: nn.Module, sites: Iterable[tuple[int, str]],
               inputs: Mapping[str, torch.Tensor]) -> dict[tuple[int, str], int]:
    """The autograd bytes of one site's step at each distinct (layer, component) of ``sites``;
    the largest is the budget of ``auto``."""
    return {(layer, component): saved_bytes_of_forward(model, layer, component, inputs)
            for layer, component in dict.fromkeys(sites)}


def sites_per_pass_within(budget: int, one_site_bytes: int, n_sites: int) -> int:
    """How many sites (at least 1, at most ``n_sites``) fit in ``budget`` bytes of activations."""
    if one_site_bytes <= 0:
        return n_sites
    return max(1, min(n_sites, budget // one_site_bytes))


__all__ = ["saved_bytes_of_forward", "sites_per_pass_within", "step_costs"]
