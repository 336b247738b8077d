"""Architecture tables: where each component lives in a model family, and how wide it is.

A table maps a component name to a module path template (``{layer}`` is the only placeholder,
filled with ``str.format`` and walked attribute by attribute; nothing is evaluated), the hook
side (the module's input or its output), how to cut the hooked tensor (a third of a fused
q/k/v projection, laid out contiguously as in GPT-2 or interleaved per head as in GPT-NeoX),
and the widths computed from the model's config. Adding a family is adding one table.

``resolve_site`` turns ``(layer, component, unit)`` into a :class:`Site` the hooks use: the
module, the hook side, the columns of the hooked tensor that belong to the component, and the
head layout. A component may also be a module path (``"transformer.h[0].mlp.output"``) for any
``nn.Module`` with no table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

HEAD_COMPONENTS = (
    "head_attention_value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
)
RECURRENT_COMPONENTS = ("cell_input", "cell_output")


@dataclass(frozen=True)
class ComponentSpec:
    """Where one component lives in a family, relative to the family's base model."""

    path: str
    """Module path with ``{layer}``, e.g. ``"h.{layer}.mlp"``."""
    hook: str
    """``"input"`` (the module's first input) or ``"output"`` (its first output)."""
    width: Callable[[Any], int | None]
    """Width of the hooked slice of the tensor (all heads together), from the config; ``None``
    means: inferred from the module's linear layers."""
    heads: Callable[[Any], int] | None = None
    """Number of heads the slice splits into (head components only)."""
    fused_qkv: tuple[str, int] | None = None
    """``("contiguous" | "interleaved", 0|1|2)`` when the hooked tensor is a fused q/k/v."""
    layer_width: Callable[[Any, int], int] | None = None
    """Width that depends on the layer (an MLP's first layer reads the raw input)."""


@dataclass(frozen=True)
class ArchitectureTable:
    """The components of one model family."""

    name: str
    model_types: tuple[str, ...]
    num_layers: Callable[[Any], int]
    components: dict[str, ComponentSpec] = field(default_factory=dict)
    recurrent: bool = False
    """The layer modules are called once per time step (unit ``t``)."""
    causal: bool = False
    """Position ``p``'s activations depend on the inputs at positions ``0..p`` only (a decoder
    language model, a recurrent network); not for a bidirectional encoder or a model without
    positions."""


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _hidden(c: Any) -> int:
    return int(_cfg(c, "hidden_size", "n_embd", "d_model", "h_dim"))


def _n_heads(c: Any) -> int:
    return int(_cfg(c, "num_attention_heads", "n_head", "num_heads"))


def _n_kv_heads(c: Any) -> int:
    return int(_cfg(c, "num_key_value_heads", default=_n_heads(c)))


def _head_dim(c: Any) -> int:
    # Gemma and some Qwen configs set head_dim explicitly, not hidden // heads.
    explicit = getattr(c, "head_dim", None)
    return int(explicit) if explicit else _hidden(c) // _n_heads(c)


def _inner(c: Any) -> int:
    return int(_cfg(c, "intermediate_size", "n_inner", default=4 * _hidden(c)))


def _attention_components(
    attn: str,
    value_proj_in: str,
    q: tuple[str, tuple[str, int] | None],
    k: tuple[str, tuple[str, int] | None],
    v: tuple[str, tuple[str, int] | None],
    q_width: Callable[[Any], int],
    kv_width: Callable[[Any], int],
    kv_heads: Callable[[Any], int],
) -> dict[str, ComponentSpec]:
    """The attention rows every transformer table shares, from its module names."""
    out = {
        "attention_input": ComponentSpec(attn, "input", _hidden),
        "attention_output": ComponentSpec(attn, "output", _hidden),
        "attention_value_output": ComponentSpec(value_proj_in, "input", q_width),
        "head_attention_value_output": ComponentSpec(value_proj_in, "input", q_width, _n_heads),
    }
    for name, (path, fused), width, heads in (
        ("query", q, q_width, _n_heads),
        ("key", k, kv_width, kv_heads),
        ("value", v, kv_width, kv_heads),
    ):
        out[f"{name}_output"] = ComponentSpec(path, "output", width, None, fused)
        out[f"head_{name}_output"] = ComponentSpec(path, "output", width, heads, fused)
    return out


def _block_and_mlp(block: str, mlp: str, act: str, inner: Callable[[Any], int]) -> dict[str, ComponentSpec]:
    return {
        "block_input": ComponentSpec(block, "input", _hidden),
        "block_output": ComponentSpec(block, "output", _hidden),
        "mlp_input": ComponentSpec(mlp, "input", _hidden),
        "mlp_output": ComponentSpec(mlp, "output", _hidden),
        "mlp_activation": ComponentSpec(act, "output", inner),
    }


def _q_width(c: Any) -> int:
    return _n_heads(c) * _head_dim(c)


def _kv_width(c: Any) -> int:
    return _n_kv_heads(c) * _head_dim(c)


GPT2 = ArchitectureTable(
    "gpt2",
    ("gpt2",),
    lambda c: int(c.n_layer),
    {
        **_block_and_mlp("h.{layer}", "h.{layer}.mlp", "h.{layer}.mlp.act", _inner),
        **_attention_components(
            "h.{layer}.attn",
            "h.{layer}.attn.c_proj",
            ("h.{layer}.attn.c_attn", ("contiguous", 0)),
            ("h.{layer}.attn.c_attn", ("contiguous", 1)),
            ("h.{layer}.attn.c_attn", ("contiguous", 2)),
            _hidden,
            _hidden,
            _n_heads,
        ),
    },
    causal=True,
)

GPT_NEOX = ArchitectureTable(
    "gpt_neox",
    ("gpt_neox",),
    lambda c: int(c.num_hidden_layers),
    {
        **_block_and_mlp(
            "layers.{layer}", "layers.{layer}.mlp", "layers.{layer}.mlp.act", _inner
        ),
        **_attention_components(
            "layers.{layer}.attention",
            "layers.{layer}.attention.dense",
            # GPT-NeoX lays its fused projection out as (heads, 3, head_dim).
            ("layers.{layer}.attention.query_key_value", ("interleaved", 0)),
            ("layers.{layer}.attention.query_key_value", ("interleaved", 1)),
            ("layers.{layer}.attention.query_key_value", ("interleaved", 2)),
            _hidden,
            _hidden,
            _n_heads,
        ),
    },
    causal=True,
)

# Llama and its descendants share module names; grouped-query attention makes the key and
# value projections num_key_value_heads * head_dim wide, split into that many heads.
LLAMA = ArchitectureTable(
    "llama",
    ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2", "phi3"),
    lambda c: int(c.num_hidden_layers),
    {
        **_block_and_mlp(
            "layers.{layer}", "layers.{layer}.mlp", "layers.{layer}.mlp.act_fn", _inner
        ),
        **_attention_components(
            "layers.{layer}.self_attn",
            "layers.{layer}.self_attn.o_proj",
            ("layers.{layer}.self_attn.q_proj", None),
            ("layers.{layer}.self_attn.k_proj", None),
            ("layers.{layer}.self_attn.v_proj", None),
            _q_width,
            _kv_width,
            _n_kv_heads,
        ),
    },
    causal=True,
)

GPT_NEO = ArchitectureTable(
    "gpt_neo",
    ("gpt_neo",),
    lambda c: int(c.num_layers),
    {
        **_block_and_mlp("h.{layer}", "h.{layer}.mlp", "h.{layer}.mlp.act", _inner),
        **_attention_components(
            "h.{layer}.attn",
            "h.{layer}.attn.attention.out_proj",
            ("h.{layer}.attn.attention.q_proj", None),
            ("h.{layer}.attn.attention.k_proj", None),
            ("h.{layer}.attn.attention.v_proj", None),
            _hidden,
            _hidden,
            _n_heads,
        ),
    },
    causal=True,
)

# BERT-style encoders: attention_output and mlp_output are the sub-layers' projections,
# before the residual sum and LayerNorm, as for the decoder families above.
BERT = ArchitectureTable(
    "bert",
    ("bert", "roberta", "xlm-roberta", "electra"),
    lambda c: int(c.num_hidden_layers),
    {
        "block_input": ComponentSpec("encoder.layer.{layer}", "input", _hidden),
        "block_output": ComponentSpec("encoder.layer.{layer}", "output", _hidden),
        "mlp_input": ComponentSpec("encoder.layer.{layer}.intermediate", "input", _hidden),
        "mlp_activation": ComponentSpec("encoder.layer.{layer}.intermediate", "output", _inner),
        "mlp_output": ComponentSpec("encoder.layer.{layer}.output.dense", "output", _hidden),
        **_attention_components(
            "encoder.layer.{layer}.attention.self",
            "encoder.layer.{layer}.attention.output.dense",
            ("encoder.layer.{layer}.attention.self.query", None),
            ("encoder.layer.{layer}.attention.self.key", None),
            ("encoder.layer.{layer}.attention.self.value", None),
            _hidden,
            _hidden,
            _n_heads,
        ),
        "attention_output": ComponentSpec(
            "encoder.layer.{layer}.attention.output.dense", "output", _hidden
        ),
    },
)

# pyvene's MLP module names; paths are relative to the base model (``model.mlp``).
MLP = ArchitectureTable(
    "das_mlp",
    ("das_mlp", "mlp"),
    lambda c: int(c.n_layer),
    {
        "block_input": ComponentSpec(
            "h.{layer}", "input", lambda c: int(c.h_dim),
            layer_width=lambda c, layer: int((getattr(c, "input_dim", None) or c.h_dim) if layer == 0 else c.h_dim),
        ),
        "block_output": ComponentSpec("h.{layer}", "output", lambda c: int(c.h_dim)),
        "mlp_activation": ComponentSpec("h.{layer}.act", "output", lambda c: int(c.h_dim)),
    },
)


def _h_dim(c: Any) -> int:
    return int(c.h_dim)


def _gru_components() -> dict[str, ComponentSpec]:
    """pyvene's GRU components (paths relative to the bare ``GRUModel``): the cell's input and
    output, each gate's input and output, and the ``x2h``/``h2h`` projections whole (three
    h_dim-wide parts side by side: reset, update, new) or one part."""
    out = {
        "cell_input": ComponentSpec(
            "cells.{layer}", "input", _h_dim,
            layer_width=lambda c, layer: int((getattr(c, "input_dim", None) or c.h_dim) if layer == 0 else c.h_dim),
        ),
        "cell_output": ComponentSpec("cells.{layer}", "output", _h_dim),
        "x2h_output": ComponentSpec("cells.{layer}.x2h", "output", lambda c: 3 * int(c.h_dim)),
        "h2h_output": ComponentSpec("cells.{layer}.h2h", "output", lambda c: 3 * int(c.h_dim)),
    }
    for index, gate in enumerate(("reset", "update", "new")):
        for side in ("input", "output"):
            out[f"{gate}_gate_{side}"] = ComponentSpec(f"cells.{{layer}}.{gate}_act", side, _h_dim)
        for proj in ("x2h", "h2h"):
            out[f"{gate}_{proj}_output"] = ComponentSpec(
                f"cells.{{layer}}.{proj}", "output", _h_dim, fused_qkv=("contiguous", index))
    return out


# Every GRU component sits inside the cell, called once per time step: all take unit "t".
GRU = ArchitectureTable(
    "das_gru",
    ("das_gru",),
    lambda c: int(c.n_layer),
    _gru_components(),
    recurrent=True,
    causal=True,
)

TABLES: tuple[ArchitectureTable, ...] = (GPT2, GPT_NEOX, LLAMA, GPT_NEO, BERT, MLP, GRU)


def table_for(model: nn.Module) -> ArchitectureTable | None:
    """The table of the model's family: one registered for its class (or a base class) by
    :func:`register_architecture` or in pyvene's ``type_to_module_mapping``, else the shipped
    table of its ``config.model_type``."""
    for cls in type(model).__mro__:
        if cls in _REGISTERED:
            return _REGISTERED[cls]
        if cls in type_to_module_mapping:
            return table_from_pyvene_mapping(model, cls)
    return table_for_config(getattr(model, "config", None))


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


def all_component_names() -> list[str]:
    names: set[str] = set()
    for table in TABLES:
        names.update(table.components)
    return sorted(names)


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
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"component {component!r}: no architecture table for {type(model).__name__} "
            f"(model_type={model_type!r}); known families: "
            f"{sorted(t for tab in TABLES for t in tab.model_types)}. Use a module path "
            f"such as 'layers[0].output' for other models"
        )
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
    if width is None:  # a pyvene-form entry with no dimension: read it off the module
        width = _infer_width(module, spec.hook)
    n_heads = spec.heads(config) if spec.heads is not None else None
    columns = None
    if spec.fused_qkv is not None:
        layout, index = spec.fused_qkv
        # a contiguous third needs no head count (a GRU's config has none)
        columns = _qkv_columns(layout, index, width, _n_heads(config) if layout == "interleaved" else 0)
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
    )
