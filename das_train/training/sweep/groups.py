"""How a sweep's (site, seed) jobs are grouped into fits, and what each group's fit is named.

The jobs of one (layer, component) train together in one fit on cached activations when they
can (:func:`batched_reason` is ``None``); otherwise, or with ``sweep.batched=false``, each job
is a group of one fitted through the per-site module. Either way the group's name
(:func:`group_version`) names its checkpoints, logs and saved interventions' fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby

from torch import nn

from das_train.data.pair_files.sequences import SEQUENCE
from das_train.training.schema import InterventionConfig, SweepConfig, TaskConfig
from das_train.training.sweep.site_cache import batched_sites_supported
from das_train.training.sweep.sites import SweepSite

Job = tuple[SweepSite, int]
"""One (site, seed) of a sweep: one row of ``results.csv``."""


def group_jobs(jobs: Sequence[Job]) -> list[list[Job]]:
    """Consecutive (site, seed) jobs sharing a layer and component, as groups.

    A group holds every seed of its sites: seeds differ only in the interventions' starting
    point, so the seeds of a site train side by side in one fit, as its positions do. Any
    subset of a layer's jobs (one shard's, or what a resumed run has left) is a valid group.
    """
    return [list(g) for _, g in groupby(jobs, key=lambda job: (job[0].layer, job[0].component))]


def batched_reason(sweep: SweepConfig, intervention: InterventionConfig, model: nn.Module,
                   site: SweepSite, answer_score: str = TaskConfig.answer_score) -> str | None:
    """Why the jobs at ``site``'s (layer, component) are fitted one at a time, or ``None`` when
    they train together in one batched fit (``answer_score``: the run's ``task.answer_score``)."""
    if not sweep.batched:
        return "sweep.batched=false"
    if intervention.iit:
        return "intervention.iit=true trains the shared model, which sites cannot share"
    if answer_score == SEQUENCE:
        return ("task.answer_score=sequence scores whole answers over candidates, while the batched fit "
                "reads one next-token prediction")
    return batched_sites_supported(model, site.layer, site.component)


def fits_of(sweep: SweepConfig, intervention: InterventionConfig, model: nn.Module,
            group: Sequence[Job], answer_score: str = TaskConfig.answer_score) -> tuple[list[list[Job]], str | None]:
    """The fits a group of jobs takes: itself whole when it can be batched, else each job alone;
    with the reason it cannot be batched (``None`` when it is)."""
    reason = batched_reason(sweep, intervention, model, group[0][0], answer_score)
    return ([list(group)] if reason is None else [[job] for job in group]), reason


def group_version(jobs: Sequence[Job], trained: Sequence[int]) -> str:
    """The checkpoint and log name of a group: its layer and its trained jobs, each seed's
    positions followed by ``-s<seed>`` (``block_output-L1-name+last-s0+last-s1``); a job
    alone is ``<site key>-s<seed>``.

    Named by the jobs that train, so a resumed run whose trained set changed (a changed
    ``sweep.skip_shared_prefix``, or a group of which some rows were already written) starts
    afresh instead of loading an optimizer of other shapes. A group with nothing to train is
    named by all its jobs, followed by ``-untrained``.
    """
    site = jobs[0][0]
    named = trained or range(len(jobs))
    by_seed: dict[int, list[str]] = {}
    for k in named:
        by_seed.setdefault(jobs[k][1], []).append(jobs[k][0].position_name)
    members = "+".join(f"{'+'.join(names)}-s{seed}" for seed, names in by_seed.items())
    return f"{site.component}-L{site.layer}-{members}{'' if trained else '-untrained'}"


__all__ = ["Job", "batched_reason", "fits_of", "group_jobs", "group_version"]
