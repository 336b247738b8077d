"""A table for a model family that has none, found from the model's own modules.

Hugging Face decoders keep their blocks in one ``nn.ModuleList`` under a handful of attribute
paths (``model.layers``, ``transformer.h``, ``model.decoder.layers``...), and most name the
attention and MLP sub-layers of a block alike. That is enough to give a new family the
components a sweep needs (block input and output, and the attention and MLP sub-layers' input
and output where their names are standard) without anyone writing a table. The finer
components (heads, query/key/value, MLP activation) need to know how a family fuses and splits
its projections, which module names alone do not tell: those stay with the written tables.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from das_train.core.tables import ArchitectureTable, ComponentSpec

BLOCK_LIST_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
    "layers",
    "h",
    "decoder.layers",
    "blocks",
)
"""Where decoder blocks are looked for, in this order."""
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


def _walk(model: nn.Module, path: str) -> Any:
    found: Any = model
    for part in path.split("."):
        found = getattr(found, part, None)
    return found


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The first ``(path, blocks)`` under :data:`BLOCK_LIST_PATHS` holding a non-empty
    ``nn.ModuleList`` of blocks all of one class that has its own ``forward`` (a container
    such as ``nn.ModuleDict`` is never called, so a hook on it would never fire)."""
    for path in BLOCK_LIST_PATHS:
        blocks = _walk(model, path)
        if (
            isinstance(blocks, nn.ModuleList)
            and len(blocks)
            and len({type(b) for b in blocks}) == 1
            and type(blocks[0]).forward is not nn.Module.forward
        ):
            return path, blocks
    return None


def _child_in_every_block(blocks: nn.ModuleList, names: tuple[str, ...]) -> str | None:
    for name in names:
        if all(isinstance(getattr(block, name, None), nn.Module) for block in blocks):
            return name
    return None


def _hidden_width(model: nn.Module) -> int | None:
    """The residual stream's width: the config's hidden size, else the token embeddings' width."""
    config = getattr(model, "config", None)
    for name in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return getattr(embeddings, "embedding_dim", None)


def _is_causal(model: nn.Module) -> bool:
    """A decoder-only language model: position p sees positions 0..p only."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    return bool(getattr(config, "is_decoder", False)) or type(model).__name__.endswith(
        "ForCausalLM"
    )


def discover_table(model: nn.Module) -> ArchitectureTable | None:
    """A table for ``model`` from its module names, or ``None`` when no block list is found.

    Every component is as wide as the residual stream (:func:`_hidden_width`); when that is
    unknown, each width is read from its module."""
    found = block_list(model)
    if found is None:
        return None
    path, blocks = found
    block = f"{path}.{{layer}}"
    hidden = _hidden_width(model)

    def width(config: Any) -> int | None:
        return hidden

    components = {
        "block_input": ComponentSpec(block, "input", width),
        "block_output": ComponentSpec(block, "output", width),
    }
    for prefix, names in (("attention", ATTENTION_NAMES), ("mlp", MLP_NAMES)):
        child = _child_in_every_block(blocks, names)
        if child is not None:
            components[f"{prefix}_input"] = ComponentSpec(f"{block}.{child}", "input", width)
            components[f"{prefix}_output"] = ComponentSpec(f"{block}.{child}", "output", width)
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    count = len(blocks)
    return ArchitectureTable(
        f"{model_type} (discovered at {path})",
        (),
        lambda config: count,
        components,
        causal=_is_causal(model),
    )


__all__ = ["ATTENTION_NAMES", "BLOCK_LIST_PATHS", "MLP_NAMES", "block_list", "discover_table"]
