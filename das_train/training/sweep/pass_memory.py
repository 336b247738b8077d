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

import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, read_hooked, write_hooked
from das_train.core.sites import resolve_site
from das_train.data.pair_contract import TaskSpec
from das_train.data.pair_inputs import model_inputs
from das_train.training.schema import SweepConfig
from das_train.training.sweep.cached_pairs import first_rows
from das_train.training.sweep.groups import Job

log = logging.getLogger("das_train")


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


def one_site_costs(sweep: SweepConfig, model: torch.nn.Module, datamodule, spec: TaskSpec,
                   jobs: Sequence[Job]) -> dict[tuple[int, str], int] | None:
    """For ``sites_per_pass=auto``: the autograd bytes of one site's step at each (layer,
    component) of the run; ``None`` when not needed.

    Measured over every site of the run (this shard's, finished ones included, so a resumed
    run chooses as the first did) on the first training batch, the batch size training uses.
    """
    if not sweep.batched or sweep.sites_per_pass != "auto" or not jobs:
        return None
    batch = next(iter(datamodule.ordered_dataloader("train")))
    inputs = model_inputs(batch, "base", spec.is_language_model_task)
    return step_costs(model, [(site.layer, site.component) for site, _ in jobs], inputs)


def sites_per_pass(setting: int | str | None, batch_size: int, model: torch.nn.Module, layer: int, component: str,
                   n_sites: int, costs: dict[tuple[int, str], int] | None, columns: dict[str, torch.Tensor],
                   is_language_model_task: bool) -> int | None:
    """The group's sites per pass: ``setting`` (``sweep.sites_per_pass``), or with ``auto`` as
    many as keep no more than the costliest of ``costs`` (:func:`one_site_costs`; see the
    module docstring). Without ``costs`` for this site, the group's own one-site step is
    measured on a training batch of ``batch_size`` and is the budget (one site per pass)."""
    if setting != "auto":
        return setting
    if costs and (layer, component) in costs:
        one_site, budget = costs[(layer, component)], max(costs.values())
    else:
        rows = first_rows(columns, batch_size)
        one_site = saved_bytes_of_forward(model, layer, component, model_inputs(rows, "base", is_language_model_task))
        budget = one_site
    chosen = sites_per_pass_within(budget, one_site, n_sites)
    log.info("%s-L%d: %d of %d sites per pass (one site's step keeps %.1f MiB for the backward, the budget is "
             "%.1f MiB)", component, layer, chosen, n_sites, one_site / 2**20, budget / 2**20)
    return chosen


__all__ = ["one_site_costs", "saved_bytes_of_forward", "sites_per_pass", "sites_per_pass_within", "step_costs"]
