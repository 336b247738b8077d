"""A fixed subspace interchanged at a site, and what the model predicts after it.

A featurizer that is not trained (:mod:`~das_train.training.validity.directions`) is tested
exactly as DAS is: on each test pair, the base's activation at the site takes the source's
coordinates in the featurizer's subspace and keeps the rest,

    b' = b + (s - b) Q Q^T        (Q: (d, k) orthonormal columns)

and the model runs on from there. :func:`interchange_predictions` reads the sources' activations
and the bases' input to the site's block from the cache a sweep already fills
(:func:`~das_train.training.sweep.site_cache.collect_layer`), so testing a featurizer costs one
forward from the site's block upward per test pair, and no source run.

:func:`swap_predictions` is the same for any :data:`Swap` (a fixed basis, a trained
intervention), several of them side by side in one forward on the base batch repeated once per
swap, as the batched fit trains its sites.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, as_3d, from_3d, read_hooked, write_hooked
from das_train.core.sites import resolve_site
from das_train.data.pair_inputs import Position, model_inputs, side_positions
from das_train.training.das_module import prediction_logits, prediction_only_options
from das_train.training.sweep.cached_pairs import cached_pairs, first_rows, whole_batch
from das_train.training.sweep.multi_site import (
    CACHED_PREFIX,
    CACHED_SOURCES,
    passes_of,
    repeat_rows,
)
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import (
    LayerActivations,
    batched_sites_supported,
    site_index,
    starts_after_block,
)

_ORTHONORMAL_TOLERANCE = 1e-4


def check_basis(basis: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``basis`` as it is once it is ``(d, k)`` with orthonormal columns (and ``d == dim`` when
    given); else a ValueError naming the shape or how far ``Q^T Q`` is from the identity."""
    if basis.dim() != 2 or not 1 <= basis.shape[1] <= basis.shape[0]:
        raise ValueError(f"basis must be (d, k) with 1 <= k <= d, got {tuple(basis.shape)}")
    if dim is not None and basis.shape[0] != dim:
        raise ValueError(f"basis has {basis.shape[0]} rows but the site's activation is {dim} wide")
    gram = basis.double().T @ basis.double()
    error = float((gram - torch.eye(basis.shape[1], dtype=torch.float64, device=basis.device)).abs().max())
    if error > _ORTHONORMAL_TOLERANCE:
        raise ValueError(f"basis columns are not orthonormal: max |Q^T Q - I| = {error:.2e}")
    return basis


def interchange(base: torch.Tensor, source: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``base + (source - base) @ basis @ basis.T`` over the last dimension (any leading
    shape), computed in the basis's dtype and returned in the base's."""
    q = basis.to(base.device)
    delta = (source.to(q.dtype) - base.to(q.dtype)) @ q  # (..., k)
    return (base.to(q.dtype) + delta @ q.T).to(base.dtype)


Swap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""What a featurizer writes at a site: ``(base_rows (B, w), source_rows (B, w)) -> (B, w)``."""


@dataclass(frozen=True)
class CachedSwap:
    """One featurizer at one position of a cached (layer, component): where it writes, which
    column of the cache's site table holds the sources' activations there, and what it writes."""

    position: Position
    column: int
    swap: Swap


def basis_swap(basis: torch.Tensor) -> Swap:
    """The fixed interchange of ``basis`` (:func:`interchange`) as a :data:`Swap`."""
    return lambda base, source: interchange(base, source, basis)


def intervention_swap(intervention: nn.Module) -> Swap:
    """A trained intervention as a :data:`Swap`, called on one unit per row as the batched fit
    calls it (``(B, 1, w)`` base and source), on its own device: Lightning's teardown may have
    left it on the CPU while the model stays on the GPU."""
    weights = [*intervention.parameters(), *intervention.buffers()]

    def swap(base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        device = weights[0].device if weights else base.device
        written = intervention(base[:, None].to(device), source[:, None].to(device))  # (B, 1, w)
        return written[:, 0].to(base.device, base.dtype)

    return swap


def cached_prefix_skip(model: nn.Module, layer: int, component: str, columns: Mapping[str, torch.Tensor],
                       is_language_model_task: bool = True) -> PrefixSkip | None:
    """How the batched fit skips the frozen prefix at (layer, component), for a split's
    ``columns``: a block-output site starts above its block, other sites at their block, and
    below layer 0, or where blocks return caches or attentions, nothing is skipped (``None``;
    collect the cache without its prefix then)."""
    if layer == 0 and not starts_after_block(model, layer, component):
        return None
    device = input_device(model)
    inputs = model_inputs(first_rows(dict(columns), 1), "base", is_language_model_task)
    template = PrefixSkip.output_template(model, {k: v.to(device) for k, v in inputs.items()})
    return None if template is None else PrefixSkip(model, layer, component, template)


def _edit_hook(swaps: Sequence[CachedSwap], sources: torch.Tensor, row_positions: torch.Tensor | None):
    """The hook that gives copy ``j`` of the repeated base batch ``swaps[j]`` at its position
    (each row's own index for a RowPosition), from the rows' cached ``sources``
    ``(batch, columns, w)``."""

    def edit(module, args, kwargs, output):
        value = read_hooked(args, kwargs, output)
        x3 = as_3d(value)  # (copies * batch, seq, w)
        copies = x3.view(len(swaps), -1, *x3.shape[1:])  # (copies, batch, seq, w)
        batch = copies.shape[1]
        index = site_index([s.position for s in swaps], x3.shape[1], batch, row_positions).to(x3.device)
        rows = torch.arange(batch, device=x3.device)
        new = copies.clone()
        for j, s in enumerate(swaps):
            written = s.swap(copies[j, rows, index[:, j]], sources[:, s.column].to(x3.device))
            new[j, rows, index[:, j]] = written.to(x3.dtype)
        return write_hooked(args, kwargs, output, from_3d(new.view(x3.shape), value))

    return edit


def _check_cache(model: nn.Module, layer: int, component: str, swaps: Sequence[CachedSwap],
                 activations: LayerActivations, prefix_skip: PrefixSkip | None) -> None:
    reason = batched_sites_supported(model, layer, component)
    if reason is not None:
        raise ValueError(f"layer {layer} {component} cannot be tested from cached activations: {reason}")
    held = activations.site_table.shape[1]
    bad = [s.column for s in swaps if not 0 <= s.column < held]
    if bad or not swaps:
        raise IndexError(f"cache columns {bad} out of range (the cache holds {held} positions)" if bad
                         else "no swaps to test")
    if prefix_skip is not None and activations.prefix_table is None:
        raise ValueError("prefix_skip needs the cache's prefix (collect_layer with keep_prefix=True)")


@torch.no_grad()
def swap_predictions(
    model: nn.Module,
    layer: int,
    component: str,
    swaps: Sequence[CachedSwap],
    columns: Mapping[str, torch.Tensor],
    activations: LayerActivations,
    prefix_skip: PrefixSkip | None = None,
    batch_size: int = 256,
    is_language_model_task: bool = True,
    per_pass: int | None = None,
) -> torch.Tensor:
    """``(S, N)`` int64: the model's prediction on each pair of a split after each of the ``S``
    ``swaps`` at (layer, component), in the split's row order.

    Each forward runs the base batch repeated once per swap of a pass (``per_pass`` swaps,
    ``None``: all at once), from the site's block upward when ``prefix_skip`` is given (the
    cache must have kept the prefix), else from the embeddings; the sources come from the
    cache either way. ``columns``, ``activations``: as for :func:`interchange_predictions`.
    """
    _check_cache(model, layer, component, swaps, activations, prefix_skip)
    site = resolve_site(model, layer, component, "pos")
    loader = DataLoader(cached_pairs(dict(columns), activations), batch_size=batch_size, collate_fn=whole_batch)
    device, options = input_device(model), prediction_only_options(model)
    passes = passes_of(swaps, per_pass)
    predictions: list[list[torch.Tensor]] = [[] for _ in swaps]
    for batch in loader:
        base = model_inputs(batch, "base", is_language_model_task)
        done = 0
        for chosen in passes:
            inputs = {k: repeat_rows(v, len(chosen)).to(device) for k, v in base.items()}
            edit = _edit_hook(chosen, batch[CACHED_SOURCES], side_positions(batch, "base"))
            with HookSet() as hooks:
                hooks.add(site.module, site.hook, edit)
                if prefix_skip is None:
                    outputs = model(**inputs, **options)
                else:
                    with prefix_skip.active(repeat_rows(batch[CACHED_PREFIX], len(chosen))):
                        outputs = model(**inputs, **options)
            predicted = prediction_logits(outputs).argmax(-1).cpu().view(len(chosen), -1)  # (copies, batch)
            for j in range(len(chosen)):
                predictions[done + j].append(predicted[j])
            done += len(chosen)
    return torch.stack([torch.cat(rows) for rows in predictions])


def interchange_predictions(
    model: nn.Module,
    layer: int,
    component: str,
    position: Position,
    basis: torch.Tensor,
    columns: Mapping[str, torch.Tensor],
    activations: LayerActivations,
    column: int = 0,
    prefix_skip: PrefixSkip | None = None,
    batch_size: int = 256,
    is_language_model_task: bool = True,
) -> torch.Tensor:
    """``(N,)`` int64: the model's prediction on each pair of a split after interchanging
    ``basis`` at the site, in the split's row order.

    Args:
        model: the frozen model (evaluated as it is: put it in eval mode first).
        layer, component, position: the site, as a sweep names it.
        basis: ``(w, k)`` orthonormal columns in the site's activation space.
        columns: the split's pair columns
            (:func:`~das_train.training.sweep.cached_pairs.split_columns`).
        activations: the split's cache at (layer, component) (:func:`collect_layer`); its
            site table's column ``column`` holds this position's activations.
        prefix_skip: runs the model from the site's block on the cached prefix (the cache must
            have kept it); ``None`` runs the whole base (the sources still come from the cache).
    """
    basis = check_basis(basis, activations.site_table.shape[-1])
    swap = CachedSwap(position, column, basis_swap(basis))
    return swap_predictions(model, layer, component, [swap], columns, activations, prefix_skip, batch_size,
                            is_language_model_task)[0]


__all__ = ["CachedSwap", "Swap", "basis_swap", "cached_prefix_skip", "check_basis", "interchange",
           "interchange_predictions", "intervention_swap", "swap_predictions"]
