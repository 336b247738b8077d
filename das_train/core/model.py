"""``IntervenableModel``: runs a wrapped model with interventions at configured sites.

One call is: validate everything (locations, subspaces, sources, constants) and report every
problem at once before any forward; run each *distinct* source input once with getter hooks
that gather only the selected units (and stop the forward as soon as the last one fired); run
the base once with setter hooks that hand those units to the interventions and scatter the
results back. Interventions that share a source input share its forward, however many sites
they touch. In serial mode, source ``g`` is run with the interventions of group ``g - 1``
applied, and the last group patches the base.

The wrapped model is held but not registered as a submodule, so ``state_dict()`` holds only
the interventions; ``train()``/``eval()`` still reach the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from das_train.core import hooks as H
from das_train.core.config import IntervenableConfig, RepresentationConfig, as_config
from das_train.core.devices import input_device, is_dispatched
from das_train.core.input_checks import InputChecks
from das_train.core.locations import (
    Location,
    LocationError,
    parse_unit_locations,
    resolve_negative,
    split_subspaces,
)
from das_train.core.pyvene_methods import PyveneTrainingMethods
from das_train.core.sites import (
    HEAD_COMPONENTS,
    Site,
    is_module_path,
    resolve_site,
    table_for,
)
from das_train.interventions.base import Intervention, LambdaIntervention, build_intervention
from das_train.interventions.static import CollectIntervention

logger = logging.getLogger(__name__)


def representation_key(rep: RepresentationConfig, seen: dict[str, int]) -> str:
    """pyvene's key format, so keys of saved pyvene artifacts match ours."""
    unit = rep.unit.replace(".", "_")
    if is_module_path(rep.component):
        stem = f"comp_{rep.component.replace('.', '_')}_unit_{unit}_nunit_{rep.max_number_of_units}"
    else:
        stem = f"layer_{rep.layer}_comp_{rep.component}_unit_{unit}_nunit_{rep.max_number_of_units}"
    index = seen.get(stem, -1) + 1
    seen[stem] = index
    return f"{stem}#{index}"


class InterventionDict(nn.ModuleDict):
    """The interventions by key; also found by ``"layer.6.block_output"`` when unambiguous."""

    def __getitem__(self, key: str) -> Intervention:
        if key in self._modules:
            return self._modules[key]
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "layer" and parts[1].isdigit():
            stem = f"layer_{parts[1]}_comp_{'.'.join(parts[2:])}_"
            hits = [k for k in self._modules if k.startswith(stem)]
            if len(hits) == 1:
                return self._modules[hits[0]]
            if hits:
                raise KeyError(f"{key!r} matches several interventions: {hits}; use a full key")
        raise KeyError(f"no intervention {key!r}; keys: {list(self._modules)}")


@dataclass
class _Entry:
    """One configured intervention and its resolved site."""

    key: str
    representation: RepresentationConfig
    site: Site
    intervention: Intervention
    group: int  # index of its source group


@dataclass
class _Plan:
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


@dataclass
class IntervenableOutput:
    """Returned by ``forward(..., return_dict=True)``."""

    original_outputs: Any
    intervened_outputs: Any
    collected_activations: list[torch.Tensor] | None


class IntervenableModel(PyveneTrainingMethods, nn.Module):
    """Wraps ``model`` with the interventions described by ``config``.

    Args:
        config: an :class:`IntervenableConfig`, a dict, a list of dicts or a
            :class:`RepresentationConfig`.
        model: any ``nn.Module``; Hugging Face models of a known family get named
            components, any module gets module-path components.
        use_fast: pyvene's switch to assume every example of a batch shares one location.
            Accepted and ignored: per-example locations here already take one vectorized
            gather, so there is nothing to speed up and no shortcut that could go wrong.
    """

    def __init__(self, config: Any, model: nn.Module, use_fast: bool = False) -> None:
        super().__init__()
        self.config: IntervenableConfig = as_config(config)
        self.mode = self.config.mode
        object.__setattr__(self, "model", model)  # not a submodule: keeps state_dict small
        self.interventions = InterventionDict()
        self._entries: list[_Entry] = []
        self._build()
        self._freeze_model()
        device = self._model_device()
        if device is not None:
            self.interventions.to(device)

    # -- construction -------------------------------------------------------------------------
    def _build(self) -> None:
        errors: list[str] = []
        seen: dict[str, int] = {}
        linked: dict[Any, Intervention] = {}
        group_ids: list[Any] = []
        reps = self.config.representations
        any_group = any(r.group_key is not None for r in reps)
        if any_group and any(r.group_key is None for r in reps):
            errors.append("group_key is set on some representations but not all; set it on every one")
        for i, rep in enumerate(reps):
            key = representation_key(rep, seen)
            try:
                site = self._resolve(rep)
            except (LookupError, ValueError) as err:
                errors.append(f"representations[{i}] ({key}): {err}")
                continue
            intervention = self._make_intervention(i, rep, site, errors)
            if intervention is None:
                continue
            if rep.intervention_link_key is not None:
                intervention = linked.setdefault(rep.intervention_link_key, intervention)
            group = rep.group_key if any_group else i
            if group not in group_ids:
                group_ids.append(group)
            self._entries.append(_Entry(key, rep, site, intervention, group_ids.index(group)))
            self.interventions[key] = intervention
        if any_group and group_ids != sorted(group_ids, key=lambda g: (g is None, g)):
            errors.append(f"group keys must appear in ascending order, got {group_ids}")
        if errors:
            raise ValueError("invalid intervenable config:\n  - " + "\n  - ".join(errors))
        self._n_groups = len(group_ids)
        self.config.sorted_keys = [e.key for e in self._entries]

    def _resolve(self, rep: RepresentationConfig) -> Site:
        unit = rep.unit
        if unit not in ("pos", "h", "h.pos", "t"):
            raise ValueError(f"unit {unit!r} is not allowed; allowed: pos, h, h.pos, t")
        site = resolve_site(self.model, int(rep.layer), rep.component, unit)
        if is_module_path(rep.component):
            if unit in ("h", "h.pos"):
                raise ValueError(f"unit {unit!r} needs a head component ({list(HEAD_COMPONENTS)})")
            site.recurrent = unit == "t"
            return site
        if rep.component in HEAD_COMPONENTS and unit not in ("h", "h.pos"):
            raise ValueError(f"component {rep.component!r} splits into heads: unit must be 'h' or 'h.pos', not {unit!r}")
        if rep.component not in HEAD_COMPONENTS and unit in ("h", "h.pos"):
            raise ValueError(f"unit {unit!r} needs a head component ({list(HEAD_COMPONENTS)}), not {rep.component!r}")
        if unit == "t" and not site.recurrent:
            raise ValueError(f"unit 't' needs a component of a recurrent model (called once per time step), "
                             f"not {rep.component!r}")
        if site.recurrent and unit != "t":
            raise ValueError(f"component {rep.component!r} is indexed by time: unit must be 't'")
        return site

    def _make_intervention(
        self, index: int, rep: RepresentationConfig, site: Site, errors: list[str]
    ) -> Intervention | None:
        if rep.intervention is not None:
            made = rep.intervention
            if not isinstance(made, nn.Module) and callable(made):
                made = LambdaIntervention(made)
        else:
            cls = self.config.intervention_type_for(index)
            if not isinstance(cls, type):
                made = LambdaIntervention(cls)
            else:
                available = {
                    "embed_dim": site.width,
                    "input_dim": site.input_width,
                    "low_rank_dimension": rep.low_rank_dimension,
                    "subspace_partition": rep.subspace_partition,
                    "latent_dim": rep.latent_dim,
                    "source_representation": rep.source_representation,
                    "max_number_of_units": rep.max_number_of_units,
                }
                try:
                    made = build_intervention(cls, available)
                except (TypeError, ValueError) as err:
                    errors.append(f"representations[{index}]: cannot build {cls.__name__}: {err}")
                    return None
        if not isinstance(made, Intervention):
            errors.append(
                f"representations[{index}]: intervention must be an Intervention, got {type(made).__name__}"
            )
            return None
        if made.embed_dim is None:
            made.embed_dim = site.width
        elif site.width is not None and made.embed_dim != site.width and made.source_kind != "module_input":
            errors.append(
                f"representations[{index}]: intervention embed_dim={made.embed_dim} but the site "
                f"{rep.component!r} is {site.width} wide"
            )
        if made.subspace_partition is None and rep.subspace_partition is not None:
            made.subspace_partition = [list(p) for p in rep.subspace_partition]
        return made

    # -- model state ----------------------------------------------------------------------------
    def _model_device(self) -> torch.device | None:
        # Not simply the first parameter's: accelerate leaves offloaded weights on `meta`.
        return input_device(self.model, default=None)

    def get_device(self) -> torch.device:
        """Where the model takes its inputs (for a model spread by accelerate, the embedding's
        execution device)."""
        return self._model_device() or torch.device("cpu")

    def set_device(self, device: Any, set_model: bool = True) -> IntervenableModel:
        """Moves the interventions (and the model, unless ``set_model=False``).

        A model placed by accelerate (``device_map``, ``cpu_offload``) stays where it is:
        moving it would fail on offloaded weights or undo the dispatch; the hooks carry units
        between its devices and the interventions'.
        """
        self.interventions.to(device)
        if set_model and not is_dispatched(self.model):
            self.model.to(device)
        return self

    def disable_model_gradients(self) -> None:
        """Freezes the wrapped model and puts it back in eval mode, undoing
        :meth:`enable_model_gradients` (pyvene 0.1.8 does the same). Construction freezes the
        model too, but leaves its train/eval mode as the caller set it."""
        self.model.eval()
        self._freeze_model()

    def _freeze_model(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)

    def enable_model_gradients(self) -> None:
        """Unfreezes the wrapped model and puts it in train mode, for interchange intervention
        training (IIT).

        Train mode turns the model's dropout on, as pyvene 0.1.8 does here (it calls
        ``model.train()``), so an IIT loop written for pyvene trains the same way. Call
        ``eval()`` afterwards for a deterministic forward with gradients.
        """
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)

    def disable_intervention_gradients(self) -> None:
        for p in self.interventions.parameters():
            p.requires_grad_(False)

    def get_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the trainable interventions (shared ones once), plus the model's
        parameters when its gradients are enabled. Buffers (temperatures, constants) never."""
        seen: set[int] = set()
        params: list[nn.Parameter] = []
        for entry in self._entries:
            if not entry.intervention.trainable:
                continue
            for p in entry.intervention.parameters():
                if id(p) not in seen and p.requires_grad:
                    seen.add(id(p))
                    params.append(p)
        params.extend(p for p in self.model.parameters() if p.requires_grad and id(p) not in seen)
        return params

    def count_parameters(self, include_model: bool = False) -> int:
        seen: set[int] = set()
        total = 0
        for p in self.interventions.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        if include_model:
            total += sum(p.numel() for p in self.model.parameters())
        return total

    def train(self, mode: bool = True) -> IntervenableModel:
        super().train(mode)
        self.model.train(mode)
        return self

    def eval(self) -> IntervenableModel:
        return self.train(False)

    @property
    def representations(self) -> dict[str, RepresentationConfig]:
        return {e.key: e.representation for e in self._entries}

    @property
    def sorted_keys(self) -> list[str]:
        return [e.key for e in self._entries]

    def __repr__(self) -> str:
        table = table_for(self.model)
        lines = [
            f"IntervenableModel(model={type(self.model).__name__}"
            f"{f' [{table.name}]' if table else ''}, mode={self.mode!r}, "
            f"trainable parameters={self.count_parameters()}"
        ]
        for e in self._entries:
            lines.append(f"  {e.key} (group {e.group}): {e.intervention!r}")
        return "\n".join(lines) + "\n)"

    # -- validation ---------------------------------------------------------------------------
    @staticmethod
    def _tensors_of(inputs: Any) -> list[torch.Tensor]:
        if torch.is_tensor(inputs):
            return [inputs]
        if isinstance(inputs, Mapping):
            return [v for v in inputs.values() if torch.is_tensor(v)]
        if isinstance(inputs, (list, tuple)):
            return [v for v in inputs if torch.is_tensor(v)]
        return []

    @staticmethod
    def _shape_of(inputs: Any) -> tuple[int | None, int | None]:
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

    def _normalize_sources(self, sources: Any, errors: list[str]) -> list[Any]:
        n = self._n_groups
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

    def _constants(self, source_representations: Any, errors: list[str]) -> list[torch.Tensor | None]:
        count = len(self._entries)
        given: list[Any]
        if source_representations is None:
            given = [None] * count
        elif torch.is_tensor(source_representations):
            given = [source_representations] * count
        elif isinstance(source_representations, Mapping):
            unknown = [k for k in source_representations if k not in self.interventions._modules]
            if unknown:
                errors.append(f"source_representations has unknown keys {unknown}; keys: {self.sorted_keys}")
            given = [source_representations.get(e.key) for e in self._entries]
        else:
            given = list(source_representations)
            if len(given) != count:
                errors.append(
                    f"source_representations has {len(given)} entries for {count} interventions"
                )
                given = (given + [None] * count)[:count]
        out: list[torch.Tensor | None] = []
        for entry, value in zip(self._entries, given):
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

    def _plan(self, base, sources, unit_locations, source_representations, subspaces) -> _Plan:
        errors: list[str] = []
        entries = self._entries
        batch, base_len = self._shape_of(base)
        if batch is None:
            errors.append("cannot read the batch size of `base`: give a dict of tensors or a tensor")
            batch = 1
        group_inputs = self._normalize_sources(sources, errors)
        errors += self._input_problems(base, group_inputs)
        constants = self._constants(source_representations, errors)
        units = [e.site.unit for e in entries]
        groups = [e.group for e in entries]
        src_locs, base_locs = parse_unit_locations(
            unit_locations, self.mode, units, groups, self._n_groups, batch, errors
        )
        subs = split_subspaces(subspaces, len(entries), batch, errors)

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
            needs_run = takes_source and src_input is not None
            active.append(True)
            if not needs_run:
                source_of.append(None)
                continue
            src_batch, _ = self._shape_of(src_input)
            if src_batch is not None and src_batch != batch:
                errors.append(f"{e.key}: source batch size {src_batch} differs from the base's {batch}")
            source_of.append(self._distinct_index(source_inputs, src_input))

        # Range checks need the lengths of the inputs each side reads from.
        for i, e in enumerate(entries):
            base_loc_len = base_len
            if self.mode == "serial" and e.group + 1 < self._n_groups:
                base_loc_len = self._shape_of(group_inputs[e.group + 1])[1]
            src_len = self._shape_of(group_inputs[e.group])[1] if source_of[i] is not None else None
            sizes_base = self._sizes(e.site, base_loc_len)
            sizes_src = self._sizes(e.site, src_len)
            base_locs[i] = resolve_negative(base_locs[i], sizes_base, f"{e.key} base location", errors)
            src_locs[i] = resolve_negative(src_locs[i], sizes_src, f"{e.key} source location", errors)
            if source_of[i] is not None and src_locs[i] is None and base_locs[i] is not None:
                src_locs[i] = base_locs[i]  # a base-only key with a source run: same units
            if (
                source_of[i] is not None
                and src_locs[i] is None
                and base_locs[i] is None
                and e.site.n_heads is None
                and e.site.unit != "t"
                and src_len is not None
                and base_loc_len is not None
                and src_len != base_loc_len
            ):
                errors.append(
                    f"{e.key}: source length {src_len} differs from base length {base_loc_len}, so "
                    "whole activations cannot be swapped; give unit_locations"
                )
            self._check_subspaces(i, e, subs[i], batch, errors)
        if errors:
            raise LocationError("invalid intervention call:\n  - " + "\n  - ".join(errors))
        protected = H.storage_ptrs(self._tensors_of(base))
        for s in group_inputs:
            protected |= H.storage_ptrs(self._tensors_of(s))
        return _Plan(
            source_inputs=source_inputs,
            source_of=source_of,
            src_locs=src_locs,
            base_locs=base_locs,
            subspaces=subs,
            constants=constants,
            active=active,
            group_inputs=group_inputs,
            protected=protected,
        )

    def _input_problems(self, base: Any, group_inputs: list[Any]) -> list[str]:
        """What the model cannot take in the base and each distinct source (see
        :mod:`das_train.core.input_checks`)."""
        checks = InputChecks(self.model)
        checks.add(base, "base")
        seen = [base]
        for g, source in enumerate(group_inputs):
            if source is not None and not any(source is s for s in seen):
                checks.add(source, f"sources[{g}]")
                seen.append(source)
        return checks.problems()

    @staticmethod
    def _sizes(site: Site, length: int | None) -> dict[str, Any]:
        if site.n_heads is not None and site.unit == "h":
            return {"units": site.n_heads, "unit_name": "heads"}
        if site.unit == "t":
            return {"units": length, "unit_name": "time steps", "heads": None}
        return {"units": length, "unit_name": "positions", "heads": site.n_heads}

    def _distinct_index(self, distinct: list[Any], candidate: Any) -> int:
        """The cost rule: equal source inputs (same object or same tensors) run once."""
        for j, seen in enumerate(distinct):
            if seen is candidate or self._same_input(seen, candidate):
                return j
        distinct.append(candidate)
        return len(distinct) - 1

    @staticmethod
    def _same_input(a: Any, b: Any) -> bool:
        if torch.is_tensor(a) and torch.is_tensor(b):
            return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            if set(a) != set(b):
                return False
            for k in a:
                x, y = a[k], b[k]
                if torch.is_tensor(x) != torch.is_tensor(y):
                    return False
                if torch.is_tensor(x):
                    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or not torch.equal(x, y):
                        return False
                elif x != y:
                    return False
            return True
        return False

    def _check_subspaces(self, i: int, e: _Entry, rows: Any, batch: int, errors: list[str]) -> None:
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

    # -- running --------------------------------------------------------------------------------
    def _call_model(self, inputs: Any, extra: dict[str, Any]) -> Any:
        if isinstance(inputs, Mapping):
            return self.model(**inputs, **extra)
        if isinstance(inputs, (list, tuple)):
            return self.model(*inputs, **extra)
        return self.model(inputs, **extra)

    def _getter(self, i: int, loc: Location | None, store: dict[int, Any], pending: set[int] | None):
        site = self._entries[i].site
        key = self._entries[i].key
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

    def _setter(self, i: int, plan: _Plan, loc: Location | None, src_loc: Location | None,
                store: dict[int, Any], collected: dict[int, torch.Tensor]):
        entry = self._entries[i]
        site, intervention, key = entry.site, entry.intervention, entry.key
        subspaces = plan.subspaces[i]
        constant = plan.constants[i]
        kind = intervention.source_kind
        uses_run = plan.source_of[i] is not None
        input_site = replace(site, columns=None, n_heads=None)
        calls = [0]

        def source_for(base_units: torch.Tensor, module_input: torch.Tensor | None, index) -> Any:
            if kind == "module_input":
                # The module's input may be wider or narrower than its output (LoRA on an MLP).
                inputs3 = H.as_3d(module_input)
                return H.UnitIndex(input_site, loc, inputs3).gather(inputs3)
            if constant is not None and not uses_run:
                c = constant.to(base_units.device, base_units.dtype)
                if c.dim() == 2 and base_units.dim() > 2 and c.shape[0] == base_units.shape[0]:
                    # one constant per example: (batch, 1, ..., 1, width)
                    c = c.view(c.shape[0], *([1] * (base_units.dim() - 2)), c.shape[-1])
                return c
            if uses_run:
                return store[i]
            return None

        def apply(base_units, source):
            if isinstance(intervention, CollectIntervention):
                collected[i] = intervention.collect(base_units, subspaces)
                return None
            weight = next(intervention.parameters(), None)
            if weight is not None and weight.device != base_units.device:
                # A model spread over devices (device_map): the units go to the intervention
                # and the result comes back, so one intervention serves any layer's device.
                home = base_units.device
                moved = None if not torch.is_tensor(source) else source.to(weight.device)
                return intervention(base_units.to(weight.device), moved, subspaces).to(home)
            new = intervention(base_units, source, subspaces)
            if new.shape != base_units.shape:
                raise ValueError(
                    f"{key}: {type(intervention).__name__} returned shape {tuple(new.shape)} for "
                    f"units of shape {tuple(base_units.shape)}"
                )
            return new

        def hook(module, args, kwargs, output):
            x = H.read_hooked(args, kwargs, output)
            module_input = H.read_hooked(args, kwargs, None) if kind == "module_input" else None
            protected = plan.protected
            if output is not None:
                protected = protected | H.storage_ptrs(self._tensors_of(args))
            if site.unit == "t":
                return self._set_time_step(i, x, calls, loc, src_loc, store, module_input,
                                           args, kwargs, output, apply, constant, uses_run)
            x3 = H.as_3d(x)
            H.check_location_in_range(loc, x3, site, f"{key} base")
            index = H.UnitIndex(site, loc, x3)
            base_units = index.gather(x3)
            source = source_for(base_units, module_input, index)
            new = apply(base_units, source)
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

    def _set_time_step(self, i, x, calls, loc, src_loc, store, module_input, args, kwargs,
                       output, apply, constant, uses_run):
        """A recurrent cell's call: intervene on the examples whose chosen step this is."""
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
        columns = self._entries[i].site.columns
        # a part of a fused projection (a GRU gate's third of x2h): its columns only
        where = (rows,) if columns is None else (rows[:, None], columns.to(x.device)[None, :])
        base_units = x[where]  # (n, width)
        if self._entries[i].intervention.source_kind == "module_input":
            source = module_input[rows]
        elif uses_run:
            per_step = store[i]
            if source_steps is None:
                if step not in per_step:
                    raise IndexError(f"{self._entries[i].key}: the source has no time step {step}")
                source = per_step[step][rows]
            else:
                missing = sorted({int(s) for s in source_steps.tolist() if int(s) not in per_step})
                if missing:
                    raise IndexError(f"{self._entries[i].key}: source time step(s) {missing} out of range")
                source = torch.stack([per_step[int(s)][int(r)] for s, r in zip(source_steps, rows)])
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

    def _run_hooks(
        self,
        inputs: Any,
        setters: list[int],
        getters: list[int],
        plan: _Plan,
        store_in: dict[int, Any],
        collected: dict[int, torch.Tensor],
        extra: dict[str, Any],
    ) -> tuple[Any, dict[int, Any]]:
        """One forward with setter hooks (reading ``store_in``) and getter hooks.

        A run with getters only stops right after the last getter fires: the rest of the
        forward cannot change what was gathered. Returns (model outputs or None, gathered).
        """
        store_out: dict[int, Any] = {}
        stoppable = not setters and all(self._entries[i].site.unit != "t" for i in getters)
        pending = set(getters) if getters and stoppable else None
        with H.HookSet() as hooks:
            for i in setters:
                site = self._entries[i].site
                hooks.add(site.module, site.hook, self._setter(
                    i, plan, plan.base_locs[i], plan.src_locs[i], store_in, collected))
            for i in getters:
                site = self._entries[i].site
                hooks.add(site.module, site.hook, self._getter(i, plan.src_locs[i], store_out, pending))
            try:
                return self._call_model(inputs, extra), store_out
            except H.StopForward:
                return None, store_out

    def forward(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: dict[str, Any] | None = None,
        source_representations: Any = None,
        subspaces: Any = None,
        labels: torch.Tensor | None = None,
        output_original_output: bool = False,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | None = None,
    ):
        """Runs the base with every configured intervention applied.

        Returns ``(original_outputs, intervened_outputs)``; ``original_outputs`` is ``None``
        unless ``output_original_output``. With collect interventions, the first element is
        ``(original_outputs, [collected activations, ...])``. ``return_dict=True`` returns an
        :class:`IntervenableOutput` instead. ``use_cache`` and ``logits_to_keep`` are passed to
        a Hugging Face model's forward as given (``logits_to_keep=1``: the last position's
        logits only).
        """
        plan = self._plan(base, sources, unit_locations, source_representations, subspaces)
        extra: dict[str, Any] = {}
        if labels is not None:
            extra["labels"] = labels
        if use_cache is not None:
            extra["use_cache"] = use_cache
        if logits_to_keep is not None:
            extra["logits_to_keep"] = logits_to_keep
        original = self._call_model(base, extra) if output_original_output else None
        collected: dict[int, torch.Tensor] = {}
        active = [i for i, a in enumerate(plan.active) if a]
        if self.mode == "parallel":
            store: dict[int, Any] = {}
            for j, source_input in enumerate(plan.source_inputs):
                readers = [i for i, s in enumerate(plan.source_of) if s == j]
                store.update(self._run_hooks(source_input, [], readers, plan, {}, collected, extra)[1])
            outputs, _ = self._run_hooks(base, active, [], plan, store, collected, extra)
        else:
            outputs = self._run_serial(base, plan, active, collected, extra)
        collects = [
            i for i, e in enumerate(self._entries) if isinstance(e.intervention, CollectIntervention)
        ]
        activations = [collected[i] for i in collects if i in collected]
        if return_dict:
            return IntervenableOutput(original, outputs, activations if collects else None)
        first = (original, activations) if collects else original
        return first, outputs

    def _run_serial(self, base, plan: _Plan, active: list[int], collected, extra) -> Any:
        """Source 0 is read; its group patches source 1, which is read; ...; the last group
        patches the base."""
        by_group: list[list[int]] = [[] for _ in range(self._n_groups)]
        for i in active:
            by_group[self._entries[i].group].append(i)
        store: dict[int, Any] = {}
        previous: list[int] = []
        for g in range(self._n_groups):
            source_input = plan.group_inputs[g]
            if source_input is None:
                if previous:
                    raise LocationError(
                        f"serial mode: sources[{g}] is None but group {g - 1} writes into it"
                    )
                previous = by_group[g]
                continue
            readers = [i for i in by_group[g] if plan.source_of[i] is not None]
            _, gathered = self._run_hooks(source_input, previous, readers, plan, store, collected, extra)
            store.update(gathered)
            previous = by_group[g]
        outputs, _ = self._run_hooks(base, previous, [], plan, store, collected, extra)
        return outputs

    def generate(
        self,
        base: Any,
        sources: Any = None,
        unit_locations: dict[str, Any] | None = None,
        source_representations: Any = None,
        intervene_on_prompt: bool = False,
        timestep_selector: Any = None,
        output_original_output: bool = False,
        subspaces: Any = None,
        **generate_kwargs: Any,
    ):
        """Runs the wrapped model's ``generate`` with the interventions applied.

        ``intervene_on_prompt``: apply the interventions at the base locations of the prompt
        pass, as :meth:`forward` does. Decoding steps are intervened (at the newest position)
        when ``intervene_on_prompt=False`` (every step) or ``timestep_selector`` is given (a
        list of step indices, a callable ``step -> bool``, or a dict of those by intervention
        key; step 0 is the first call after the prompt pass). ``generate_kwargs`` go to the
        model's ``generate`` (Hugging Face's own keyword set). Returns ``(original_sequences or None, sequences)``. Positions in
        ``unit_locations`` index the base as passed, left pads included. Semantics in
        :mod:`das_train.core.generation`.
        """
        from das_train.core.generation import generate

        return generate(
            self, base, sources=sources, unit_locations=unit_locations,
            source_representations=source_representations,
            intervene_on_prompt=intervene_on_prompt, timestep_selector=timestep_selector,
            output_original_output=output_original_output, subspaces=subspaces,
            generate_kwargs=generate_kwargs,
        )

    # -- saving ---------------------------------------------------------------------------------
    def save(self, save_directory: str, save_to_hf_hub: bool = False, hf_repo_name: str | None = None) -> None:
        """Writes ``config.json`` and ``interventions.safetensors`` (see ``das_train.core.serialization``)."""
        from das_train.core.serialization import save_intervenable

        save_intervenable(self, save_directory, save_to_hf_hub=save_to_hf_hub, hf_repo_name=hf_repo_name)

    def save_pretrained(self, save_directory: str, card=None):
        """Saves the interventions with a model card (see :mod:`das_train.hub`)."""
        from das_train.hub import save_pretrained

        return save_pretrained(self, save_directory, card=card)

    def push_to_hub(self, repo_id: str, card=None, token: str | None = None, private: bool = False) -> str:
        """Uploads the interventions and their card to the Hugging Face Hub."""
        from das_train.hub import push_to_hub

        return push_to_hub(self, repo_id, card=card, token=token, private=private)

    @staticmethod
    def from_pretrained(repo_or_dir: str, model: nn.Module, revision: str | None = None,
                        subfolder: str | None = None) -> IntervenableModel:
        """Loads interventions from a directory or a Hub repo, onto the CPU first."""
        from das_train.hub import from_pretrained

        return from_pretrained(repo_or_dir, model, revision=revision, subfolder=subfolder)

    def save_intervention(self, save_directory: str, include_model: bool = False) -> None:
        """pyvene's name for saving the interventions alone; the same files as :meth:`save`."""
        if include_model:
            raise ValueError("saving the wrapped model is not supported; save it with its own save_pretrained")
        self.save(save_directory)

    @staticmethod
    def load(load_directory: str, model: nn.Module, local_directory: str | None = None,
             from_huggingface_hub: bool = False) -> IntervenableModel:
        """Rebuilds a saved IntervenableModel around ``model`` (on CPU, whatever it was saved on).

        ``load_directory`` is a directory, or a Hub repo id when no such directory exists (or
        with ``from_huggingface_hub=True``); ``local_directory`` is where a download goes.
        """
        from das_train.core.serialization import load_intervenable

        return load_intervenable(load_directory, model, local_directory=local_directory,
                                 from_huggingface_hub=from_huggingface_hub)
