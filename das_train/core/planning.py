"""Planning one intervention call: everything checked, and decided, before any forward.

A :class:`Plan` says which distinct source inputs are run (the cost rule: equal inputs run
once, however many interventions read them), which intervention reads which run, the source
and base locations with negative indices resolved, the subspaces, the constant sources, and
which interventions are active. Every problem with the call is gathered and raised as one
:class:`~das_train.core.locations.LocationError`, so a bad call costs no forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from das_train.core.hooks import storage_ptrs
from das_train.core.input_checks import InputChecks
from das_train.core.locations import (
    Location,
    LocationError,
    parse_unit_locations,
    resolve_negative,
    split_subspaces,
)
from das_train.core.sites import Site
from das_train.core.wiring import Entry, Wiring

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything one call needs, validated before any forward."""

    source_inputs: list[Any]  # the distinct source inputs, each run once
    source_of: list[int | None]  # per intervention: index into source_inputs
    src_locs: list[Location | None]
    base_locs: list[Location | None]
    subspaces: list[Any]
    constants: list[torch.Tensor | None]
    active: list[bool]
    group_inputs: list[Any] = field(default_factory=list)  # serial mode: input per group
    protected: set[int] = field(default_factory=set)  # storages of the caller's tensors
    # InterventionOutput objects the interventions returned (autoencoder latents), in call order
    intervention_outputs: list[Any] = field(default_factory=list)


def tensors_of(inputs: Any) -> list[torch.Tensor]:
    """The tensors of a model input given as a tensor, a mapping or a sequence."""
    if torch.is_tensor(inputs):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [v for v in inputs.values() if torch.is_tensor(v)]
    if isinstance(inputs, (list, tuple)):
        return [v for v in inputs if torch.is_tensor(v)]
    return []


def shape_of(inputs: Any) -> tuple[int | None, int | None]:
    """(batch, sequence length) of an input, when it can be read off."""
    if isinstance(inputs, Mapping):
        for name in ("input_ids", "attention_mask"):
            t = inputs.get(name)
            if torch.is_tensor(t) and t.dim() >= 2:
                return int(t.shape[0]), int(t.shape[1])
        t = inputs.get("inputs_embeds")
        if torch.is_tensor(t):
            return int(t.shape[0]), int(t.shape[1]) if t.dim() == 3 else 1
        first = next((v for v in inputs.values() if torch.is_tensor(v)), None)
        return (int(first.shape[0]), None) if first is not None and first.dim() else (None, None)
    if torch.is_tensor(inputs) and inputs.dim() >= 1:
        return int(inputs.shape[0]), None
    return None, None


def plan_call(wiring: Wiring, mode: str, base: Any, sources: Any, unit_locations: Any,
              source_representations: Any, subspaces: Any) -> Plan:
    """Checks one call's arguments against ``wiring`` and decides how it runs."""
    errors: list[str] = []
    entries = wiring.entries
    batch, base_len = shape_of(base)
    if batch is None:
        errors.append("cannot read the batch size of `base`: give a dict of tensors or a tensor")
        batch = 1
    group_inputs = _normalize_sources(sources, wiring.n_groups, errors)
    errors += _input_problems(wiring.model, base, group_inputs)
    constants = _constants(entries, source_representations, errors)
    src_locs, base_locs = parse_unit_locations(
        unit_locations, mode, [e.site.unit for e in entries], [e.group for e in entries],
        wiring.n_groups, batch, errors,
    )
    subs = split_subspaces(subspaces, len(entries), batch, errors)
    active, source_inputs, source_of = _source_runs(entries, group_inputs, constants, batch, errors)
    for i, e in enumerate(entries):
        base_loc_len = base_len
        if mode == "serial" and e.group + 1 < wiring.n_groups:
            base_loc_len = shape_of(group_inputs[e.group + 1])[1]
        src_len = shape_of(group_inputs[e.group])[1] if source_of[i] is not None else None
        src_locs[i], base_locs[i] = _resolve_locations(
            e, src_locs[i], base_locs[i], source_of[i] is not None, src_len, base_loc_len, errors
        )
        _check_subspaces(e, subs[i], batch, errors)
    if errors:
        raise LocationError("invalid intervention call:\n  - " + "\n  - ".join(errors))
    protected = storage_ptrs(tensors_of(base))
    for s in group_inputs:
        protected |= storage_ptrs(tensors_of(s))
    return Plan(source_inputs, source_of, src_locs, base_locs, subs, constants, active,
                group_inputs, protected)


def _source_runs(entries: list[Entry], group_inputs: list[Any], constants: list[Any], batch: int,
                 errors: list[str]) -> tuple[list[bool], list[Any], list[int | None]]:
    """Which interventions are active, the distinct source inputs, and which one each reads."""
    active: list[bool] = []
    source_inputs: list[Any] = []
    source_of: list[int | None] = []
    for i, e in enumerate(entries):
        kind = e.intervention.source_kind
        src_input = group_inputs[e.group]
        takes_source = kind in ("interchange", "optional") and constants[i] is None
        if takes_source and src_input is None and kind == "interchange":
            # pyvene's "smart jump": `sources=[s, None]` leaves out the interventions of a
            # group with no source. Kept, but said out loud.
            logger.warning(
                "%s needs a source but none was given (sources entry %d is None and there "
                "is no source_representation): it is skipped in this call", e.key, e.group
            )
            active.append(False)
            source_of.append(None)
            continue
        active.append(True)
        if not (takes_source and src_input is not None):
            source_of.append(None)
            continue
        src_batch, _ = shape_of(src_input)
        if src_batch is not None and src_batch != batch:
            errors.append(f"{e.key}: source batch size {src_batch} differs from the base's {batch}")
        source_of.append(_distinct_index(source_inputs, src_input))
    return active, source_inputs, source_of


def _resolve_locations(e: Entry, src_loc: Location | None, base_loc: Location | None, reads_source: bool,
                       src_len: int | None, base_len: int | None,
                       errors: list[str]) -> tuple[Location | None, Location | None]:
    """Negative indices resolved against the lengths each side reads from; a base-only
    location also picks the source's units."""
    base_loc = resolve_negative(base_loc, _sizes(e.site, base_len), f"{e.key} base location", errors)
    src_loc = resolve_negative(src_loc, _sizes(e.site, src_len), f"{e.key} source location", errors)
    if reads_source and src_loc is None and base_loc is not None:
        src_loc = base_loc  # a base-only key with a source run: same units
    if (
        reads_source
        and src_loc is None
        and base_loc is None
        and e.site.n_heads is None
        and e.site.unit != "t"
        and src_len is not None
        and base_len is not None
        and src_len != base_len
    ):
        errors.append(
            f"{e.key}: source length {src_len} differs from base length {base_len}, so "
            "whole activations cannot be swapped; give unit_locations"
        )
    return src_loc, base_loc


def _normalize_sources(sources: Any, n: int, errors: list[str]) -> list[Any]:
    """One source input (or ``None``) per source group."""
    if sources is None:
        return [None] * n
    if isinstance(sources, (Mapping, torch.Tensor)):
        sources = [sources]
    sources = list(sources)
    if len(sources) == 1 and n > 1:
        return sources * n
    if len(sources) != n:
        errors.append(
            f"got {len(sources)} sources for {n} source groups (one per intervention, "
            "unless group_key groups them); give one per group, None where no source is used"
        )
        return (sources + [None] * n)[:n]
    return sources


def _given_constants(entries: list[Entry], source_representations: Any, errors: list[str]) -> list[Any]:
    """``source_representations`` as one value (or ``None``) per intervention."""
    count = len(entries)
    if source_representations is None:
        return [None] * count
    if torch.is_tensor(source_representations):
        return [source_representations] * count
    keys = [e.key for e in entries]
    if isinstance(source_representations, Mapping):
        unknown = [k for k in source_representations if k not in keys]
        if unknown:
            errors.append(f"source_representations has unknown keys {unknown}; keys: {keys}")
        return [source_representations.get(key) for key in keys]
    given = list(source_representations)
    if len(given) != count:
        errors.append(f"source_representations has {len(given)} entries for {count} interventions")
        given = (given + [None] * count)[:count]
    return given


def _constants(entries: list[Entry], source_representations: Any, errors: list[str]) -> list[torch.Tensor | None]:
    """Per intervention: the constant source given in the call, else configured, else its own."""
    out: list[torch.Tensor | None] = []
    for entry, value in zip(entries, _given_constants(entries, source_representations, errors)):
        if value is None:
            value = entry.representation.source_representation
        if value is None:
            value = getattr(entry.intervention, "source_representation", None)
        if value is not None:
            value = torch.as_tensor(value)
            width = entry.site.width
            if width is not None and value.shape[-1] != width:
                errors.append(
                    f"source representation for {entry.key} has last dim {value.shape[-1]}, "
                    f"the site is {width} wide"
                )
        out.append(value)
    return out


def _input_problems(model: Any, base: Any, group_inputs: list[Any]) -> list[str]:
    """What the model cannot take in the base and each distinct source (see
    :mod:`das_train.core.input_checks`)."""
    checks = InputChecks(model)
    checks.add(base, "base")
    seen = [base]
    for g, source in enumerate(group_inputs):
        if source is not None and not any(source is s for s in seen):
            checks.add(source, f"sources[{g}]")
            seen.append(source)
    return checks.problems()


def _sizes(site: Site, length: int | None) -> dict[str, Any]:
    if site.n_heads is not None and site.unit == "h":
        return {"units": site.n_heads, "unit_name": "heads"}
    if site.unit == "t":
        return {"units": length, "unit_name": "time steps", "heads": None}
    return {"units": length, "unit_name": "positions", "heads": site.n_heads}


def _distinct_index(distinct: list[Any], candidate: Any) -> int:
    """The cost rule: equal source inputs (same object or same tensors) run once."""
    for j, seen in enumerate(distinct):
        if seen is candidate or _same_input(seen, candidate):
            return j
    distinct.append(candidate)
    return len(distinct) - 1


def _same_tensor(x: torch.Tensor, y: torch.Tensor) -> bool:
    return x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and bool(torch.equal(x, y))


def _same_input(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if torch.is_tensor(x) != torch.is_tensor(y):
            return False
        if not (_same_tensor(x, y) if torch.is_tensor(x) else x == y):
            return False
    return True


def _check_subspaces(e: Entry, rows: Any, batch: int, errors: list[str]) -> None:
    if rows is None:
        return
    try:
        dims = e.intervention.subspace_dims(rows, batch)
    except ValueError as err:
        errors.append(f"{e.key} subspaces: {err}")
        return
    size = e.intervention.subspace_size()
    if dims is None or size is None:
        return
    bad = sorted({d for row in dims for d in row if not -size <= d < size})
    if bad:
        errors.append(f"{e.key} subspaces: dimension(s) {bad} out of range; allowed 0..{size - 1}")
