"""The hooks of one call: getters gather a source run's units, setters patch the base's.

A getter stores the selected units of a source run (per time step for recurrent units) and,
on a run with getters only, stops the forward once the last one fired. A setter gathers the
base's selected units, hands them and their source (a gathered source run, a constant, or the
module's own input) to the intervention, and scatters the result back: in place when that is
safe, out of place otherwise. Both are plain closures, made per call, that
:class:`~das_train.core.hooks.HookSet` registers and removes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from das_train.core import hooks as H
from das_train.core.locations import Location
from das_train.core.planning import Plan, tensors_of
from das_train.core.sites import EAGER_HINT, Site
from das_train.core.wiring import Entry
from das_train.interventions.base import Intervention, LambdaIntervention
from das_train.interventions.calling import InterventionOutput, call_intervention
from das_train.interventions.static import CollectIntervention

Hook = Callable[..., Any]


def make_getter(i: int, entry: Entry, loc: Location | None, store: dict[int, Any],
                pending: set[int] | None) -> Hook:
    """A hook that stores intervention ``i``'s source units in ``store[i]``; ``pending`` (the
    getters not yet fired, or ``None``) lets the last one stop the forward."""
    site, key = entry.site, entry.key
    calls = [0]

    def hook(module, args, kwargs, output):
        x = H.read_hooked(args, kwargs, output)
        if site.unit == "t":
            step = calls[0]
            calls[0] += 1
            # (batch, width) at this time step, the component's columns only
            store.setdefault(i, {})[step] = x if site.columns is None else x[:, site.columns.to(x.device)]
            return None
        x3 = H.as_3d(x)
        H.check_location_in_range(loc, x3, site, f"{key} source")
        store[i] = H.UnitIndex(site, loc, x3).gather(x3)
        if pending is not None:
            pending.discard(i)
            if not pending:
                raise H.StopForward
        return None

    return hook


def make_applier(i: int, entry: Entry, subspaces: Any, collected: dict[int, torch.Tensor],
                 outputs: list[InterventionOutput]) -> Hook:
    """``apply(base_units, source)``: the intervention's new units, or ``None`` for a collect
    intervention (which stores what it saw in ``collected[i]``). An intervention may return an
    :class:`InterventionOutput`: its ``output`` is written back and the whole object is appended
    to ``outputs``, where pyvene keeps it."""
    intervention: Intervention = entry.intervention

    def unwrap(result: torch.Tensor | InterventionOutput) -> torch.Tensor:
        if isinstance(result, InterventionOutput):
            outputs.append(result)
            return result.output
        return result

    def apply(base_units, source, extra=None):
        extra = extra or {}
        if isinstance(intervention, CollectIntervention):
            collected[i] = intervention.collect(base_units, subspaces)
            return None
        weight = next(intervention.parameters(), None)
        home = base_units.device
        if weight is not None and weight.device != home:
            # A model spread over devices (device_map): the units go to the intervention
            # and the result comes back, so one intervention serves any layer's device.
            source = None if not torch.is_tensor(source) else source.to(weight.device)
            extra = {k: v.to(weight.device) for k, v in extra.items()}
            base_units = base_units.to(weight.device)
        new = unwrap(call_intervention(intervention, base_units, source, subspaces, **extra))
        if new is None:
            if isinstance(intervention, LambdaIntervention):
                return None  # a function that only looks (pyvene_101's patcher): output unchanged
            raise ValueError(
                f"{entry.key}: {type(intervention).__name__}.forward returned None; an "
                "intervention returns the new units (only a plain function may return None, "
                "to leave the output unchanged)"
            )
        new = new.to(home)
        if new.shape != base_units.shape:
            raise ValueError(
                f"{entry.key}: {type(intervention).__name__} returned shape {tuple(new.shape)} for "
                f"units of shape {tuple(base_units.shape)}"
            )
        return new

    return apply


def _constant_source(constant: torch.Tensor, base_units: torch.Tensor) -> torch.Tensor:
    c = constant.to(base_units.device, base_units.dtype)
    if c.dim() == 2 and base_units.dim() > 2 and c.shape[0] == base_units.shape[0]:
        # one constant per example: (batch, 1, ..., 1, width)
        c = c.view(c.shape[0], *([1] * (base_units.dim() - 2)), c.shape[-1])
    return c


def _output_item_units(key: str, site: Site, loc: Location | None, output: Any) -> torch.Tensor:
    """The selected units of a read-only output item such as attention probabilities
    ``(batch, heads, query, key)``: the locations pick along dim 1, as pyvene's gather does,
    and the trailing dims are kept."""
    item = site.output_item
    x = output[item] if isinstance(output, (tuple, list)) and len(output) > item else None
    if not torch.is_tensor(x):
        raise RuntimeError(f"{key}: {site.description} returned no tensor as output item {item}; {EAGER_HINT}")
    x3 = x.flatten(2)
    H.check_location_in_range(loc, x3, site, f"{key} base")
    units = H.UnitIndex(site, loc, x3).gather(x3)
    return units.view(*units.shape[:2], *x.shape[2:])


def make_setter(i: int, entry: Entry, plan: Plan, loc: Location | None, src_loc: Location | None,
                store: dict[int, Any], collected: dict[int, torch.Tensor]) -> Hook:
    """A hook that applies intervention ``i`` at ``loc`` of the module it is registered on,
    reading its source from ``store[i]`` (a source run), the plan's constant, or the module's
    input."""
    site = entry.site
    constant = plan.constants[i]
    module_input_kind = entry.intervention.source_kind == "module_input"
    uses_run = plan.source_of[i] is not None
    input_site = replace(site, columns=None, n_heads=None)
    apply = make_applier(i, entry, plan.subspaces[i], collected, plan.intervention_outputs)
    time_step = _time_step_setter(i, entry, loc, src_loc, store, constant, uses_run, apply)

    def input_units(module_input: torch.Tensor) -> torch.Tensor:
        # The module's input may be wider or narrower than its output (LoRA on an MLP).
        inputs3 = H.as_3d(module_input)
        return H.UnitIndex(input_site, loc, inputs3).gather(inputs3)

    def source_for(base_units: torch.Tensor, module_input: torch.Tensor | None) -> Any:
        if module_input_kind:
            return input_units(module_input)
        if constant is not None and not uses_run:
            return _constant_source(constant, base_units)
        return store[i] if uses_run else None

    def hook(module, args, kwargs, output):
        if site.output_item:  # read-only: the wiring allows only collecting here
            apply(_output_item_units(entry.key, site, loc, output), None)
            return None
        x = H.read_hooked(args, kwargs, output)
        module_input = H.read_hooked(args, kwargs, None) if module_input_kind or entry.adaptor else None
        if site.unit == "t":
            return time_step(x, module_input, args, kwargs, output)
        protected = plan.protected
        if output is not None:
            protected = protected | H.storage_ptrs(tensors_of(args))
        x3 = H.as_3d(x)
        H.check_location_in_range(loc, x3, site, f"{entry.key} base")
        index = H.UnitIndex(site, loc, x3)
        base_units = index.gather(x3)
        source = source_for(base_units, module_input)
        new = apply(base_units, source, {"args": input_units(module_input)} if entry.adaptor else None)
        if new is None:
            return None
        if index.whole and torch.is_tensor(source) and (
            not new.is_contiguous() or new.untyped_storage().data_ptr() in H.storage_ptrs([source])
        ):
            new = new.contiguous() if not new.is_contiguous() else new.clone()
        in_place = not index.whole and H.can_write_in_place(x3, protected)
        new_x3 = index.scatter(x3, new, in_place)
        if in_place:
            return None
        return H.write_hooked(args, kwargs, output, H.from_3d(new_x3, x))

    return hook


def _time_step_source(key: str, per_step: dict[int, torch.Tensor], step: int, rows: torch.Tensor,
                      source_steps: torch.Tensor | None) -> torch.Tensor:
    """The source units of the examples ``rows`` at their source time steps (this ``step``
    when the call gave none)."""
    if source_steps is None:
        if step not in per_step:
            raise IndexError(f"{key}: the source has no time step {step}")
        return per_step[step][rows]
    missing = sorted({int(s) for s in source_steps.tolist() if int(s) not in per_step})
    if missing:
        raise IndexError(f"{key}: source time step(s) {missing} out of range")
    return torch.stack([per_step[int(s)][int(r)] for s, r in zip(source_steps, rows)])


def _time_step_setter(i: int, entry: Entry, loc: Location | None, src_loc: Location | None,
                      store: dict[int, Any], constant: torch.Tensor | None, uses_run: bool,
                      apply: Hook) -> Hook:
    """A recurrent cell's calls: each intervenes on the examples whose chosen step it is."""
    calls = [0]

    def time_step(x, module_input, args, kwargs, output):
        step = calls[0]
        calls[0] += 1
        if loc is None:
            rows = torch.arange(x.shape[0], device=x.device)
            source_steps = None
        else:
            hit = loc.units.to(x.device) == step  # (batch, units)
            if not bool(hit.any()):
                return None
            rows, unit_idx = hit.nonzero(as_tuple=True)
            source_steps = src_loc.units.to(x.device)[rows, unit_idx] if src_loc is not None else None
        columns = entry.site.columns
        # a part of a fused projection (a GRU gate's third of x2h): its columns only
        where = (rows,) if columns is None else (rows[:, None], columns.to(x.device)[None, :])
        base_units = x[where]  # (n, width)
        if entry.intervention.source_kind == "module_input":
            source = module_input[rows]
        elif uses_run:
            source = _time_step_source(entry.key, store[i], step, rows, source_steps)
        elif constant is not None:
            source = constant.to(x.device, x.dtype)
        else:
            source = None
        new = apply(base_units, source)
        if new is None:
            return None
        # Never in place: a cell's input may be another cell's recurrent state (a stacked GRU's
        # layer-0 output is both layer 1's input and layer 0's next h_prev).
        return H.write_hooked(args, kwargs, output, x.index_put(where, new.to(x.dtype)))

    return time_step
