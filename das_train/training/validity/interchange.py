"""A fixed subspace interchanged at a site, and what the model predicts after it.

A featurizer that is not trained (:mod:`~das_train.training.validity.directions`) is tested
exactly as DAS is: on each test pair, the base's activation at the site takes the source's
coordinates in the featurizer's subspace and keeps the rest,

    b' = b + (s - b) Q Q^T        (Q: (d, k) orthonormal columns)

and the model runs on from there. :func:`interchange_predictions` reads the sources' activations
and the bases' input to the site's block from the cache a sweep already fills
(:func:`~das_train.training.sweep.site_cache.collect_layer`), so testing a featurizer costs one
forward from the site's block upward per test pair, and no source run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, as_3d, from_3d, read_hooked, write_hooked
from das_train.core.sites import resolve_site
from das_train.data.pair_inputs import Position, model_inputs, side_positions
from das_train.training.das_module import prediction_logits, prediction_only_options
from das_train.training.sweep.cached_pairs import cached_pairs, whole_batch
from das_train.training.sweep.multi_site import CACHED_PREFIX, CACHED_SOURCES
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import (
    LayerActivations,
    batched_sites_supported,
    site_index,
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


def _edit_hook(position: Position, sources: torch.Tensor, basis: torch.Tensor,
               row_positions: torch.Tensor | None):
    """The hook that interchanges ``basis`` at ``position`` of every row (each row's own index
    for a RowPosition), from the rows' cached ``sources`` ``(batch, w)``."""

    def edit(module, args, kwargs, output):
        value = read_hooked(args, kwargs, output)
        x3 = as_3d(value)  # (batch, seq, w)
        index = site_index([position], x3.shape[1], len(x3), row_positions)[:, 0].to(x3.device)
        rows = torch.arange(len(x3), device=x3.device)
        new = x3.clone()
        new[rows, index] = interchange(x3[rows, index], sources.to(x3.device), basis)
        return write_hooked(args, kwargs, output, from_3d(new, value))

    return edit


@torch.no_grad()
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
    reason = batched_sites_supported(model, layer, component)
    if reason is not None:
        raise ValueError(f"layer {layer} {component} cannot be tested from cached activations: {reason}")
    site = resolve_site(model, layer, component, "pos")
    table = activations.site_table
    if not 0 <= column < table.shape[1]:
        raise IndexError(f"column {column} out of range: the cache holds {table.shape[1]} positions")
    basis = check_basis(basis, table.shape[-1])
    if prefix_skip is not None and activations.prefix_table is None:
        raise ValueError("prefix_skip needs the cache's prefix (collect_layer with keep_prefix=True)")
    loader = DataLoader(cached_pairs(dict(columns), activations), batch_size=batch_size, collate_fn=whole_batch)
    device, options = input_device(model), prediction_only_options(model)
    predictions = []
    for batch in loader:
        inputs = {k: v.to(device) for k, v in model_inputs(batch, "base", is_language_model_task).items()}
        edit = _edit_hook(position, batch[CACHED_SOURCES][:, column], basis, side_positions(batch, "base"))
        with HookSet() as hooks:
            hooks.add(site.module, site.hook, edit)
            if prefix_skip is None:
                outputs = model(**inputs, **options)
            else:
                with prefix_skip.active(batch[CACHED_PREFIX]):
                    outputs = model(**inputs, **options)
        predictions.append(prediction_logits(outputs).argmax(-1).cpu())
    return torch.cat(predictions)


__all__ = ["check_basis", "interchange", "interchange_predictions"]
