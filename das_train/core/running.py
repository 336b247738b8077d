"""Running a planned call: the source runs, then the hooks that patch the base.

Shared by ``IntervenableModel.forward`` and generation, so both follow one cost rule: in
parallel mode each distinct source input is run once with getters only (stopped after the
last getter); in serial mode source ``g`` is run with the interventions of group ``g - 1``
applied, and the last group patches the base.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from das_train.core import hooks as H
from das_train.core.locations import LocationError
from das_train.core.patching import make_getter, make_setter
from das_train.core.planning import Plan
from das_train.core.wiring import Wiring


def call_model(model: nn.Module, inputs: Any, extra: dict[str, Any]) -> Any:
    """``model`` called on an input given as a mapping, a sequence or one tensor."""
    if isinstance(inputs, Mapping):
        return model(**inputs, **extra)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs, **extra)
    return model(inputs, **extra)


def _recording(fired: set[int], i: int, hook: Any) -> Any:
    def recorded(module, args, kwargs, output):
        fired.add(i)
        return hook(module, args, kwargs, output)

    return recorded


def check_all_fired(wiring: Wiring, expected: list[int], fired: set[int]) -> None:
    """Raises when a hooked module was never called during a completed forward: its
    intervention would otherwise be skipped in silence (e.g. ``attn.attn_dropout``, which
    transformers 5 applies as a function, never calling the module)."""
    missing = [wiring.entries[i] for i in expected if i not in fired]
    if missing:
        sites = "; ".join(f"{e.key} at {e.site.description or type(e.site.module).__name__}" for e in missing)
        raise RuntimeError(
            f"the hooked module was never called during the forward, so nothing was collected or "
            f"patched there: {sites}. Choose a module the forward calls (a component name such as "
            f"'attention_weight' for attention probabilities)"
        )


def run_hooks(wiring: Wiring, inputs: Any, setters: list[int], getters: list[int], plan: Plan,
              store_in: dict[int, Any], collected: dict[int, torch.Tensor],
              extra: dict[str, Any]) -> tuple[Any, dict[int, Any]]:
    """One forward with setter hooks (reading ``store_in``) and getter hooks.

    A run with getters only stops right after the last getter fires: the rest of the
    forward cannot change what was gathered. Returns (model outputs or None, gathered).
    """
    entries = wiring.entries
    store_out: dict[int, Any] = {}
    stoppable = not setters and all(entries[i].site.unit != "t" for i in getters)
    pending = set(getters) if getters and stoppable else None
    fired: set[int] = set()
    with H.HookSet() as hooks:
        for i in setters:
            site = entries[i].site
            hooks.add(site.module, site.hook, _recording(fired, i, make_setter(
                i, entries[i], plan, plan.base_locs[i], plan.src_locs[i], store_in, collected)))
        for i in getters:
            site = entries[i].site
            hooks.add(site.module, site.hook,
                      _recording(fired, i, make_getter(i, entries[i], plan.src_locs[i], store_out, pending)))
        try:
            outputs = call_model(wiring.model, inputs, extra)
        except H.StopForward:
            return None, store_out
    check_all_fired(wiring, setters + getters, fired)
    return outputs, store_out


def gather_sources(wiring: Wiring, mode: str, plan: Plan, collected: dict[int, torch.Tensor],
                   extra: dict[str, Any]) -> tuple[dict[int, Any], list[int]]:
    """The sources' gathered units, and the interventions that then patch the base (all
    active ones in parallel mode; the last group's in serial mode)."""
    active = [i for i, a in enumerate(plan.active) if a]
    store: dict[int, Any] = {}
    if mode == "parallel":
        for j, source_input in enumerate(plan.source_inputs):
            readers = [i for i, s in enumerate(plan.source_of) if s == j]
            store.update(run_hooks(wiring, source_input, [], readers, plan, {}, collected, extra)[1])
        return store, active
    by_group: list[list[int]] = [[] for _ in range(wiring.n_groups)]
    for i in active:
        by_group[wiring.entries[i].group].append(i)
    previous: list[int] = []
    for g in range(wiring.n_groups):
        source_input = plan.group_inputs[g]
        if source_input is None:
            if previous:
                raise LocationError(f"serial mode: sources[{g}] is None but group {g - 1} writes into it")
            previous = by_group[g]
            continue
        readers = [i for i in by_group[g] if plan.source_of[i] is not None]
        store.update(run_hooks(wiring, source_input, previous, readers, plan, store, collected, extra)[1])
        previous = by_group[g]
    return store, previous
