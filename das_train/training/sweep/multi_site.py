"""``MultiSiteDASModule``: DAS at several positions of one (layer, component), in one pass.

A per-site sweep trains each site on its own: every step runs the source and the base through
the whole frozen model, for each of the P positions of a layer. Here the P sites of a layer
train together on cached activations (:mod:`das_train.training.sweep.site_cache`):

- the sources' activations at the site come from the cache (no source forward at all);
- the base batch is repeated P times, one copy per site, and the model runs from the site's
  block upward on the cached input of that block (the frozen prefix is not recomputed);
- one hook gives copy ``k`` of the batch site ``k``'s intervention at site ``k``'s position
  (each row's own base index for a per-row position, the source's own one being cached).

The loss is the sum of each site's mean counterfactual loss, so each intervention's gradient is
the one it would get alone, and Adam, being per-parameter, takes the same steps: the trained
interventions and their IIA equal the per-site path's (tests/test_batched_sweep.py checks it).

The sites are given as :class:`~das_train.training.das_module.DASModule` instances, built exactly
as the per-site path builds them (same seeds, so the same initial rotations); their
interventions are registered here, and each one's ``intervenable`` saves it as the per-site path
would.

Under DDP a step is several backward passes (one per pass of ``sites_per_pass``), each reaching
only its own sites' parameters, and some sites train not at all. DDP's reducer expects every
parameter in every backward and fails otherwise, so it is kept out of the step
(:func:`hand_synced`) and the step's summed gradients are averaged over the processes by hand,
once, before the optimizer steps: the average DDP would have taken, whatever the passes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from das_train.core.devices import place_model
from das_train.core.hooks import HookSet, as_3d, from_3d, read_hooked, write_hooked
from das_train.core.sites import resolve_site
from das_train.data.pair_contract import COUNTERFACTUAL_LABEL, RowPosition
from das_train.data.pair_inputs import model_inputs, side_positions
from das_train.training.das_module import DASModule, prediction_logits, prediction_only_options
from das_train.training.finite import check_finite
from das_train.training.metrics import InterchangeInterventionAccuracy, PairCount
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import site_index

Batch = Mapping[str, torch.Tensor]

CACHED_PREFIX = "cached_prefix"
"""Batch column: ``(batch, seq, d)`` the base's input to the sites' block."""
CACHED_SOURCES = "cached_sources"
"""Batch column: ``(batch, sites, w)`` the source's activation at each site's position (its own
index there, for a per-row position)."""


def repeat_rows(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x`` stacked ``times`` times along its first dimension (itself, not a copy, once)."""
    return x if times == 1 else x.repeat(times, *([1] * (x.dim() - 1)))


def passes_of(sites: Sequence[int], per_pass: int | None) -> list[list[int]]:
    """``sites`` cut into passes of ``per_pass`` (``None``: one pass), in order."""
    size = per_pass or max(len(sites), 1)
    return [list(sites[start : start + size]) for start in range(0, len(sites), size)]


def row_of(position: int | None, seq: int) -> int:
    """The row of ``position`` in a sequence of ``seq`` (``None``, a vector task's whole
    activation, is row 0 of its one-position sequence)."""
    row = 0 if position is None else position
    if not -seq <= row < seq:
        raise IndexError(f"position {position} out of range for a sequence of {seq}")
    return row % seq


def hand_synced(wrapper: nn.Module | None) -> bool:
    """Turns off DDP's own gradient reduction on ``wrapper`` (the strategy's model) for the
    current step; ``True`` when it is a DDP wrapper, whose gradients the caller must then
    average itself.

    With ``require_backward_grad_sync`` off, Lightning's manual backward does not arm the
    reducer, so backward passes only accumulate local gradients. Lightning turns the flag back
    on after each training step's forward, so this is called at the start of every step.
    """
    if not isinstance(wrapper, DistributedDataParallel):
        return False
    wrapper.require_backward_grad_sync = False
    return True


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Each parameter's gradient replaced by its mean over the processes, in one all-reduce
    (a parameter without a gradient counts as zero there, as it would in DDP)."""
    world = torch.distributed.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    start = 0
    for p, g in zip(parameters, grads):
        p.grad = flat[start : start + g.numel()].view_as(g).clone()
        start += g.numel()


class MultiSiteDASModule(lightning.LightningModule):
    """Trains the interventions of several :class:`DASModule` sites of one (layer, component).

    Args:
        model: the frozen model the sites' modules were built on; held, not registered.
        sites: one DASModule per position, all at the same layer and component, in DAS mode.
        prefix_skip: runs the model from the sites' block on the cached prefix; ``None`` runs
            the whole model (the cached sources are used either way).
        sites_per_pass: how many sites share one forward pass (``None``: all). The activations
            held for the backward grow with it; a step accumulates the gradients of its passes
            before the optimizer steps, so the result does not depend on it.
        trained: the indices of the sites that train (default: all); the others are only
            tested, with their interventions as built (:mod:`das_train.training.sweep.shared_prefix`).
        source_columns: for each site, its column of the batch's cached sources (default: the
            site's own index); the seeds of one position share a column.
    """

    def __init__(self, model: nn.Module, sites: Sequence[DASModule], prefix_skip: PrefixSkip | None,
                 sites_per_pass: int | None = None, trained: Sequence[int] | None = None,
                 source_columns: Sequence[int] | None = None) -> None:
        super().__init__()
        if sites_per_pass is not None and sites_per_pass < 1:
            raise ValueError(f"sites_per_pass must be >= 1 or None, got {sites_per_pass}")
        # Optimized by hand: one step may take several backward passes (see training_step).
        self.automatic_optimization = False
        if not sites:
            raise ValueError("MultiSiteDASModule needs at least one site")
        first = sites[0].hparams
        for site in sites:
            h = site.hparams
            if (h.layer, h.component) != (first.layer, first.component) or h.iit:
                raise ValueError("all sites must share one layer and component, in DAS mode (iit=False): "
                                 f"got layer {h.layer} {h.component} iit={h.iit} next to layer "
                                 f"{first.layer} {first.component}")
        object.__setattr__(self, "model", model)  # frozen and unregistered, as in DASModule
        object.__setattr__(self, "sites", list(sites))
        self.interventions = nn.ModuleList(site.intervention for site in sites)
        self.site = resolve_site(model, first.layer, first.component, "pos")
        self.positions = [site.position for site in sites]
        self.source_columns = list(range(len(sites))) if source_columns is None else list(source_columns)
        if len(self.source_columns) != len(sites):
            raise ValueError(f"{len(self.source_columns)} source columns for {len(sites)} sites")
        self.prefix_skip = prefix_skip
        self.lr = first.lr
        self.boundary_weight = first.boundary_penalty
        self.is_language_model_task = first.is_language_model_task
        self.call_options = prediction_only_options(model)
        self.test_iia = nn.ModuleList(InterchangeInterventionAccuracy() for _ in sites)
        self.test_pairs = PairCount()  # the sites share the test split: one count for all
        self._rows_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self.trained = list(range(len(sites))) if trained is None else sorted(trained)
        if any(not 0 <= k < len(sites) for k in self.trained):
            raise ValueError(f"trained sites {self.trained} out of range for {len(sites)} sites")
        self.passes = passes_of(range(len(sites)), sites_per_pass)
        """The test passes: every site, ``sites_per_pass`` at a time."""
        self.training_passes = passes_of(self.trained, sites_per_pass)
        """The training passes: the trained sites only."""
        for k, intervention in enumerate(self.interventions):
            if k not in self.trained:
                # Out of the optimizer and of DDP's reducer, which fails on parameters that
                # never reach the loss.
                intervention.requires_grad_(False)

    # -- the frozen model: placed once on the module's device, never moved back ----------------
    # As in DASModule: moved once, left in place at teardown; a model accelerate placed stays
    # put and units travel to the interventions' device.
    def on_fit_start(self) -> None:
        place_model(self.model, self.device)

    def on_test_start(self) -> None:
        place_model(self.model, self.device)

    def train(self, mode: bool = True) -> MultiSiteDASModule:
        super().train(mode)
        self.model.eval()  # DAS asks what the trained model computes: no dropout
        return self

    # -- forward ----------------------------------------------------------------------------------
    def _edit(self, sites: Sequence[int], sources: torch.Tensor, batch_size: int,
              row_positions: torch.Tensor | None) -> Callable[..., Any]:
        """The hook that gives copy j of the repeated batch the intervention of ``sites[j]``, at
        the site's position, or at each row's own index for a RowPosition (``row_positions``,
        the batch's ``(batch, columns)`` base indices)."""
        n_sites = len(sites)
        per_row = any(isinstance(self.positions[k], RowPosition) for k in sites)
        columns = [self.source_columns[k] for k in sites]

        def edit(module, args, kwargs, output):
            value = read_hooked(args, kwargs, output)
            x3 = as_3d(value)  # (sites * batch, seq, w)
            per_site = x3.view(n_sites, batch_size, *x3.shape[1:])  # (sites, batch, seq, w)
            if per_row:
                index = site_index([self.positions[k] for k in sites], x3.shape[1], batch_size, row_positions)
                rows = (torch.arange(n_sites, device=x3.device)[:, None],
                        torch.arange(batch_size, device=x3.device)[None, :], index.T.to(x3.device))
                picked = per_site[rows]  # (sites, batch, w)
                units = [picked[j][:, None] for j in range(n_sites)]  # each (batch, 1, w)
            else:
                # Plain ints, so each site's row is a view (no index tensor built per call).
                positions = [row_of(self.positions[k], x3.shape[1]) for k in sites]
                units = [per_site[j, :, p : p + 1] for j, p in enumerate(positions)]  # each (batch, 1, w)
                rows = self._write_rows(n_sites, batch_size, tuple(positions), x3.device)
            edited = [self.interventions[k](unit, sources[:, c : c + 1].to(x3.device))
                      for k, unit, c in zip(sites, units, columns)]  # each (batch, 1, w)
            # Out of place, so autograd sees the write.
            new = per_site.index_put(rows, torch.cat(edited, dim=1).transpose(0, 1).to(x3.dtype))
            return write_hooked(args, kwargs, output, from_3d(new.view(x3.shape), value))

        return edit

    def _write_rows(self, n_sites: int, batch_size: int, positions: tuple[int, ...],
                    device: torch.device) -> tuple[torch.Tensor, ...]:
        """``index_put`` indices of each copy's site row, made once per pass shape: every step
        of a fit asks for the same few. Tensors made under inference mode (a test) cannot be
        saved for a backward, so they are kept apart from those made for training."""
        key = (n_sites, batch_size, positions, device, torch.is_inference_mode_enabled())
        if key not in self._rows_cache:
            self._rows_cache[key] = (torch.arange(n_sites, device=device)[:, None],
                                     torch.arange(batch_size, device=device)[None, :],
                                     torch.tensor(positions, device=device)[:, None])
        return self._rows_cache[key]

    def forward(self, batch: Batch, sites: Sequence[int] | None = None) -> torch.Tensor:
        """Intervened prediction logits of ``sites`` (default: all), ``(sites, batch, classes)``."""
        sites = range(len(self.positions)) if sites is None else sites
        base = model_inputs(batch, "base", self.is_language_model_task)
        batch_size = next(iter(base.values())).shape[0]
        n_sites = len(sites)
        repeated = {k: repeat_rows(v, n_sites) for k, v in base.items()}
        if self.prefix_skip is not None:
            skipping = self.prefix_skip.active(repeat_rows(batch[CACHED_PREFIX], n_sites))
        else:
            skipping = nullcontext()
        with HookSet() as hooks, skipping:
            edit = self._edit(sites, batch[CACHED_SOURCES], batch_size, side_positions(batch, "base"))
            hooks.add(self.site.module, self.site.hook, edit)
            outputs = self.model(**repeated, **self.call_options)
        logits = prediction_logits(outputs)  # (sites * batch, classes)
        return logits.view(n_sites, batch_size, -1)

    # -- steps ------------------------------------------------------------------------------------
    def site_losses(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(sites,)`` each site's mean counterfactual loss (the per-site path's loss)."""
        n_sites, batch_size, classes = logits.shape
        per_row = nn.functional.cross_entropy(logits.reshape(-1, classes), labels.repeat(n_sites),
                                              reduction="none")
        return per_row.view(n_sites, batch_size).mean(1)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        # The loss is a sum over sites, so its gradient is the sum of each pass's: accumulating
        # them over the passes of ``sites_per_pass`` gives the one-pass step exactly.
        labels = batch[COUNTERFACTUAL_LABEL]  # (batch,)
        size = int(labels.shape[0])
        optimizer = self.optimizers()
        optimizer.zero_grad()
        sync_by_hand = hand_synced(self.trainer.strategy.model)
        losses, penalties = [], []
        for sites in self.training_passes:
            site_losses = self.site_losses(self(batch, sites), labels)
            loss = site_losses.sum()
            boundary = [self.interventions[k].boundary_sparsity_loss().reshape(()) for k in sites
                        if hasattr(self.interventions[k], "boundary_sparsity_loss")]
            if boundary:
                penalty = torch.stack(boundary).sum()
                penalties.append(penalty.detach())
                if self.boundary_weight:
                    loss = loss + self.boundary_weight * penalty
            self.manual_backward(loss)
            losses.append(site_losses.detach())
        if sync_by_hand:
            average_gradients(self.trained_parameters())
        optimizer.step()
        check_finite(self.trainer.global_step, dict(zip(self.trained, torch.cat(losses))),
                     {k: self.sites[k].intervenable.get_trainable_parameters() for k in self.trained})
        if penalties:
            self.log("train/boundary", torch.stack(penalties).sum() / len(self.trained), on_step=True,
                     on_epoch=False, batch_size=size)
        self.log("train/loss", torch.cat(losses).mean(), on_step=True, on_epoch=False, prog_bar=True,
                 batch_size=size)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        labels = batch[COUNTERFACTUAL_LABEL]
        size = int(labels.shape[0])
        for sites in self.passes:
            logits = self(batch, sites)  # (sites, batch, classes)
            for j, k in enumerate(sites):
                self.test_iia[k].update(logits[j], labels)
                self.log(f"test/iia/{k}", self.test_iia[k], on_step=False, on_epoch=True, batch_size=size)
        self.test_pairs.update(labels)
        self.log("test/pairs", self.test_pairs, on_step=False, on_epoch=True, batch_size=size)

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for k in self.trained for p in self.sites[k].intervenable.get_trainable_parameters()]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trained_parameters(), lr=self.lr)


__all__ = ["CACHED_PREFIX", "CACHED_SOURCES", "MultiSiteDASModule"]
