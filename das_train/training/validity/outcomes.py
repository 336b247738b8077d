"""Per-pair test outcomes of every featurizer at a site: what the validity card's IIA (on all
pairs, on the changing ones) and its bootstrap intervals are computed from.

A group of (site, seed) jobs at one (layer, component), as a sweep fits it, is tested here
once more after the Trainer's test, on the whole test split in its row order: the trained
intervention of each job as it was trained (``das``) and, at the same site, each fixed basis
``Q`` given for the job (``b + (s - b) Q Q^T``; :mod:`~das_train.training.validity.directions`).
Every process computes the whole split the same way (no DDP exchange), so each holds the same
outcomes.

Two ways, chosen by the site, giving the same predictions:

- *cached* (sites the batched fit reads, answers scored by their first token): the test
  split's activations are collected once for the group's positions and every featurizer of
  every job runs from them (:func:`~das_train.training.validity.interchange.swap_predictions`),
  a job's featurizers side by side in one forward on the repeated base batch;
- *hooked* (heads and fused q/k/v slices, recurrent steps, ``task.answer_score=sequence``, IIT):
  each featurizer as a :class:`~das_train.training.das_module.DASModule` on the split's ordered
  loader, the trained one itself and, for a fixed basis, a frozen low-rank rotation set to ``Q``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from das_train.core.devices import input_device
from das_train.data.pair_contract import (
    BASE_ANSWER_IDS,
    BASE_LABEL,
    COUNTERFACTUAL_ANSWER_IDS,
    COUNTERFACTUAL_LABEL,
)
from das_train.data.pair_files.sequences import SEQUENCE
from das_train.training.das_module import DASModule
from das_train.training.sweep.groups import Job
from das_train.training.sweep.site_cache import batched_sites_supported, collect_layer
from das_train.training.validity.interchange import (
    CachedSwap,
    basis_swap,
    cached_prefix_skip,
    check_basis,
    intervention_swap,
    swap_predictions,
)

if TYPE_CHECKING:  # group_fit calls this module: the sweep's type only, for the annotations
    from das_train.training.sweep.group_fit import Sweep

TRAINED = "das"
"""The key of the trained intervention's outcomes."""
FIXED_ROTATION = "LowRankRotatedSpaceIntervention"
"""The intervention a fixed basis takes on the hooked way: ``b + (s - b) W W^T`` with ``W = Q``."""

Bases = Mapping[str, torch.Tensor]


@dataclass
class PairOutcomes:
    """One job's outcome on each test pair, in the split's row order."""

    changing: torch.Tensor
    """``(N,)`` bool: pairs whose counterfactual label (answer, in sequence mode) differs from
    the base's, where doing nothing is wrong."""
    correct: dict[str, torch.Tensor]
    """Featurizer -> ``(N,)`` bool: the intervened prediction is the counterfactual label;
    ``das`` first, then the fixed bases in the order given."""


def pairs_changing(pairs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(N,)`` bool for a batch (or a split's columns): the counterfactual answer's ids differ
    from the base answer's where the pairs carry whole answers, else the labels differ."""
    if COUNTERFACTUAL_ANSWER_IDS in pairs:
        return (pairs[BASE_ANSWER_IDS] != pairs[COUNTERFACTUAL_ANSWER_IDS]).any(-1).cpu()
    if BASE_LABEL not in pairs:
        raise ValueError(f"the test pairs have no {BASE_LABEL!r} column, so the changing pairs are unknown; "
                         f"columns: {sorted(pairs)}")
    return (pairs[BASE_LABEL] != pairs[COUNTERFACTUAL_LABEL]).cpu()


def _check_group(jobs: Sequence[Job], members: Sequence[DASModule], bases: Sequence[Bases]) -> None:
    if not len(jobs) == len(members) == len(bases) > 0:
        raise ValueError(f"need one member and one set of bases per job (at least one job), got {len(jobs)} "
                         f"jobs, {len(members)} members and {len(bases)} sets of bases")
    sites = {(site.layer, site.component) for site, _ in jobs}
    if len(sites) > 1:
        raise ValueError(f"a group's jobs share one (layer, component), got {sorted(sites)}")
    for (site, seed), fixed in zip(jobs, bases):
        if TRAINED in fixed:
            raise ValueError(f"{site.key} seed {seed}: {TRAINED!r} names the trained intervention, not a fixed basis")


@contextmanager
def _evaluating(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Every module (and submodule) in eval mode, each one's own mode restored afterwards."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in modes:
            module.training = mode


def cached_way(sweep: Sweep, jobs: Sequence[Job]) -> bool:
    """Whether the group is tested from the cache: as the batched fit trains, except that it
    does not ask for ``sweep.batched`` (the cache reads what the one-site path computes)."""
    site = jobs[0][0]
    return (not sweep.config.intervention.iit and sweep.config.task.answer_score != SEQUENCE
            and batched_sites_supported(sweep.model, site.layer, site.component) is None)


@torch.no_grad()
def group_outcomes(sweep: Sweep, jobs: Sequence[Job], members: Sequence[DASModule],
                   bases: Sequence[Bases]) -> list[PairOutcomes]:
    """Each job's :class:`PairOutcomes` on the test split (module docstring).

    Args:
        sweep: the sweep the group belongs to (its model, test split and config).
        jobs: the group's (site, seed) jobs, all at one (layer, component).
        members: the fitted DASModule of each job, in the order of ``jobs``.
        bases: for each job, featurizer name -> ``(w, k)`` orthonormal basis at its site.
    """
    _check_group(jobs, members, bases)
    # Forked: building a fixed basis's module and iterating loaders draw from the global
    # generator, and the sweep's fits after this one must not depend on whether it ran.
    with torch.random.fork_rng(devices=[]), _evaluating([sweep.model, *members, *(m.model for m in members)]):
        if cached_way(sweep, jobs):
            return _cached_outcomes(sweep, jobs, members, bases)
        return _hooked_outcomes(sweep, jobs, members, bases)


def _cached_outcomes(sweep: Sweep, jobs: Sequence[Job], members: Sequence[DASModule],
                     bases: Sequence[Bases]) -> list[PairOutcomes]:
    model, lm = sweep.model, sweep.spec.is_language_model_task
    layer, component = jobs[0][0].layer, jobs[0][0].component
    columns = sweep.splits.columns("test")
    positions = list(dict.fromkeys(site.position for site, _ in jobs))
    skip = cached_prefix_skip(model, layer, component, columns, lm)
    activations = collect_layer(model, layer, component, positions, sweep.splits.inputs("test"), lm,
                                keep_prefix=skip is not None)
    width = activations.site_table.shape[-1]
    swaps: list[CachedSwap] = []
    for (site, _), member, fixed in zip(jobs, members, bases):
        column = positions.index(site.position)
        swaps.append(CachedSwap(site.position, column, intervention_swap(member.intervention)))
        swaps += [CachedSwap(site.position, column, basis_swap(check_basis(q, width))) for q in fixed.values()]
    per_job = 1 + max(len(fixed) for fixed in bases)  # a job's featurizers share a forward
    predicted = swap_predictions(model, layer, component, swaps, columns, activations, skip,
                                 sweep.config.trainer.batch_size, lm, per_pass=per_job)  # (S, N)
    correct = iter(predicted == columns[COUNTERFACTUAL_LABEL])
    changing = pairs_changing(columns)
    return [PairOutcomes(changing, {name: next(correct) for name in (TRAINED, *fixed)}) for fixed in bases]


def fixed_basis_module(model: nn.Module, job: Job, basis: torch.Tensor, lm: bool) -> DASModule:
    """A frozen DASModule at ``job``'s site whose low-rank rotation is ``basis``: the fixed
    interchange, through the hook core, for sites the cache cannot read."""
    site = job[0]
    module = DASModule(model, layer=site.layer, component=site.component, position=site.position,
                       intervention=FIXED_ROTATION, low_rank_dimension=basis.shape[-1], is_language_model_task=lm)
    rotation = module.intervention.rotate_layer
    rotation.weight = check_basis(basis, rotation.weight.shape[0]).float()
    module.requires_grad_(False)
    module.intervention.to(input_device(model))
    return module.eval()


def _hooked_outcomes(sweep: Sweep, jobs: Sequence[Job], members: Sequence[DASModule],
                     bases: Sequence[Bases]) -> list[PairOutcomes]:
    # Under IIT the trained member runs its own copy of the model; the fixed bases run the
    # sweep's untouched one, the model the probes and directions read.
    lm = sweep.spec.is_language_model_task
    featurizers = [{TRAINED: member, **{name: fixed_basis_module(sweep.model, job, q, lm)
                                        for name, q in fixed.items()}}
                   for job, member, fixed in zip(jobs, members, bases)]
    found: list[dict[str, list[torch.Tensor]]] = [{name: [] for name in job} for job in featurizers]
    changing = []
    for batch in sweep.datamodule.ordered_dataloader("test"):
        changing.append(pairs_changing(batch))
        for job, outcomes in zip(featurizers, found):
            for name, module in job.items():
                device = input_device(module.model)
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                predicted, target, _ = module.predictions(moved)
                outcomes[name].append((predicted == target).cpu())
    changed = torch.cat(changing)
    return [PairOutcomes(changed, {name: torch.cat(parts) for name, parts in outcomes.items()}) for outcomes in found]


__all__ = ["FIXED_ROTATION", "TRAINED", "PairOutcomes", "cached_way", "fixed_basis_module", "group_outcomes",
           "pairs_changing"]
