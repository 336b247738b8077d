"""How the hook core calls an intervention: pyvene's unit concatenation and its output type.

The hook core gathers a site's selected units as ``(batch, units, width)`` (positions),
``(batch, heads, seq, head_dim)`` (unit ``h``) or ``(batch, heads, positions, head_dim)``
(unit ``h.pos``), and ``(batch, width)`` for recurrent time steps. pyvene 0.1.8 hands a
distributed-representation intervention (anything not localist, unless built with
``keep_last_dim=True``) those units concatenated instead: ``(batch, units * width)`` for
positions, ``(batch, positions, heads * head_dim)`` for heads, and splits its output back. A
rotation whose ``embed_dim`` is ``units * width`` then rotates all units jointly. With
``embed_dim == width`` and several units, pyvene's concatenation fails (the weight is too
small); here such an intervention acts on each unit alone, which is the only computation that
call can mean. :func:`concatenates_units` decides, from the intervention's ``keep_last_dim``
and ``embed_dim`` and the units' shape; :func:`call_intervention` does the reshaping.

:class:`InterventionOutput` is pyvene's richer return value: the intervened ``output`` plus a
``latent`` (an autoencoder's features). The hook core writes ``output`` back and keeps the whole
object in ``IntervenableModel.full_intervention_outputs``, where pyvene keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from das_train.interventions.base import (
    Intervention,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    Subspaces,
)


@dataclass
class InterventionOutput:
    """What an intervention may return instead of a tensor (pyvene 0.1.8's class).

    Attributes:
        output: the intervened units, shaped as the units the intervention was given.
        latent: anything else worth keeping from the call (an autoencoder's latent features).
    """

    output: Any = None
    latent: Any = None

    def __getitem__(self, key: int | str) -> Any:
        # pyvene's is a transformers ModelOutput, indexed by name or by position.
        if isinstance(key, str):
            return getattr(self, key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are set, in order (``ModelOutput.to_tuple``'s convention)."""
        return tuple(v for v in (getattr(self, f.name) for f in fields(self)) if v is not None)


def concatenates_units(intervention: Intervention, base: torch.Tensor) -> bool:
    """Whether ``intervention`` sees ``base``'s units concatenated into one vector (pyvene's
    ``keep_last_dim=False``), or each unit alone; raises where neither is well defined."""
    if (
        base.dim() < 3
        or isinstance(intervention, (LambdaIntervention, LocalistRepresentationIntervention))
        or intervention.keep_last_dim
        or intervention.embed_dim is None
    ):
        return False
    units, width, dim = base.shape[1], base.shape[-1], intervention.embed_dim
    if units == 1 or (dim == width and intervention.keep_last_dim is None):
        return False  # one unit: the concatenation is the unit itself
    if dim == units * width:
        return True
    name = type(intervention).__name__
    if intervention.keep_last_dim is False:
        raise ValueError(
            f"{name} has keep_last_dim=False, so the {units} selected units ({width} wide each) "
            f"reach it concatenated, {units * width} wide, as in pyvene; but its embed_dim is "
            f"{dim}. Give embed_dim={units * width}, or keep_last_dim=True to act on each unit"
        )
    raise ValueError(
        f"{name} has embed_dim={dim}, which fits neither one unit ({width}) nor the "
        f"{units} selected units concatenated ({units * width})"
    )


def may_concatenate(intervention: Intervention, width: int) -> bool:
    """Whether ``intervention`` may be sized for several ``width``-wide units concatenated, so
    an ``embed_dim`` other than the site's width is not an error when it is built."""
    return (
        not isinstance(intervention, (LambdaIntervention, LocalistRepresentationIntervention))
        and not intervention.keep_last_dim
        and intervention.embed_dim is not None
        and intervention.embed_dim % width == 0
    )


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x.reshape(x.shape[0], -1)  # (batch, units, d) -> (batch, units * d)
    batch, heads, seq, dim = x.shape
    # (batch, heads, seq, d) -> (batch, seq, heads * d)
    return x.permute(0, 2, 1, 3).reshape(batch, seq, heads * dim)


def _unflatten(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 3:
        return x.reshape(like.shape)  # (batch, units * d) -> (batch, units, d)
    batch, heads, seq, dim = like.shape
    # (batch, seq, heads * d) -> (batch, heads, seq, d)
    return x.reshape(batch, seq, heads, dim).permute(0, 2, 1, 3)


def call_intervention(
    intervention: Intervention,
    base: torch.Tensor,
    source: torch.Tensor | None,
    subspaces: Subspaces,
    **extra: Any,
) -> torch.Tensor | InterventionOutput:
    """``intervention(base, source, subspaces, **extra)``, with the units concatenated where
    pyvene concatenates them; the result has ``base``'s shape (or is an
    :class:`InterventionOutput` whose ``output`` has it). ``extra`` holds keywords the model
    was built to hand over (``args``: the module's input units, under ``as_adaptor``)."""
    if not concatenates_units(intervention, base):
        return intervention(base, source, subspaces, **extra)
    if torch.is_tensor(source):
        source = _flatten(source.expand_as(base))
    result = intervention(_flatten(base), source, subspaces, **extra)
    if isinstance(result, InterventionOutput):
        result.output = _unflatten(result.output, base)
        return result
    return _unflatten(result, base)


__all__ = ["InterventionOutput", "call_intervention", "concatenates_units", "may_concatenate"]
