"""Sites: from ``(layer, component, unit)`` to the module a hook goes on and how to cut it.

``resolve_site`` turns ``(layer, component, unit)`` into a :class:`Site` the hooks use: the
module, the hook side, the columns of the hooked tensor that belong to the component, and the
head layout. The component is looked up in the model family's table (:mod:`das_train.core.tables`),
in one registered for the model's class, or in pyvene-form mappings; it may also be a module
path (``"transformer.h[0].mlp.output"``) for any ``nn.Module`` with no table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from das_train.core.table_discovery import BLOCK_LIST_PATHS, discover_table
from das_train.core.tables import (
    HEAD_COMPONENTS,
    RECURRENT_COMPONENTS,
    TABLES,
    ArchitectureTable,
    ComponentSpec,
    attention_head_count,
)

__all__ = [
    "HEAD_COMPONENTS",
    "RECURRENT_COMPONENTS",
    "TABLES",
    "ArchitectureTable",
    "EAGER_HINT",
    "ComponentSpec",
    "Site",
    "get_submodule",
    "is_module_path",
    "missing_table_message",
    "pyvene_dimension",
    "register_architecture",
    "resolve_site",
    "table_for",
    "table_for_config",
    "table_from_pyvene_mapping",
    "type_to_dimension_mapping",
    "type_to_module_mapping",
]


def table_for(model: nn.Module) -> ArchitectureTable | None:
    """The table of the model's family: one registered for its class (or a base class) by
    :func:`register_architecture` or in pyvene's ``type_to_module_mapping``, else the shipped
    table of its ``config.model_type``, else one discovered from its block list
    (:func:`~das_train.core.table_discovery.discover_table`)."""
    for cls in type(model).__mro__:
        if cls in _REGISTERED:
            return _REGISTERED[cls]
        if cls in type_to_module_mapping:
            return table_from_pyvene_mapping(model, cls)
    return table_for_config(getattr(model, "config", None)) or discover_table(model)


def missing_table_message(model: nn.Module) -> str:
    """Why ``model`` has no table, and what would give it one: said the same way by every
    caller that needs one, before any forward pass."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return (
        f"{type(model).__name__} (model_type={model_type!r}) has no architecture table: no table "
        f"lists that model type (tables exist for {sorted(t for tab in TABLES for t in tab.model_types)}) "
        f"and no nn.ModuleList of blocks was found under {', '.join(BLOCK_LIST_PATHS)}. Give it one "
        "with das_train.register_architecture, or name modules by path such as 'layers[0].output'"
    )


def table_for_config(config: Any) -> ArchitectureTable | None:
    """The table of a model config's family, so a run's sites can be checked before the
    model is built."""
    model_type = getattr(config, "model_type", None)
    for table in TABLES:
        if model_type in table.model_types:
            return table
    return None


# -- tables added by users, without editing the package ----------------------------------------

_REGISTERED: dict[type, ArchitectureTable] = {}

type_to_module_mapping: dict[type, dict[str, tuple]] = {}
"""pyvene's form: ``{model_class: {component: (path with "%s" for the layer, hook)}}``, the hook
being ``"register_forward_hook"`` (output) or ``"register_forward_pre_hook"`` (input). Starts
empty: the shipped families live in typed tables. Read when a model of that class is wrapped."""

type_to_dimension_mapping: dict[type, dict[str, tuple]] = {}
"""pyvene's form: ``{model_class: {component: ("hidden_size",)}}``; each proposal is a number,
a config attribute, ``"attr*k"`` or ``"a/b"``; the first that the config has is the width.
A component with no entry gets the width inferred from its module."""

_PYVENE_HOOKS = {"register_forward_hook": "output", "register_forward_pre_hook": "input",
                 "output": "output", "input": "input"}


def register_architecture(model_class: type, table: ArchitectureTable) -> None:
    """Gives ``model_class`` (and its subclasses) a component table, e.g.::

        pv.register_architecture(MyNet, pv.ArchitectureTable(
            "mynet", (), num_layers=lambda config: config.n_layers,
            components={"block_output": pv.ComponentSpec("blocks.{layer}", "output",
                                                          lambda config: config.width)}))

    Paths are relative to the model (or to its ``base_model``); ``{layer}`` is the only
    placeholder. A registered table wins over pyvene-form mappings and the shipped tables.
    """
    if not isinstance(table, ArchitectureTable):
        raise TypeError(f"register_architecture needs an ArchitectureTable, got {type(table).__name__}")
    _REGISTERED[model_class] = table


def _config_value(config: Any, name: str) -> Any:
    value = config
    for part in name.split("."):
        value = getattr(value, part, None)
    return value


def _number(config: Any, text: str) -> Any:
    return int(text) if text.isnumeric() else _config_value(config, text)


def pyvene_dimension(config: Any, proposals: tuple[str, ...]) -> int | None:
    """The first of pyvene's dimension proposals that ``config`` answers (read, not evaluated)."""
    for proposal in proposals:
        if "*" in proposal:
            left, right = proposal.split("*", 1)
            value = _number(config, left)
            value = None if value is None else value * int(right)
        elif "/" in proposal:
            numerator, denominator = (_number(config, part) for part in proposal.split("/", 1))
            value = None if None in (numerator, denominator) else int(numerator / denominator)
        else:
            value = _number(config, proposal)
        if value is not None:
            return int(value)
    return None


def _pyvene_spec(cls: type, component: str, entry: tuple, dims: dict[str, tuple]) -> ComponentSpec:
    path, hook = entry[0], entry[1]
    problem = None
    if len(entry) > 2:
        problem = "sub-component functions (a split or head permutation) are code we do not run"
    elif path.count("%s") > 1:
        problem = "paths with a mixture-of-experts key are not supported"
    elif hook not in _PYVENE_HOOKS:
        problem = f"hook {hook!r} is not one of {sorted(_PYVENE_HOOKS)}"
    if problem:
        raise ValueError(
            f"type_to_module_mapping[{cls.__name__}][{component!r}]: {problem}; describe it with "
            "a ComponentSpec (fused_qkv, heads) and pv.register_architecture instead")
    proposals = dims.get(component)
    width = (lambda config: pyvene_dimension(config, proposals)) if proposals else (lambda config: None)
    return ComponentSpec(path.replace("%s", "{layer}"), _PYVENE_HOOKS[hook], width)


def table_from_pyvene_mapping(model: nn.Module, cls: type) -> ArchitectureTable:
    """A table for ``model`` from pyvene-form entries, converted when the model is wrapped."""
    dims = type_to_dimension_mapping.get(cls, {})
    components = {name: _pyvene_spec(cls, name, tuple(entry), dims)
                  for name, entry in type_to_module_mapping[cls].items()}
    layered = [spec.path for spec in components.values() if "{layer}" in spec.path]
    return ArchitectureTable(
        f"{cls.__name__} (type_to_module_mapping)", (),
        lambda config: _count_layers(model, layered[0]) if layered else 1, components)


def _count_layers(model: nn.Module, path: str) -> int:
    """How many consecutive layers ``path`` resolves for, from 0."""
    count = 0
    while True:
        resolved = path.format(layer=count)
        try:
            get_submodule(_base_model(model, resolved), resolved)
        except LookupError:
            return count
        count += 1


# -- resolution --------------------------------------------------------------------------------


@dataclass
class Site:
    """A resolved site: what the hooks touch and how they cut it."""

    module: nn.Module
    hook: str
    unit: str
    width: int | None
    """Width of one unit as the intervention sees it (a head's size for head components)."""
    columns: torch.Tensor | None = None
    """Columns of the hooked tensor's last dim that belong to the component, head-major;
    ``None`` means all of them."""
    n_heads: int | None = None
    recurrent: bool = False
    description: str = ""
    input_width: int | None = None
    """Width of the module's input, for interventions that read it (LoRA, skip)."""
    output_item: int = 0
    """Item of the module's tuple output hooked (1: attention probabilities, read-only)."""


EAGER_HINT = (
    "attention probabilities are returned under eager attention only (sdpa and flash "
    "attention never form them): load the model with attn_implementation='eager' or call "
    "model.set_attn_implementation('eager')"
)

_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|(\d+)")


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """Walks ``a.b[0].c`` or ``a.b.0.c`` attribute by attribute (no evaluation)."""
    module: Any = root
    walked = []
    for part in path.split("."):
        for match in _PATH_TOKEN.finditer(part):
            name, bracket, digit = match.groups()
            try:
                if name is not None:
                    module = getattr(module, name)
                else:
                    module = module[int(bracket if bracket is not None else digit)]
            except (AttributeError, IndexError, KeyError, TypeError) as err:
                raise LookupError(
                    f"{type(root).__name__} has no module {path!r} (stopped after "
                    f"{'.'.join(walked) or '<root>'})"
                ) from err
            walked.append(match.group(0))
    if not isinstance(module, nn.Module):
        raise LookupError(f"{path!r} names a {type(module).__name__}, not a module")
    return module


def _base_model(model: nn.Module, first_path: str) -> nn.Module:
    """The module table paths are relative to (the HF base model under any head)."""
    head = first_path.split(".")[0]
    if hasattr(model, head):
        return model
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and hasattr(base, head):
        return base
    return model


def _qkv_columns(layout: str, index: int, width: int, n_heads: int) -> torch.Tensor:
    if layout == "contiguous":
        return torch.arange(index * width, (index + 1) * width)
    head_dim = width // n_heads
    # (heads, head_dim): head h's slice starts at h * 3 * head_dim + index * head_dim
    starts = torch.arange(n_heads) * 3 * head_dim + index * head_dim
    return (starts[:, None] + torch.arange(head_dim)[None, :]).reshape(-1)


def _infer_width(module: nn.Module, hook: str) -> int | None:
    """Best-effort width of a module with no table, from its first/last linear-like part."""
    modules = list(module.modules())
    ordered = modules if hook == "input" else list(reversed(modules))
    for sub in ordered:
        if hook == "input":
            for attr in ("in_features", "input_size", "nx", "embedding_dim"):
                if isinstance(getattr(sub, attr, None), int):
                    return int(getattr(sub, attr))
        else:
            for attr in ("out_features", "hidden_size", "nf", "embedding_dim"):
                if isinstance(getattr(sub, attr, None), int):
                    return int(getattr(sub, attr))
        shape = getattr(sub, "normalized_shape", None)
        if isinstance(shape, tuple) and len(shape) == 1:
            return int(shape[0])
    return None


def is_module_path(component: str) -> bool:
    return "." in component or "[" in component


def resolve_site(model: nn.Module, layer: int, component: str, unit: str) -> Site:
    """Resolves one site, raising ``LookupError``/``ValueError`` with what is allowed."""
    if is_module_path(component):
        path, hook = component, "output"
        if component.endswith(".output"):
            path = component[: -len(".output")]
        elif component.endswith(".input"):
            path, hook = component[: -len(".input")], "input"
        module = get_submodule(model, path) if path else model
        width = _infer_width(module, hook)
        input_width = width if hook == "input" else _infer_width(module, "input")
        return Site(module, hook, unit, width, description=component, input_width=input_width)

    table = table_for(model)
    if table is None:
        raise ValueError(f"component {component!r}: {missing_table_message(model)}")
    spec = table.components.get(component)
    if spec is None:
        raise ValueError(
            f"component {component!r} is not in the {table.name} table; allowed: "
            f"{sorted(table.components)} or a module path"
        )
    config = getattr(model, "config", None)
    n_layers = table.num_layers(config)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is out of range for {table.name}: allowed 0..{n_layers - 1}")
    path = spec.path.format(layer=layer)
    module = get_submodule(_base_model(model, path), path)
    width = spec.layer_width(config, layer) if spec.layer_width else spec.width(config)
    if width is None and not spec.output_item:  # a pyvene-form entry with no dimension
        width = _infer_width(module, spec.hook)
    n_heads = spec.heads(config) if spec.heads is not None else None
    columns = None
    if spec.fused_qkv is not None:
        layout, index = spec.fused_qkv
        # a contiguous third needs no head count (a GRU's config has none)
        columns = _qkv_columns(layout, index, width, attention_head_count(config) if layout == "interleaved" else 0)
    unit_width = width // n_heads if n_heads else width
    return Site(
        module=module,
        hook=spec.hook,
        unit=unit,
        width=unit_width,
        columns=columns,
        n_heads=n_heads,
        recurrent=table.recurrent,
        description=f"{table.name}:{path}:{spec.hook}",
        input_width=width if spec.hook == "input" else _infer_width(module, "input"),
        output_item=spec.output_item,
    )
