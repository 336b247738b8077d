"""The sweep's fast path: the sites of one (layer, component), every seed of each, trained
together on cached activations, and the probes of the whole sweep fitted together.

The per-site path (:func:`das_train.training.run.fit_site`) trains each site alone: 300 steps of
a source forward, a base forward and a backward through the whole frozen model, then a probe
and a control probe, each its own Lightning fit. Here:

1. :func:`sweep_probes` collects every batched site's base activations (one forward per chunk
   of distinct inputs, all sites at once) and fits all their probes in two stacked fits
   (variable and control) per seed;
2. for each group of (site, seed) jobs sharing a layer and component,
   :func:`~das_train.training.site_cache.collect_layer` runs each distinct input once up to the
   site and keeps the frozen prefix and the site activations (train and test splits);
3. :class:`~das_train.training.multi_site.MultiSiteDASModule` trains the group's interventions
   in one Lightning fit, each step one forward from the site's block upward on the batch
   repeated once per site.

Every (site, seed) is built and seeded as the per-site path builds it, and sees the same
batches in the same order (the training order depends on ``cfg.seed``, not the sweep's seed), so the results agree with the per-site path's to float rounding
(tests/test_batched_sweep.py). Rows are written per group; ``train_seconds`` is the group's
time divided among its sites (the probes' shared fit is not in it).
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

import lightning
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from das_train.core.devices import input_device
from das_train.core.sites import resolve_site
from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_EMBEDS,
    BASE_IDS,
    BASE_MASK,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_EMBEDS,
    SOURCE_IDS,
    SOURCE_MASK,
    TaskSpec,
)
from das_train.data.samplers import workers_generator
from das_train.training.checkpoints import fit_resuming
from das_train.training.das_module import DASModule, model_inputs
from das_train.training.multi_site import CACHED_PREFIX, CACHED_SOURCES, MultiSiteDASModule
from das_train.training.pass_memory import (
    saved_bytes_of_forward,
    sites_per_pass_within,
    step_costs,
)
from das_train.training.probe import ProbeResult, probes_with_control
from das_train.training.site_cache import (
    DistinctInputs,
    LayerActivations,
    PrefixSkip,
    batched_sites_supported,
    collect_base_sites,
    collect_layer,
    starts_after_block,
)

log = logging.getLogger("das_train")


class CachedPairs(Dataset):
    """A split's pair columns next to one layer's cached activations, fetched a batch at a time.

    ``columns`` hold one row per pair; each of ``lookups`` is ``(table, rows)``, a table of
    activations per distinct input and the ``(N,)`` row of each pair in it, gathered per batch
    (so a pair's activations are never stored twice). ``__getitems__`` lets the DataLoader
    index every column once per batch instead of stacking rows; the row order is the split's,
    so samplers pick the same pairs as for the split itself.
    """

    def __init__(self, columns: dict[str, torch.Tensor],
                 lookups: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.columns = columns
        self.lookups = lookups or {}
        sizes = {name: len(value) for name, value in columns.items()}
        sizes.update({name: len(rows) for name, (_, rows) in self.lookups.items()})
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columns of different lengths: {sizes}")
        self.size = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        batch = {name: value[rows] for name, value in self.columns.items()}
        batch.update({name: table[pointers[rows]] for name, (table, pointers) in self.lookups.items()})
        return batch


def whole_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The collate function of :class:`CachedPairs` loaders: the batch is already stacked."""
    return batch


PAIR_COLUMNS = (BASE_IDS, BASE_MASK, BASE_EMBEDS, COUNTERFACTUAL_LABEL, BASE_VARIABLE, BASE_CONTROL,
                SOURCE_IDS, SOURCE_MASK, SOURCE_EMBEDS)
"""The columns of a split the batched path reads: inputs (for the caches), labels (for training
and the probes)."""
TRAINING_COLUMNS = (BASE_IDS, BASE_MASK, BASE_EMBEDS, COUNTERFACTUAL_LABEL)
"""The columns a training batch carries next to the cache: no source inputs (the cache holds
what the sources give) and no probe labels."""


def split_columns(loader: DataLoader) -> dict[str, torch.Tensor]:
    """The pair columns of an unshuffled split loader, stacked in row order.

    Read through the loader's batches, as training reads them, rather than by slicing the
    whole ``datasets.Dataset`` (which materializes the columns through Arrow's memory pool).
    """
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        for name in PAIR_COLUMNS:
            if name in batch:
                parts.setdefault(name, []).append(batch[name])
    return {name: torch.cat(values) for name, values in parts.items()}


class SplitReader:
    """The splits of one sweep, each read once: its pair columns and its distinct inputs.

    Every group of a sweep trains on the same training pairs and tests on the same test pairs;
    reading a split goes through the Arrow dataset row by row, so the sweep reads each once
    here instead of twice per group. The distinct inputs are found in batches of the split
    loader's size, so each collection runs the model on chunks of the size training uses.
    """

    def __init__(self, datamodule, is_language_model_task: bool) -> None:
        self.datamodule = datamodule
        self.is_language_model_task = is_language_model_task
        self._columns: dict[str, dict[str, torch.Tensor]] = {}
        self._inputs: dict[tuple[str, tuple[str, ...]], DistinctInputs] = {}

    def columns(self, split: str) -> dict[str, torch.Tensor]:
        """:func:`split_columns` of ``split``."""
        if split not in self._columns:
            self._columns[split] = split_columns(self.datamodule.ordered_dataloader(split))
        return self._columns[split]

    def inputs(self, split: str, sides: Sequence[str] = ("base", "source")) -> DistinctInputs:
        """The distinct inputs of ``split``'s pairs on ``sides``."""
        key = (split, tuple(sides))
        if key not in self._inputs:
            columns = self.columns(split)
            size = self.datamodule.ordered_dataloader(split).batch_size
            total = len(next(iter(columns.values())))
            batches = ({name: value[start : start + size] for name, value in columns.items()}
                       for start in range(0, total, size))
            self._inputs[key] = DistinctInputs(batches, self.is_language_model_task, sides=sides)
        return self._inputs[key]


def cached_pairs(columns: dict[str, torch.Tensor], activations: LayerActivations) -> CachedPairs:
    """A split's inputs and counterfactual labels next to one layer's cached activations."""
    wanted = {name: value for name, value in columns.items() if name in TRAINING_COLUMNS}
    lookups = {CACHED_SOURCES: (activations.site_table, activations.source_row)}
    if activations.prefix_table is not None:
        lookups[CACHED_PREFIX] = (activations.prefix_table, activations.base_row)
    return CachedPairs(wanted, lookups)


def group_jobs(jobs: Sequence[tuple[Any, int]]) -> list[list[tuple[Any, int]]]:
    """Consecutive (site, seed) jobs sharing a layer and component, as groups.

    A group holds every seed of its sites: seeds differ only in the interventions' starting
    point, so the seeds of a site train side by side in one fit, as its positions do. Any
    subset of a layer's jobs (one shard's, or what a resumed run has left) is a valid group.
    """
    return [list(g) for _, g in groupby(jobs, key=lambda job: (job[0].layer, job[0].component))]


def fallback_reason(cfg: DictConfig, model: torch.nn.Module, site: Any) -> str | None:
    """Why a group must take the per-site path, or ``None`` when it can be batched."""
    if not cfg.sweep.batched:
        return "sweep.batched=false"
    if cfg.intervention.iit:
        return "intervention.iit=true trains the shared model, which sites cannot share"
    return batched_sites_supported(model, site.layer, site.component)


def _first_rows(columns: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    # Rows read from the columns, not from a loader: iterating a shuffled loader would draw
    # from its generator and change the order of the training batches.
    return {name: value[:count] for name, value in columns.items()}


def _template(model: torch.nn.Module, columns: dict[str, torch.Tensor], is_language_model_task: bool):
    inputs = model_inputs(_first_rows(columns, 1), "base", is_language_model_task)
    device = input_device(model)
    return PrefixSkip.output_template(model, {k: v.to(device) for k, v in inputs.items()})


def one_site_costs(cfg: DictConfig, model: torch.nn.Module, datamodule, spec: TaskSpec,
                   jobs: Sequence[tuple[Any, int]]) -> dict[tuple[int, str], int] | None:
    """For ``sites_per_pass=auto``: the autograd bytes of one site's step at each (layer,
    component) of the run; ``None`` when not needed.

    Measured over every site of the run (this shard's, finished ones included, so a resumed
    run chooses as the first did) on the first training batch, the batch size training uses.
    """
    if not cfg.sweep.batched or cfg.sweep.sites_per_pass != "auto" or not jobs:
        return None
    batch = next(iter(datamodule.ordered_dataloader("train")))
    inputs = model_inputs(batch, "base", spec.is_language_model_task)
    return step_costs(model, [(site.layer, site.component) for site, _ in jobs], inputs)


def sites_per_pass(cfg: DictConfig, model: torch.nn.Module, layer: int, component: str, n_sites: int,
                   costs: dict[tuple[int, str], int] | None, columns: dict[str, torch.Tensor],
                   is_language_model_task: bool) -> int | None:
    """The group's sites per pass: ``sweep.sites_per_pass``, or with ``auto`` as many as keep
    no more than the costliest of ``costs`` (:func:`one_site_costs`; see
    :mod:`das_train.training.pass_memory`). Without ``costs`` for this site, the group's own
    one-site step is measured and is the budget (one site per pass)."""
    setting = cfg.sweep.sites_per_pass
    if setting != "auto":
        return setting
    if costs and (layer, component) in costs:
        one_site, budget = costs[(layer, component)], max(costs.values())
    else:
        rows = _first_rows(columns, cfg.trainer.batch_size)
        one_site = saved_bytes_of_forward(model, layer, component, model_inputs(rows, "base", is_language_model_task))
        budget = one_site
    chosen = sites_per_pass_within(budget, one_site, n_sites)
    log.info("%s-L%d: %d of %d sites per pass (one site's step keeps %.1f MiB for the backward, the budget is "
             "%.1f MiB)", component, layer, chosen, n_sites, one_site / 2**20, budget / 2**20)
    return chosen


ProbeKey = tuple[int, str, Any, int]
"""A probe's site and seed: ``(layer, component, position, seed)``."""


def sweep_probes(cfg: DictConfig, model: torch.nn.Module, datamodule, spec: TaskSpec,
                 jobs: Sequence[tuple[Any, int]], splits: SplitReader | None = None) -> dict[ProbeKey, ProbeResult]:
    """The probes of every (site, seed) of ``jobs`` that takes the batched path, fitted together.

    A probe fit is a few hundred small steps whose cost is mostly the loop's, whatever the
    number of probes stacked in it. So rather than two fits per layer, the sites' base
    activations are collected in one forward per chunk of distinct inputs and all the probes
    of a seed and width train in one fit for the variable and one for the control. Each probe
    is what it would be alone (:func:`~das_train.training.probe.fit_probes`).

    The tables hold one row per distinct base input per site. Where all the sites' tables
    would exceed ``sweep.probe.tables_mib``, the sites are taken in waves that each fit within
    it (one more pass over the inputs per wave), so a large model's sweep holds a bounded
    share of its activations rather than every layer's at once.
    """
    seeds_of: dict[tuple[int, str, Any], list[int]] = {}
    for site, seed in jobs:
        if fallback_reason(cfg, model, site) is None:
            seeds_of.setdefault((site.layer, site.component, site.position), []).append(seed)
    if not seeds_of:
        return {}
    splits = splits or SplitReader(datamodule, spec.is_language_model_task)
    columns = splits.columns("train")
    bases = splits.inputs("train", sides=("base",))
    results: dict[ProbeKey, ProbeResult] = {}
    for wave in probe_waves(model, list(seeds_of), bases.count, cfg.sweep.probe.tables_mib * 2**20):
        groups = collect_base_sites(model, wave, bases)
        for seed in dict.fromkeys(seed for key in wave for seed in seeds_of[key]):
            for members, table in groups:
                wanted = [j for j, i in enumerate(members) if seed in seeds_of[wave[i]]]
                if not wanted:
                    continue
                # A seed that only some of the group's sites still need (a resumed run) reads a copy.
                stacked = table if len(wanted) == len(members) else table[wanted]
                log.info("probes: %d sites in one fit (seed %d)", len(wanted), seed)
                fitted = probes_with_control(
                    stacked, columns[BASE_VARIABLE].long(), columns[BASE_CONTROL].long(), rows=bases.row["base"],
                    n_classes=spec.variable_values, lr=cfg.sweep.probe.lr,
                    weight_decay=cfg.sweep.probe.weight_decay, max_epochs=cfg.sweep.probe.max_epochs, seed=seed,
                )
                for j, probe in zip(wanted, fitted):
                    results[(*wave[members[j]], seed)] = probe
        del groups
        gc.collect()
    return results


def probe_waves(model: torch.nn.Module, sites: Sequence[tuple[int, str, Any]], rows: int,
                budget_bytes: float) -> list[list[tuple[int, str, Any]]]:
    """``sites`` in order, cut into waves whose tables of ``rows`` rows each (counted as
    float32) stay within ``budget_bytes``; a site over the budget, or of unknown width, is a
    wave of its own."""
    waves: list[list[tuple[int, str, Any]]] = []
    used = math.inf
    for key in sites:
        width = resolve_site(model, key[0], key[1], "pos").width
        cost = math.inf if width is None else rows * width * 4
        if used + cost > budget_bytes:
            waves.append([])
            used = 0
        waves[-1].append(key)
        used += cost
    return waves


def build_members(cfg: DictConfig, model, jobs: Sequence[tuple[Any, int]], lm: bool) -> list[DASModule]:
    """One DASModule per (site, seed) job, each seeded just before it is built, exactly as
    :func:`~das_train.training.run.fit_site` seeds, so each starts from the same rotation."""
    members = []
    for site, seed in jobs:
        lightning.seed_everything(seed, workers=True, verbose=False)
        members.append(DASModule(
            model, layer=site.layer, component=site.component, position=site.position,
            intervention=cfg.intervention.type, low_rank_dimension=cfg.intervention.low_rank_dimension,
            lr=cfg.intervention.lr, boundary_penalty=cfg.intervention.boundary_penalty,
            iit=False, is_language_model_task=lm,
        ))
    return members


def group_version(jobs: Sequence[tuple[Any, int]], trained: Sequence[int]) -> str:
    """The checkpoint and log name of a group: its layer and its trained jobs, each seed's
    positions followed by ``-s<seed>`` (``block_output-L1-name+last-s0+last-s1``).

    Named by the jobs that train, so a resumed run whose trained set changed (a changed
    ``sweep.skip_shared_prefix``, or a group of which some rows were already written) starts
    afresh instead of loading an optimizer of other shapes.
    """
    site = jobs[0][0]
    by_seed: dict[int, list[str]] = {}
    for k in trained:
        by_seed.setdefault(jobs[k][1], []).append(jobs[k][0].position_name)
    members = "+".join(f"{'+'.join(names)}-s{seed}" for seed, names in by_seed.items())
    return f"{site.component}-L{site.layer}-{members or 'untrained'}"


def fit_site_group(cfg: DictConfig, model, datamodule, spec: TaskSpec, jobs: Sequence[tuple[Any, int]],
                   run_dir: Path, probes: dict[ProbeKey, ProbeResult],
                   costs: dict[tuple[int, str], int] | None = None,
                   splits: SplitReader | None = None,
                   untrained: Mapping[Any, str] | None = None) -> list[dict[str, Any]]:
    """Trains and tests a group of (site, seed) jobs of one (layer, component) in one fit;
    returns their result rows in the order of ``jobs``, with their probes from ``probes``
    (:func:`sweep_probes`). ``costs`` are :func:`one_site_costs`', for
    ``sweep.sites_per_pass=auto``; ``splits`` the sweep's splits, read once for all groups;
    ``untrained`` maps the positions tested untrained to why
    (:func:`~das_train.training.shared_prefix.untrained_reason`)."""
    from das_train.training.run import (
        distributed_eval_loader,
        is_global_zero,
        make_trainer,
        result_row,
    )

    start = time.perf_counter()
    layer, component = jobs[0][0].layer, jobs[0][0].component
    lm = spec.is_language_model_task
    # The seeds of a site read the same cached source column.
    positions = list(dict.fromkeys(site.position for site, _ in jobs))
    splits = splits or SplitReader(datamodule, lm)
    train_columns = splits.columns("train")
    # A block-output site starts above its block; other sites start at their block, and below
    # layer 0 there is nothing to skip. Blocks returning caches cannot be skipped.
    after_block = starts_after_block(model, layer, component)
    template = _template(model, train_columns, lm) if layer > 0 or after_block else None
    if (layer > 0 or after_block) and template is None:
        log.info("layer %d: blocks return caches or attentions, so the prefix is recomputed", layer)
    untrained = untrained or {}
    trained = [k for k, (site, _) in enumerate(jobs) if site.position not in untrained]
    for site, seed in jobs:
        if site.position in untrained:
            log.info("%s seed %d: %s", site.key, seed, untrained[site.position])

    members = build_members(cfg, model, jobs, lm)
    per_pass = (sites_per_pass(cfg, model, layer, component, len(trained), costs, train_columns, lm)
                if trained else None)
    skip = PrefixSkip(model, layer, component, template) if template else None
    module = MultiSiteDASModule(model, members, skip, sites_per_pass=per_pass, trained=trained,
                                source_columns=[positions.index(site.position) for site, _ in jobs])
    version = group_version(jobs, trained)
    ckpt_dir = run_dir / "checkpoints" / version
    trainer = make_trainer(cfg, run_dir, version, ckpt_dir)
    if trained:
        _train_group(cfg, model, datamodule, module, trainer, ckpt_dir, positions, splits, template is not None,
                     [f"{site.key} seed {seed}" for site, seed in jobs])
    # The test split's cache is made only now, next to the training one rather than with it.
    test_acts = collect_layer(model, layer, component, positions, splits.inputs("test"), lm,
                              keep_prefix=template is not None)
    test = DataLoader(cached_pairs(splits.columns("test"), test_acts),
                      batch_size=cfg.trainer.batch_size, collate_fn=whole_batch)
    del test_acts
    tested = trainer.test(module, dataloaders=distributed_eval_loader(test), verbose=False)
    iias = [float(tested[0][f"test/iia/{k}"]) if tested else math.nan for k in range(len(jobs))]
    test_pairs = int(tested[0]["test/pairs"]) if tested else 0
    if is_global_zero():
        for (site, seed), member in zip(jobs, members):
            member.intervenable.save(str(run_dir / "interventions" / f"{site.key}-s{seed}"))
    # The Trainer, its loaders and the module reference each other: collect them here, so the
    # group's cache is freed before the next group's.
    del trainer, module, test
    gc.collect()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the rows are about to be written
    seconds = round((time.perf_counter() - start) / len(jobs), 2)
    return [result_row(site, seed, iia, probes[(site.layer, site.component, site.position, seed)],
                       member.intervention, test_pairs, seconds)
            for (site, seed), member, iia in zip(jobs, members, iias)]


def _train_group(cfg: DictConfig, model, datamodule, module: MultiSiteDASModule, trainer: lightning.Trainer,
                 ckpt_dir: Path, positions: list[Any], splits: SplitReader, keep_prefix: bool,
                 labels: list[str]) -> None:
    """Fits ``module`` on the training split's cache at its sites' ``positions``, resuming
    exactly from ``ckpt_dir``'s last checkpoint when there is one (``labels`` name the jobs in
    a non-finite training's error)."""
    from das_train.training.run import distributed_train_loader

    first = module.sites[0].hparams
    train_acts = collect_layer(model, first.layer, first.component, positions, splits.inputs("train"),
                               module.is_language_model_task, keep_prefix=keep_prefix)
    pairs = cached_pairs(splits.columns("train"), train_acts)
    del train_acts  # the loader's dataset holds what training reads
    # The datamodule's own training sampler, so the batches are fit_site's.
    train = DataLoader(pairs, batch_size=cfg.trainer.batch_size,
                       sampler=datamodule.training_sampler(pairs, cfg.trainer.batch_size),
                       generator=workers_generator(datamodule.seed), collate_fn=whole_batch)
    fit_resuming(trainer, module, distributed_train_loader(cfg, train), ckpt_dir, ckpt_dir.name, labels)


__all__ = ["CachedPairs", "SplitReader", "build_members", "cached_pairs", "fallback_reason", "fit_site_group",
           "group_jobs", "group_version", "one_site_costs", "probe_waves", "sites_per_pass", "sweep_probes"]
