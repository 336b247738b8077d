"""From a config to resolved interventions: each representation's site, intervention and group.

Built once when an :class:`~das_train.core.model.IntervenableModel` is made, then read by every
call (planning, hooks, generation, saving). Every problem in the config is reported at once,
naming the representation, before anything runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from das_train.core.config import IntervenableConfig, RepresentationConfig
from das_train.core.sites import (
    EAGER_HINT,
    HEAD_COMPONENTS,
    Site,
    is_module_path,
    resolve_site,
)
from das_train.interventions.base import Intervention, LambdaIntervention, build_intervention
from das_train.interventions.calling import may_concatenate
from das_train.interventions.static import CollectIntervention

UNITS = ("pos", "h", "h.pos", "t")


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
class Entry:
    """One configured intervention and its resolved site."""

    key: str
    representation: RepresentationConfig
    site: Site
    intervention: Intervention
    group: int  # index of its source group
    adaptor: bool = False
    """Also hand the intervention the module's input, as keyword ``args`` (pyvene's as_adaptor)."""


@dataclass
class Wiring:
    """The wrapped model and its interventions, in config order, with their source groups."""

    model: nn.Module
    entries: list[Entry]
    n_groups: int


def build_wiring(config: IntervenableConfig, model: nn.Module, use_fast: bool = False,
                 as_adaptor: bool = False) -> Wiring:
    """Resolves every representation of ``config`` on ``model``; raises ``ValueError`` listing
    every problem found. ``use_fast`` is handed to interventions built from the config, as
    pyvene hands it; ``as_adaptor`` marks every entry to receive the module's input."""
    errors: list[str] = []
    seen: dict[str, int] = {}
    linked: dict[Any, Intervention] = {}
    group_ids: list[Any] = []
    entries: list[Entry] = []
    reps = config.representations
    any_group = any(r.group_key is not None for r in reps)
    if any_group and any(r.group_key is None for r in reps):
        errors.append("group_key is set on some representations but not all; set it on every one")
    for i, rep in enumerate(reps):
        key = representation_key(rep, seen)
        try:
            site = resolve_representation_site(model, rep)
        except (LookupError, ValueError) as err:
            errors.append(f"representations[{i}] ({key}): {err}")
            continue
        intervention = _make_intervention(config, i, rep, site, errors, use_fast)
        if intervention is None:
            continue
        problem = _read_only_problem(model, rep, site, intervention) or (
            _adaptor_problem(intervention) if as_adaptor else None)
        if problem:
            errors.append(f"representations[{i}] ({key}): {problem}")
            continue
        if rep.intervention_link_key is not None:
            intervention = linked.setdefault(rep.intervention_link_key, intervention)
        group = rep.group_key if any_group else i
        if group not in group_ids:
            group_ids.append(group)
        entries.append(Entry(key, rep, site, intervention, group_ids.index(group), as_adaptor))
    if any_group and group_ids != sorted(group_ids, key=lambda g: (g is None, g)):
        errors.append(f"group keys must appear in ascending order, got {group_ids}")
    if errors:
        raise ValueError("invalid intervenable config:\n  - " + "\n  - ".join(errors))
    return Wiring(model, entries, len(group_ids))


def resolve_representation_site(model: nn.Module, rep: RepresentationConfig) -> Site:
    """The site of ``rep`` on ``model``, once its unit fits its component."""
    unit = rep.unit
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not allowed; allowed: {', '.join(UNITS)}")
    site = resolve_site(model, int(rep.layer), rep.component, unit)
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


def _read_only_problem(model: nn.Module, rep: RepresentationConfig, site: Site,
                       intervention: Intervention) -> str | None:
    """Why a read-only site (an attention module's probabilities) cannot take this
    intervention, or ``None``. The probabilities are returned, not used further, so writing
    them would change nothing: only collecting means something."""
    if not site.output_item:
        return None
    if not isinstance(intervention, CollectIntervention):
        return (f"component {rep.component!r} is the attention probabilities the module returns "
                f"and can only be collected (CollectIntervention), not patched with "
                f"{type(intervention).__name__}")
    if rep.unit != "pos":
        return f"component {rep.component!r} takes unit 'pos' (it picks heads, as in pyvene), not {rep.unit!r}"
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", "eager")
    if implementation not in (None, "eager"):
        return f"component {rep.component!r} under {implementation!r} attention: {EAGER_HINT}"
    return None


def _adaptor_problem(intervention: Intervention) -> str | None:
    """Why ``intervention`` cannot take the module's input as keyword ``args``, or ``None``."""
    if isinstance(intervention, CollectIntervention):
        return None  # collects what it sees; the input is not needed
    params = inspect.signature(intervention.forward).parameters.values()
    if any(p.kind is p.VAR_KEYWORD or p.name == "args" for p in params):
        return None
    return (f"as_adaptor=True hands each intervention the module's input as keyword 'args', but "
            f"{type(intervention).__name__}.forward accepts neither 'args' nor **kwargs")


def _instantiate(config: IntervenableConfig, index: int, rep: RepresentationConfig, site: Site,
                 errors: list[str], use_fast: bool) -> Any:
    """The representation's own intervention, else one built from its type and the site's
    widths; ``None`` (with the reason in ``errors``) when it cannot be built."""
    if rep.intervention is not None:
        made = rep.intervention
        if not isinstance(made, nn.Module) and callable(made):
            made = LambdaIntervention(made)
        return made
    cls = config.intervention_type_for(index)
    if not isinstance(cls, type):
        return LambdaIntervention(cls)
    # What pyvene hands an intervention it builds: the representation's fields, the site's
    # width and use_fast (plus the module input's width, for LoRA).
    available = {
        **{f.name: getattr(rep, f.name) for f in fields(rep)},
        "embed_dim": site.width,
        "input_dim": site.input_width,
        "use_fast": use_fast,
    }
    try:
        return build_intervention(cls, available)
    except (TypeError, ValueError) as err:
        errors.append(f"representations[{index}]: cannot build {cls.__name__}: {err}")
        return None


def _make_intervention(config: IntervenableConfig, index: int, rep: RepresentationConfig, site: Site,
                       errors: list[str], use_fast: bool) -> Intervention | None:
    made = _instantiate(config, index, rep, site, errors, use_fast)
    if made is None:
        return None
    if not isinstance(made, Intervention):
        errors.append(
            f"representations[{index}]: intervention must be an Intervention, got {type(made).__name__}"
        )
        return None
    if made.embed_dim is None:
        made.embed_dim = site.width
    elif (
        site.width is not None
        and made.embed_dim != site.width
        and made.source_kind != "module_input"
        and not may_concatenate(made, site.width)
    ):
        errors.append(
            f"representations[{index}]: intervention embed_dim={made.embed_dim} but the site "
            f"{rep.component!r} is {site.width} wide"
        )
    if made.subspace_partition is None and rep.subspace_partition is not None:
        made.subspace_partition = [list(p) for p in rep.subspace_partition]
    return made
