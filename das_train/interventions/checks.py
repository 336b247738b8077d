"""Argument checks the intervention families share, so each says what is wrong the same way.

A trainable intervention cannot size its parameters without its widths, and an interchange
cannot run without a source; both fail far from the cause (in ``torch.empty`` or a matmul)
unless checked where the argument arrives.
"""

from __future__ import annotations

import torch


def require_dim(value: int | None, name: str, owner: str, what: str) -> int:
    """Returns ``value`` as a positive int, or raises naming the missing argument."""
    if value is None:
        raise ValueError(
            f"{owner} needs `{name}` ({what}) to size its parameters; pass {name}=..., or build "
            "it from a RepresentationConfig, which fills embed_dim in from the site's width"
        )
    if isinstance(value, bool) or int(value) != value or int(value) <= 0:
        raise ValueError(f"{owner}: `{name}` must be a positive int, got {value!r}")
    return int(value)


def require_source(owner: str, source: torch.Tensor | None) -> torch.Tensor:
    """The interchange families need a source; say how to give one instead of failing in matmul."""
    if source is None:
        raise ValueError(
            f"{owner} needs a source: give `sources` (an interchange) or `source_representations`"
        )
    return source
