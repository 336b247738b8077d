"""The one scaffold of a sweep's fits: a group of 1..n (site, seed) jobs, trained, tested,
saved and turned into result rows.

A group is either

- one job through the per-site :class:`~das_train.training.das_module.DASModule`
  (:class:`OneSiteFit`): every step runs the whole frozen model on the source and the base.
  IIT, ``sweep.batched=false`` and sites the site cache cannot read take this way; or
- the jobs of one (layer, component), every seed of each, trained together on cached
  activations (:class:`BatchedFit`): :func:`~das_train.training.sweep.site_cache.collect_layer`
  runs each distinct input once up to the site, and
  :class:`~das_train.training.sweep.multi_site.MultiSiteDASModule` trains the group in one
  Lightning fit, each step one forward from the site's block upward on the batch repeated once
  per site.

Everything else is :func:`fit_group`'s, the same for both: seeding each job's intervention as
it is built (so it starts from the same rotation whichever way it trains), the Trainer,
resuming from ``last.ckpt``, testing, saving, removing the checkpoints once the rows exist,
and the row. Every job sees the same batches in the same order either way (the training order
depends on the run's ``seed``, not the job's seed), so the two ways agree to float rounding
(tests/test_batched_sweep.py, tests/test_seed_groups.py).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader

from das_train.core.devices import input_device
from das_train.core.sites import resolve_site
from das_train.data.pair_contract import TaskSpec
from das_train.data.pair_datamodule import PairDataModule
from das_train.data.pair_inputs import model_inputs
from das_train.data.samplers import workers_generator
from das_train.training.checkpoints import fit_resuming
from das_train.training.das_module import DASModule
from das_train.training.probe_results import ProbeResult
from das_train.training.samplers import (
    distributed_eval_loader,
    distributed_train_loader,
    train_loader,
)
from das_train.training.schema import InterventionConfig, RunConfig
from das_train.training.sweep.cached_pairs import SplitReader, cached_pairs, first_rows, whole_batch
from das_train.training.sweep.groups import Job, group_version
from das_train.training.sweep.multi_site import MultiSiteDASModule
from das_train.training.sweep.pass_memory import sites_per_pass
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.probes import ProbeKey
from das_train.training.sweep.site_cache import collect_layer, starts_after_block
from das_train.training.sweep.sites import SweepSite
from das_train.training.trainers import make_trainer
from das_train.training.validity.columns import outcome_fields
from das_train.training.validity.job_bases import job_bases
from das_train.training.validity.outcome_store import outcomes_path, save_outcomes
from das_train.training.validity.outcomes import group_outcomes

log = logging.getLogger("das_train")


@dataclass
class Sweep:
    """What every fit of one sweep shares: the run, its model and pairs read once, the probes
    fitted for all its jobs (:func:`~das_train.training.sweep.probes.sweep_probes`), the
    one-site step costs for ``sweep.sites_per_pass=auto``
    (:func:`~das_train.training.sweep.pass_memory.one_site_costs`) and the positions tested
    untrained, with why (:func:`~das_train.training.sweep.shared_prefix.untrained_positions`)."""

    config: RunConfig
    model: nn.Module
    datamodule: PairDataModule
    spec: TaskSpec
    run_dir: Path
    splits: SplitReader
    probes: dict[ProbeKey, ProbeResult]
    costs: dict[tuple[int, str], int] | None = None
    untrained: Mapping[Any, str] = field(default_factory=dict)


def build_member(intervention: InterventionConfig, model: nn.Module, site: SweepSite, seed: int,
                 lm: bool) -> DASModule:
    """One job's DASModule, seeded just before it is built, so each job starts from the same
    intervention whichever fit it takes."""
    lightning.seed_everything(seed, workers=True, verbose=False)
    return DASModule(
        model, layer=site.layer, component=site.component, position=site.position,
        intervention=intervention.type, low_rank_dimension=intervention.low_rank_dimension,
        lr=intervention.lr, boundary_penalty=intervention.boundary_penalty,
        iit=intervention.iit, is_language_model_task=lm,
    )


class OneSiteFit:
    """A group of one job through the per-site module, on the datamodule's own loaders."""

    def __init__(self, sweep: Sweep, jobs: Sequence[Job]) -> None:
        ((site, seed),) = jobs
        # IIT trains the model itself: each site trains its own copy, so no site starts from the
        # model another site's training left (the probes read the shared, untouched model).
        model = copy.deepcopy(sweep.model) if sweep.config.intervention.iit else sweep.model
        self.sweep = sweep
        self.module = build_member(sweep.config.intervention, model, site, seed, sweep.spec.is_language_model_task)
        self.members = [self.module]

    def train_loader(self) -> DataLoader:
        return train_loader(self.sweep.config.trainer, self.sweep.datamodule)

    def test_loader(self) -> DataLoader:
        return self.sweep.datamodule.test_dataloader()

    def iias(self, tested: list[dict[str, float]]) -> list[float]:
        return [float(tested[0]["test/iia"]) if tested else math.nan]


class BatchedFit:
    """The jobs of one (layer, component) trained together on the splits' cached activations."""

    def __init__(self, sweep: Sweep, jobs: Sequence[Job], trained: Sequence[int]) -> None:
        config, model, lm = sweep.config, sweep.model, sweep.spec.is_language_model_task
        self.sweep = sweep
        self.layer, self.component = jobs[0][0].layer, jobs[0][0].component
        # The seeds of a site read the same cached source column.
        self.positions = list(dict.fromkeys(site.position for site, _ in jobs))
        columns = sweep.splits.columns("train")
        # A block-output site starts above its block; other sites start at their block, and below
        # layer 0 there is nothing to skip. Blocks returning caches cannot be skipped.
        skippable = self.layer > 0 or starts_after_block(model, self.layer, self.component)
        template = block_output_template(model, columns, lm) if skippable else None
        if skippable and template is None:
            log.info("layer %d: blocks return caches or attentions, so the prefix is recomputed", self.layer)
        self.keep_prefix = template is not None
        self.members = [build_member(config.intervention, model, site, seed, lm) for site, seed in jobs]
        per_pass = (sites_per_pass(config.sweep.sites_per_pass, config.trainer.batch_size, model, self.layer,
                                   self.component, len(trained), sweep.costs, columns, lm)
                    if trained else None)
        skip = PrefixSkip(model, self.layer, self.component, template) if template else None
        self.module = MultiSiteDASModule(model, self.members, skip, sites_per_pass=per_pass, trained=trained,
                                         source_columns=[self.positions.index(site.position) for site, _ in jobs])

    def _cached(self, split: str):
        s = self.sweep
        activations = collect_layer(s.model, self.layer, self.component, self.positions, s.splits.inputs(split),
                                    s.spec.is_language_model_task, keep_prefix=self.keep_prefix)
        return cached_pairs(s.splits.columns(split), activations)

    def train_loader(self) -> DataLoader:
        trainer, datamodule = self.sweep.config.trainer, self.sweep.datamodule
        pairs = self._cached("train")
        # The datamodule's own training sampler, so the batches are the per-site fit's.
        loader = DataLoader(pairs, batch_size=trainer.batch_size,
                            sampler=datamodule.training_sampler(pairs, trainer.batch_size),
                            generator=workers_generator(datamodule.seed), collate_fn=whole_batch)
        return distributed_train_loader(trainer, loader)

    def test_loader(self) -> DataLoader:
        # The test split's cache is made only now, next to the training one rather than with it.
        return DataLoader(self._cached("test"), batch_size=self.sweep.config.trainer.batch_size,
                          collate_fn=whole_batch)

    def iias(self, tested: list[dict[str, float]]) -> list[float]:
        return [float(tested[0][f"test/iia/{k}"]) if tested else math.nan for k in range(len(self.members))]


def block_output_template(model: nn.Module, columns: dict[str, torch.Tensor], lm: bool):
    """What block 0 returns on the split's first base (:meth:`PrefixSkip.output_template`)."""
    inputs = model_inputs(first_rows(columns, 1), "base", lm)
    device = input_device(model)
    return PrefixSkip.output_template(model, {k: v.to(device) for k, v in inputs.items()})


def fit_group(sweep: Sweep, jobs: Sequence[Job], batched: bool) -> list[dict[str, Any]]:
    """Trains and tests ``jobs`` in one fit and saves their interventions; returns their result
    rows in the order of ``jobs``. ``batched``: the jobs share a (layer, component) and train
    on cached activations (:class:`BatchedFit`); otherwise ``jobs`` is one job
    (:class:`OneSiteFit`). Jobs at positions in ``sweep.untrained`` are tested as built."""
    start = time.perf_counter()
    trained = [k for k, (site, _) in enumerate(jobs) if site.position not in sweep.untrained]
    for site, seed in jobs:
        if site.position in sweep.untrained:
            log.info("%s seed %d: %s", site.key, seed, sweep.untrained[site.position])
    fit = BatchedFit(sweep, jobs, trained) if batched else OneSiteFit(sweep, jobs)
    version = group_version(jobs, trained)
    ckpt_dir = sweep.run_dir / "checkpoints" / version
    trainer = make_trainer(sweep.config, sweep.run_dir, version, ckpt_dir)
    if trained:
        fit_resuming(trainer, fit.module, fit.train_loader(), ckpt_dir, version,
                     [f"{site.key} seed {seed}" for site, seed in jobs])
    tested = trainer.test(fit.module, dataloaders=distributed_eval_loader(fit.test_loader()), verbose=False)
    iias = fit.iias(tested)
    test_pairs = int(tested[0]["test/pairs"]) if tested else 0
    members = fit.members
    cards = card_fields(sweep, jobs, members, trainer.is_global_zero)
    if trainer.is_global_zero:
        for (site, seed), member in zip(jobs, members):
            member.intervenable.save(str(sweep.run_dir / "interventions" / f"{site.key}-s{seed}"))
    # The Trainer, its loaders and the module reference each other: collect them here, so a
    # group's cache is freed before the next group's.
    del trainer, fit
    gc.collect()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the rows are about to be written
    seconds = round((time.perf_counter() - start) / len(jobs), 2)
    return [{**result_row(site, seed, iia, sweep.probes[(site.layer, site.component, site.position, seed)],
                          member.intervention, test_pairs, seconds), **card}
            for (site, seed), member, iia, card in zip(jobs, members, iias, cards)]


def card_fields(sweep: Sweep, jobs: Sequence[Job], members: Sequence[DASModule], writes: bool) -> list[dict[str, Any]]:
    """Each job's validity-card fields: its trained intervention and the untrained featurizers
    of ``sweep.methods`` tested on every test pair (each rank the whole split, so no rank
    waits for another); ``writes`` (rank 0) also saves the per-pair outcomes."""
    config = sweep.config
    bases = []
    for site, seed in jobs:
        probe = sweep.probes[(site.layer, site.component, site.position, seed)]
        width = resolve_site(sweep.model, site.layer, site.component, "pos").width
        bases.append(job_bases(config.sweep.methods, probe.bases, width, config.intervention.low_rank_dimension,
                               seed, site.key))
    fields = []
    for (site, seed), outcome in zip(jobs, group_outcomes(sweep, jobs, members, bases)):
        if writes:
            path = outcomes_path(sweep.run_dir, site.component, site.layer, site.position_name, seed)
            save_outcomes(path, outcome.changing, outcome.correct)
        fields.append(outcome_fields(outcome.changing, outcome.correct))
    return fields


def result_row(site: SweepSite, seed: int, iia: float, probe: ProbeResult, intervention: nn.Module,
               test_pairs: int, seconds: float) -> dict[str, Any]:
    """One row of ``results.csv``. ``train_seconds`` is the fit's time divided among its jobs
    (the probes, fitted for the whole sweep at once, are not in it)."""
    size = getattr(intervention, "intervention_size", None)  # boundless interventions only
    return {
        "layer": site.layer, "component": site.component, "position": site.table_position,
        "position_name": site.position_name, "seed": seed, "iia": iia,
        "probe_accuracy": probe.accuracy, "control_accuracy": probe.control_accuracy,
        "selectivity": probe.selectivity, "intervention_size": size() if callable(size) else "",
        "test_pairs": test_pairs, "train_seconds": seconds,
    }


__all__ = ["BatchedFit", "OneSiteFit", "Sweep", "build_member", "card_fields", "fit_group", "result_row"]
