"""The DAS sweep job: every (site, seed) of the config trained, tested and probed, one row each.

For every site of the sweep ((layer, position), plus the embedding row) and every seed it
trains one intervention, measures IIA on held-out pairs, reads the probe and control fitted at
the same site, and appends a row to ``results.csv`` (this shard's rows file when sharded).
Jobs are fitted in groups (:func:`~das_train.training.sweep.group_fit.fit_group`): by default
the jobs of one layer train together on cached activations, with the results one job at a time
gives. Re-running the same run directory skips finished rows and resumes a cut-off fit from
its last checkpoint. The last shard to finish writes the table and the heatmaps.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning
from tqdm.auto import tqdm

from das_train.core.fault_points import fault_point
from das_train.training import config_fingerprint as fingerprints
from das_train.training import preflight, reports
from das_train.training import run_dir as run_dir_state
from das_train.training.answer_scoring import restrict_to_answers
from das_train.training.model_loading import build_model, number_of_layers
from das_train.training.outputs import results_path, setup_output, write_outputs
from das_train.training.pair_data import prepare_pairs
from das_train.training.publishing import publish
from das_train.training.ranks import is_global_zero
from das_train.training.reinit import reinitialize
from das_train.training.schema import ConfigError, RunConfig
from das_train.training.sweep.cached_pairs import SplitReader
from das_train.training.sweep.group_fit import Sweep, fit_group
from das_train.training.sweep.groups import Job, fits_of, group_jobs
from das_train.training.sweep.pass_memory import one_site_costs
from das_train.training.sweep.probes import sweep_probes
from das_train.training.sweep.shared_prefix import untrained_positions
from das_train.training.sweep.sites import SweepSite, build_sites
from das_train.training.task_loading import load_task
from das_train.training.validity.companions import companion_configs, companion_rows

log = logging.getLogger("das_train")


def run_das_sweep(config: RunConfig, run_dir: Path) -> Path:
    """Runs (or resumes) this shard's jobs of the sweep and of its companion sweeps
    (:func:`run_companions`), then, once every shard's rows are in, writes the table and
    heatmaps and publishes; with ``sweep.merge`` only the last part."""
    fingerprint = fingerprints.config_fingerprint(config)
    if config.sweep.merge:
        run_companions(config)  # each merges its own shards' rows
        return merge_shards(config, run_dir, fingerprint)
    every_job, variable = fit_sweep(config, run_dir, fingerprint)
    run_companions(config)  # once the main sweep's model is freed: one model in memory at a time
    if not is_global_zero():
        return run_dir
    return finish(config, run_dir, fingerprint, every_job, variable)


def fit_sweep(config: RunConfig, run_dir: Path, fingerprint: str) -> tuple[list[Job], str]:
    """Fits (or resumes) this shard's jobs; returns every (site, seed) of the sweep and the
    variable's name, for :func:`finish`."""
    lightning.seed_everything(config.seed, verbose=False)
    task = load_task(config.task.name, config.task)
    model, tokenizer = build_model(config, task)
    if config.model.kind == "hub":
        preflight.check_loaded_model(config, model, preflight.task_spec(task, tokenizer))
    if config.task.score_among == "answers":  # before the filter: it scores as the sweep will
        spec = preflight.task_spec(task, tokenizer)
        if spec.is_language_model_task:
            restrict_to_answers(model, spec.label_names)
    datamodule = prepare_pairs(config, task, tokenizer, model, run_dir)
    if config.model.random_init:  # after the filter: the same pairs as the trained model's sweep
        reinitialize(model, config.seed)
    spec = datamodule.spec()
    sites = build_sites(config.sweep, spec, number_of_layers(model))
    every_job = [(s, seed) for s in sites for seed in config.sweep.seeds]
    # Every (site, seed) in a fixed order; shard i of n takes every n-th one from i.
    jobs = every_job[config.sweep.shard :: config.sweep.num_shards]
    if is_global_zero():
        run_dir_state.write_plan(run_dir, fingerprint, every_job)
    rows, done = run_dir_state.resume_rows(run_dir, results_path(run_dir, config.sweep), fingerprint)
    todo = [(s, seed) for s, seed in jobs if (s.layer, s.component, s.table_position, seed) not in done]
    if done:
        print(f"resuming: {len(done)} finished site runs found in {run_dir}, {len(todo)} to go", flush=True)
    sweep = start_sweep(config, model, datamodule, run_dir, jobs, todo, sites)
    fault_point("probes")
    fit_jobs(sweep, todo, rows, fingerprint)
    return every_job, spec.variable


def run_companions(config: RunConfig) -> None:
    """Runs (or resumes) the companion sweeps ``config`` asks for (the validity card's Boundless
    DAS and random-init columns), each in its own folder of the run directory, which is
    prepared, locked and recorded as a run directory of its own."""
    for name, companion in companion_configs(config).items():
        companion_dir = Path(companion.run_dir)
        companion_dir.mkdir(parents=True, exist_ok=True)
        log.info("companion sweep %s: %s", name, companion_dir)
        results_file = results_path(companion_dir, companion.sweep)
        with run_dir_state.prepared(companion, companion_dir, results_file, writer=is_global_zero()):
            setup_output(companion, companion_dir)
            run_das_sweep(companion, companion_dir)


def start_sweep(config: RunConfig, model, datamodule, run_dir: Path, jobs: Sequence[Job], todo: Sequence[Job],
                sites: Sequence[SweepSite]) -> Sweep:
    """What the fits of ``todo`` share; ``jobs`` (this shard's, finished ones included) set the
    one-site step costs, so a resumed run chooses its sites per pass as the first did."""
    spec = datamodule.spec()
    lm = spec.is_language_model_task
    costs = one_site_costs(config.sweep, model, datamodule, spec, jobs) if todo else None
    splits = SplitReader(datamodule, lm)
    untrained = (untrained_positions(config.sweep, config.intervention, model,
                                     (splits.columns(s) for s in ("train", "test")), lm,
                                     [site.position for site in sites]) if todo else {})
    probes = sweep_probes(config.sweep.probe, model, spec, todo, splits, methods=config.sweep.methods,
                          rank=config.intervention.low_rank_dimension)
    return Sweep(config, model, datamodule, spec, run_dir, splits, probes, costs, untrained)


def fit_jobs(sweep: Sweep, todo: Sequence[Job], rows: list[dict[str, Any]], fingerprint: str) -> None:
    """Fits ``todo`` a layer group at a time, appending each group's rows to ``rows`` and
    writing them all (rank 0) before the next group starts."""
    config = sweep.config
    path = results_path(sweep.run_dir, config.sweep)
    bar = tqdm(total=len(todo), desc="sweep", unit="site", disable=not config.progress or not is_global_zero())
    for group in group_jobs(todo):
        site = group[0][0]
        fits, reason = fits_of(config.sweep, config.intervention, sweep.model, group, config.task.answer_score)
        if reason is not None and config.sweep.batched:
            log.info("%s-L%d one site at a time: %s", site.component, site.layer, reason)
        new_rows = []
        for jobs in fits:
            if reason is None:
                seeds = sorted({seed for _, seed in jobs})
                bar.set_postfix_str(f"{site.component}-L{site.layer}: {len(jobs)} sites in one fit, seeds {seeds}")
            else:
                bar.set_postfix_str(f"{jobs[0][0].key} seed {jobs[0][1]}")
            new_rows += fit_group(sweep, jobs, batched=reason is None)
        for row in new_rows:
            row["config_fingerprint"] = fingerprint
        rows += new_rows
        if is_global_zero():
            reports.write_rows(path, rows)
        fault_point("between_groups")
        for row in new_rows:
            log.info("%s-L%d-%s seed %d: IIA %.3f, probe %.3f (control %.3f)", row["component"], row["layer"],
                     row["position_name"], row["seed"], row["iia"], row["probe_accuracy"], row["control_accuracy"])
        bar.update(len(group))
    bar.close()


def finish(config: RunConfig, run_dir: Path, fingerprint: str, every_job: Sequence[Job], variable: str) -> Path:
    """The table, heatmaps and upload once every job's row is in the run directory; until
    then, a line saying which shards are still running."""
    everything = run_dir_state.finished_rows(run_dir, fingerprint)
    finished = {run_dir_state.site_key(r) for r in everything}
    missing = [(s, seed) for s, seed in every_job
               if (s.layer, s.component, s.table_position, seed) not in finished]
    companions = companion_tables(config)
    for _, their_rows in companions.values():
        theirs = {run_dir_state.site_key(r) for r in their_rows}
        missing += [(s, seed) for s, seed in every_job
                    if (s.layer, s.component, s.table_position, seed) not in theirs]
    if missing:
        print(f"shard {config.sweep.shard} of {config.sweep.num_shards} is done; {len(missing)} site runs (of the "
              "sweep or its companions) belong to shards still running. The last shard to finish writes the table, "
              "or run again with sweep.merge=true.", flush=True)
        return run_dir
    write_outputs(config, run_dir, everything, variable, companions)
    publish(config.publish, run_dir)
    return run_dir


def companion_tables(config: RunConfig) -> dict[str, tuple[Path, list[dict[str, Any]]]]:
    """Each companion sweep's run directory and finished rows, for the validity card."""
    return {name: (Path(companion.run_dir), companion_rows(config, name))
            for name, companion in companion_configs(config).items()}


def merge_shards(config: RunConfig, run_dir: Path, fingerprint: str) -> Path:
    """``sweep.merge=true``: the table and heatmaps of the shards' rows already in ``run_dir``."""
    rows = run_dir_state.finished_rows(run_dir, fingerprint)
    if not rows:
        raise ConfigError([f"sweep.merge=true but {run_dir} holds no results.csv or results.shard-*.csv"])
    problems = run_dir_state.merge_problems(run_dir, fingerprint, rows)
    if problems:
        raise ConfigError(problems)
    write_outputs(config, run_dir, rows, config.task.name, companion_tables(config))
    publish(config.publish, run_dir)
    return run_dir


__all__ = ["companion_tables", "finish", "fit_jobs", "fit_sweep", "merge_shards", "run_companions", "run_das_sweep", "start_sweep"]
