"""The probes of a whole sweep: every (site, seed) job's probe and control, fitted together.

A probe fit is a few hundred small steps whose cost is mostly the loop's, whatever the number
of probes stacked in it. So the sites' base activations are collected as tables (one row per
distinct base input), and all the probes of a seed and width train in one fit for the variable
and one for the control. Each probe is what it would be alone
(:func:`~das_train.training.probe.fit_probes`), so the sweep's probe figures do not depend on
which sites share a fit, on ``sweep.batched``, or on the waves below.

Sites the site cache can read (whole module inputs or outputs) are collected all at once, one
forward per chunk of distinct inputs (:func:`~das_train.training.sweep.site_cache.collect_base_sites`);
any other site (a head, a slice of fused columns, a recurrent time step) through a collecting
:class:`~das_train.core.model.IntervenableModel` on the same distinct inputs.

The featurizers of ``sweep.methods`` that are read off activations come from the same tables,
so they cost no pass of their own: each fitted variable probe's weight directions
(``probe_direction``, per seed), and per site the difference of class means (``diff_means``)
and the top principal directions (``pca``), which do not depend on the seed and are computed
once per site, on the training pairs' rows (a base shared by several pairs counts once per
pair, as it does for the probe).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from das_train.core.sites import resolve_site
from das_train.data.pair_contract import BASE_CONTROL, BASE_VARIABLE, TaskSpec
from das_train.data.pair_inputs import row_indices
from das_train.training.probe import collected_rows, site_collector
from das_train.training.probe_results import PROBE_DIRECTION, ProbeResult, probes_with_control
from das_train.training.schema import SWEEP_METHODS, ProbeConfig
from das_train.training.sweep.cached_pairs import SplitReader
from das_train.training.sweep.groups import Job
from das_train.training.sweep.site_cache import (
    DistinctInputs,
    batched_sites_supported,
    collect_base_sites,
)
from das_train.training.validity.directions import diff_means_directions, pca_directions

log = logging.getLogger("das_train")

ProbeKey = tuple[int, str, Any, int]
"""A probe's site and seed: ``(layer, component, position, seed)``."""
SiteKey = tuple[int, str, Any]
"""A probed site: ``(layer, component, position)``."""
ACTIVATION_METHODS = (PROBE_DIRECTION, "diff_means", "pca")
"""The ``sweep.methods`` whose bases are read here, from the probes' activations; the others
are trained (``das``, ``boundless``) or need no activations (``full_vector``,
``random_subspace``)."""


def sweep_probes(settings: ProbeConfig, model: nn.Module, spec: TaskSpec, jobs: Sequence[Job],
                 splits: SplitReader, methods: Sequence[str] = (), rank: int = 1) -> dict[ProbeKey, ProbeResult]:
    """The probe and control of every (site, seed) of ``jobs``, fitted on the training split,
    each with the bases of the :data:`ACTIVATION_METHODS` among ``methods`` (``sweep.methods``)
    in its ``bases``; ``rank`` (``intervention.low_rank_dimension``) is how many principal
    directions ``pca`` keeps.

    The tables hold one row per distinct base input per site. Where all the sites' tables
    would exceed ``sweep.probe.tables_mib``, the sites are taken in waves that each fit within
    it (one more pass over the inputs per wave), so a large model's sweep holds a bounded
    share of its activations rather than every layer's at once.
    """
    unknown = sorted(set(methods) - set(SWEEP_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}: allowed are {list(SWEEP_METHODS)}")
    seeds_of: dict[SiteKey, list[int]] = {}
    for site, seed in jobs:
        seeds_of.setdefault((site.layer, site.component, site.position), []).append(seed)
    if not seeds_of:
        return {}
    columns = splits.columns("train")
    bases = splits.inputs("train", sides=("base",))
    variables = columns[BASE_VARIABLE].long()
    results: dict[ProbeKey, ProbeResult] = {}
    for wave in probe_waves(model, list(seeds_of), bases.count, settings.tables_mib * 2**20):
        groups = site_tables(model, wave, bases)
        shared = {wave[i]: activation_bases(wave[i], table[k, bases.row["base"]], variables, spec.variable_values,
                                            methods, rank)
                  for members, table in groups for k, i in enumerate(members)}
        for seed in dict.fromkeys(seed for key in wave for seed in seeds_of[key]):
            for members, table in groups:
                wanted = [j for j, i in enumerate(members) if seed in seeds_of[wave[i]]]
                if not wanted:
                    continue
                # A seed that only some of the group's sites still need (a resumed run) reads a copy.
                stacked = table if len(wanted) == len(members) else table[wanted]
                log.info("probes: %d sites in one fit (seed %d)", len(wanted), seed)
                fitted = probes_with_control(
                    stacked, variables, columns[BASE_CONTROL].long(), rows=bases.row["base"],
                    n_classes=spec.variable_values, lr=settings.lr, weight_decay=settings.weight_decay,
                    max_epochs=settings.max_epochs, seed=seed, directions=PROBE_DIRECTION in methods,
                )
                for j, probe in zip(wanted, fitted):
                    site = wave[members[j]]
                    results[(*site, seed)] = replace(probe, bases={**probe.bases, **shared[site]})
        del groups
        gc.collect()
    return results


def activation_bases(site: SiteKey, activations: torch.Tensor, variables: torch.Tensor, n_classes: int,
                     methods: Sequence[str], rank: int) -> dict[str, torch.Tensor]:
    """The seed-free bases among ``methods`` at ``site``, from its ``activations`` ``(N, w)`` on
    the training pairs and their ``variables`` ``(N,)``: ``diff_means`` (of ``n_classes``
    classes) and ``pca`` (``rank`` directions, fewer where the rows or width allow fewer).

    Where the class means give no direction (a position every input shares, so every class
    mean is the same; a class no training pair has), ``diff_means`` is left out with a warning
    naming the site, rather than ending the sweep: the card then has no such figure there.
    """
    found = {}
    if "diff_means" in methods:
        try:
            found["diff_means"] = diff_means_directions(activations, variables, n_classes)
        except ValueError as error:
            log.warning("diff_means at %s-L%d position %s left out: %s", site[1], site[0], site[2], error)
    if "pca" in methods:
        found["pca"] = pca_directions(activations, min(rank, *activations.shape))
    return found


def site_tables(model: nn.Module, sites: Sequence[SiteKey],
                bases: DistinctInputs) -> list[tuple[list[int], torch.Tensor]]:
    """Each site's activation on every distinct input of ``bases``, as groups of sites of one
    width: each group's indices into ``sites`` and its ``(S, U, w)`` table."""
    readable = [i for i, (layer, component, _) in enumerate(sites)
                if batched_sites_supported(model, layer, component) is None]
    groups = []
    if readable:
        for members, table in collect_base_sites(model, [sites[i] for i in readable], bases):
            groups.append(([readable[j] for j in members], table))
    for i, (layer, component, position) in enumerate(sites):
        if i not in readable:
            collector = site_collector(model, layer, component)
            rows = [collected_rows(collector, chunk, row_indices(position, row_positions))  # (chunk, w) each
                    for chunk, row_positions in bases.chunks_with_positions()]
            groups.append(([i], torch.cat(rows)[None]))  # (1, U, w)
    return groups


def probe_waves(model: nn.Module, sites: Sequence[SiteKey], rows: int, budget_bytes: float) -> list[list[SiteKey]]:
    """``sites`` in order, cut into waves whose tables of ``rows`` rows each (counted as
    float32) stay within ``budget_bytes``; a site over the budget, or of unknown width, is a
    wave of its own."""
    waves: list[list[SiteKey]] = []
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


__all__ = ["ACTIVATION_METHODS", "ProbeKey", "activation_bases", "probe_waves", "site_tables", "sweep_probes"]
