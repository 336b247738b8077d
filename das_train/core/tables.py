"""Architecture tables: where each component lives in a model family, and how wide it is.

A table maps a component name to a module path template (``{layer}`` is the only placeholder,
filled with ``str.format`` and walked attribute by attribute; nothing is evaluated), the hook
side (the module's input or its output), how to cut the hooked tensor (a third of a fused
q/k/v projection, laid out contiguously as in GPT-2 or interleaved per head as in GPT-NeoX),
and the widths computed from the model's config. Adding a family is adding one table here (or
registering one, see :func:`das_train.core.sites.register_architecture`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    output_item: int = 0
    """Which item of the module's tuple output the component is. Item 1 of an attention
    module is its attention probabilities ``(batch, heads, query, key)``: returned, not used
    further, so such a component can be collected but not patched."""


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


def attention_head_count(c: Any) -> int:
    return int(_cfg(c, "num_attention_heads", "n_head", "num_heads"))


def _n_kv_heads(c: Any) -> int:
    return int(_cfg(c, "num_key_value_heads", default=attention_head_count(c)))


def _head_dim(c: Any) -> int:
    # Gemma and some Qwen configs set head_dim explicitly, not hidden // heads.
    explicit = getattr(c, "head_dim", None)
    return int(explicit) if explicit else _hidden(c) // attention_head_count(c)


def _inner(c: Any) -> int:
    return int(_cfg(c, "intermediate_size", "n_inner", default=4 * _hidden(c)))


Projection = tuple[str, tuple[str, int] | None]
"""A query, key or value projection: its module path and, for a fused one, its third."""


def _fused_qkv(path: str, layout: str) -> tuple[Projection, Projection, Projection]:
    """Query, key and value as the thirds of one fused projection laid out as ``layout``."""
    return (path, (layout, 0)), (path, (layout, 1)), (path, (layout, 2))


def _separate_qkv(
    template: str, names: tuple[str, str, str] = ("q", "k", "v")
) -> tuple[Projection, Projection, Projection]:
    """Query, key and value as three modules: ``template`` with ``{qkv}`` set to each name."""
    q, k, v = (template.replace("{qkv}", name) for name in names)
    return (q, None), (k, None), (v, None)


def _attention_components(
    attn: str,
    value_proj_in: str,
    qkv: tuple[Projection, Projection, Projection],
    q_width: Callable[[Any], int] = _hidden,
    kv_width: Callable[[Any], int] = _hidden,
    kv_heads: Callable[[Any], int] = attention_head_count,
) -> dict[str, ComponentSpec]:
    """The attention rows every transformer table shares, from its module names.

    The widths default to multi-head attention, where keys and values are as wide as queries;
    a grouped-query family passes its own.
    """
    q, k, v = qkv
    out = {
        "attention_input": ComponentSpec(attn, "input", _hidden),
        "attention_output": ComponentSpec(attn, "output", _hidden),
        "attention_value_output": ComponentSpec(value_proj_in, "input", q_width),
        "head_attention_value_output": ComponentSpec(value_proj_in, "input", q_width, attention_head_count),
    }
    for name, (path, fused), width, heads in (
        ("query", q, q_width, attention_head_count),
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
    return attention_head_count(c) * _head_dim(c)


def _kv_width(c: Any) -> int:
    return _n_kv_heads(c) * _head_dim(c)


# pyvene's GPT-2 ``attention_weight`` hooks the input of ``attn.attn_dropout``; transformers 5
# applies that dropout functionally, so the module is never called. The same probabilities are
# the attention module's second output under eager attention; as in pyvene, the units index
# dim 1 of ``(batch, heads, query, key)``, the heads. No width: the key length is the call's
# (pyvene's n_positions is only its upper bound, and a collect sized to it would refuse).
_ATTENTION_WEIGHT = ComponentSpec("h.{layer}.attn", "output", lambda c: None, output_item=1)

GPT2 = ArchitectureTable(
    "gpt2",
    ("gpt2",),
    lambda c: int(c.n_layer),
    {
        "attention_weight": _ATTENTION_WEIGHT,
        **_block_and_mlp("h.{layer}", "h.{layer}.mlp", "h.{layer}.mlp.act", _inner),
        **_attention_components(
            "h.{layer}.attn", "h.{layer}.attn.c_proj", _fused_qkv("h.{layer}.attn.c_attn", "contiguous")
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
            _fused_qkv("layers.{layer}.attention.query_key_value", "interleaved"),
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
            _separate_qkv("layers.{layer}.self_attn.{qkv}_proj"),
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
            _separate_qkv("h.{layer}.attn.attention.{qkv}_proj"),
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
            _separate_qkv("encoder.layer.{layer}.attention.self.{qkv}", ("query", "key", "value")),
        ),
        "attention_output": ComponentSpec(
            "encoder.layer.{layer}.attention.output.dense", "output", _hidden
        ),
    },
)

def _first_layer_reads_input(c: Any, layer: int) -> int:
    """pyvene's MLP and GRU: layer 0 reads the raw input (``input_dim`` wide, if set), the
    others the previous layer's ``h_dim``-wide output."""
    return int((getattr(c, "input_dim", None) or c.h_dim) if layer == 0 else c.h_dim)


# pyvene's MLP module names; paths are relative to the base model (``model.mlp``).
MLP = ArchitectureTable(
    "das_mlp",
    ("das_mlp", "mlp"),
    lambda c: int(c.n_layer),
    {
        "block_input": ComponentSpec(
            "h.{layer}", "input", lambda c: int(c.h_dim),
            layer_width=_first_layer_reads_input,
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
            layer_width=_first_layer_reads_input,
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
