"""The validity card: per site, every featurizer's IIA on the pairs that should change, with a
95% interval over seeds and one over test pairs, beside the probe.

One table answers "does DAS find more than a cheaper featurizer or an untrained control would?"
Its methods, in order: the sweep's trained intervention (``das``), the companion sweeps
(``boundless``, ``random_init``: DAS on a re-initialised model) and the untrained featurizers
(``probe_direction``, ``diff_means``, ``pca``, ``full_vector``, ``random_subspace``). For each
method and site:

- ``<m>_iia``: IIA on all test pairs, mean over seeds;
- ``<m>_iia_changing``: IIA on the pairs whose counterfactual label differs from the base's,
  mean over seeds (doing nothing scores 0 there);
- ``<m>_seeds_low/high``: its Student-t 95% interval over seeds (``nan`` with one seed);
- ``<m>_pairs_low/high``: its percentile-bootstrap 95% interval over the changing test pairs:
  the pairs are resampled and the seed-mean IIA recomputed, so the interval says how much the
  figure owes to the pairs drawn (from the saved per-pair outcomes; ``nan`` without them).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from das_train.training.schema import UNTRAINED_METHODS
from das_train.training.validity.intervals import bootstrap_interval, seed_interval
from das_train.training.validity.outcome_store import load_outcomes, outcomes_path

log = logging.getLogger("das_train")

COMPANION_METHODS = ("boundless", "random_init")
METHOD_ORDER = ("das", *COMPANION_METHODS, *UNTRAINED_METHODS)
METHOD_LABELS = {
    "das": "DAS", "boundless": "Boundless DAS", "random_init": "DAS, random-init model",
    "probe_direction": "probe direction", "diff_means": "diff. of means", "pca": "PCA",
    "full_vector": "full vector", "random_subspace": "random subspace",
}
STATISTICS = ("iia", "iia_changing", "seeds_low", "seeds_high", "pairs_low", "pairs_high")
SiteKey = tuple[int, str, int, str]
"""A table site: ``(layer, component, position, position_name)``."""


def _site(row: Mapping[str, Any]) -> SiteKey:
    return row["layer"], row["component"], row["position"], row["position_name"]


def _finite(values: Sequence[float | str | None]) -> list[float]:
    """The figures among ``values``: a row's empty field (``""``, ``None``) or ``nan`` is none."""
    return [float(v) for v in values if v not in ("", None) and not math.isnan(float(v))]


def _method_values(row: Mapping[str, Any], method: str) -> tuple[float, float]:
    """``(iia, iia_changing)`` of ``method`` in a main-sweep ``row``."""
    if method == "das":
        return row["iia"], row.get("iia_changing", math.nan)
    return row.get(f"iia_{method}", math.nan), row.get(f"iia_changing_{method}", math.nan)


def _pairs_interval(vectors: list[tuple[torch.Tensor, torch.Tensor]], resamples: int, seed: int) -> tuple[float, float]:
    """The bootstrap bounds of the seed-mean IIA on the changing pairs, from each seed's
    ``(changing, correct)``; ``nan`` when a seed's outcomes are missing or the seeds were
    tested on differing pairs."""
    if not vectors:
        return math.nan, math.nan
    changing = vectors[0][0]
    if any(c.shape != changing.shape or not torch.equal(c, changing) for c, _ in vectors):
        log.warning("the seeds of a site were tested on different pairs; no interval over pairs")
        return math.nan, math.nan
    if not changing.any():
        return math.nan, math.nan
    mean_correct = torch.stack([v.double() for _, v in vectors]).mean(0)[changing]  # (changing pairs,)
    interval = bootstrap_interval(mean_correct, resamples=resamples, seed=seed)
    return interval.low, interval.high


def _statistics(rows: Sequence[Mapping[str, Any]], method: str, outcomes: list | None,
                resamples: int, seed: int) -> dict[str, float]:
    all_pairs = _finite([_method_values(r, method)[0] for r in rows])
    changing = _finite([_method_values(r, method)[1] for r in rows])
    figures = dict.fromkeys(STATISTICS, math.nan)
    if all_pairs:
        figures["iia"] = sum(all_pairs) / len(all_pairs)
    if changing:
        spread = seed_interval(changing)
        figures.update(iia_changing=spread.mean, seeds_low=spread.low, seeds_high=spread.high)
        if outcomes is not None and len(outcomes) == len(changing):
            figures["pairs_low"], figures["pairs_high"] = _pairs_interval(outcomes, resamples, seed)
    return figures


def _outcomes(run_dir: Path, rows: Sequence[Mapping[str, Any]], method: str) -> list | None:
    """Each row's ``(changing, correct[method])`` from its saved outcomes (``das`` for a
    companion's own rows); ``None`` when one is missing."""
    found = []
    for row in rows:
        path = outcomes_path(run_dir, row["component"], row["layer"], row["position_name"], row["seed"])
        loaded = load_outcomes(path)
        if loaded is None or method not in loaded[1]:
            return None
        found.append((loaded[0], loaded[1][method]))
    return found


def card_sites(run_dir: Path, rows: Sequence[Mapping[str, Any]], companions: Mapping[str, tuple[Path, list]],
               resamples: int, seed: int = 0) -> dict[SiteKey, dict[str, float]]:
    """Per site, ``<method>_<statistic>`` for every method measured (module docstring):
    ``rows`` are the main sweep's, ``companions`` each companion's run directory and rows."""
    by_site: dict[SiteKey, list] = defaultdict(list)
    for row in rows:
        by_site[_site(row)].append(row)
    companion_rows: dict[str, dict[SiteKey, list]] = {}
    for name, (_, their_rows) in companions.items():
        grouped: dict[SiteKey, list] = defaultdict(list)
        for row in their_rows:
            grouped[_site(row)].append(row)
        companion_rows[name] = grouped
    card: dict[SiteKey, dict[str, float]] = {}
    for site, members in by_site.items():
        figures: dict[str, float] = {}
        for method in measured_methods(rows, companions):
            if method in companions:
                directory, theirs = companions[method][0], companion_rows[method].get(site, [])
                source_rows, stored = theirs, "das"
            else:
                directory, source_rows, stored = run_dir, members, method
            outcomes = _outcomes(directory, source_rows, stored) if source_rows else None
            values = _statistics(source_rows, "das" if method in companions else method, outcomes, resamples, seed)
            figures.update({f"{method}_{name}": value for name, value in values.items()})
        card[site] = figures
    return card


def measured_methods(rows: Sequence[Mapping[str, Any]], companions: Mapping[str, Any]) -> list[str]:
    """The methods with a figure in ``rows`` (or a companion), in :data:`METHOD_ORDER`."""
    present = {"das"} | set(companions)
    for method in UNTRAINED_METHODS:
        if any(_finite([_method_values(r, method)[1]]) for r in rows):
            present.add(method)
    return [m for m in METHOD_ORDER if m in present]


def card_columns(methods: Sequence[str]) -> list[str]:
    """table.csv's card columns for ``methods``."""
    return [f"{m}_{s}" for m in methods for s in STATISTICS]


def _cell(figures: Mapping[str, float], method: str) -> str:
    mean = figures.get(f"{method}_iia_changing", math.nan)
    if math.isnan(mean):
        return "-"
    low, high = figures[f"{method}_pairs_low"], figures[f"{method}_pairs_high"]
    text = f"{mean:.2f}"
    if not math.isnan(low):
        text += f" [{low:.2f}, {high:.2f}]"
    if not math.isnan(figures[f"{method}_seeds_low"]):
        text += f" ±s [{figures[f'{method}_seeds_low']:.2f}, {figures[f'{method}_seeds_high']:.2f}]"
    return text


def card_markdown(sites: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> str:
    """The card as Markdown: one row per site, one column per method (IIA on the changing
    pairs, its 95% interval over pairs in brackets, over seeds after ``±s``), then the probe's
    accuracy and selectivity from the same sites."""
    header = ["site", "position", *(METHOD_LABELS[m] for m in methods), "probe acc.", "selectivity"]
    lines = [
        "IIA on the pairs whose label the intervention should change (doing nothing scores 0), "
        "with its 95% interval over test pairs [bootstrap] and, with several seeds, over seeds (±s [t]).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for s in sites:
        label = "emb" if s["component"] == "block_input" else f"L{s['layer']}"
        cells = [label, f"{s['position_name']} ({s['position']})", *(_cell(s, m) for m in methods),
                 f"{s['probe_accuracy']:.3f}", f"{s['selectivity']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["COMPANION_METHODS", "METHOD_LABELS", "METHOD_ORDER", "STATISTICS", "card_columns", "card_markdown",
           "card_sites", "measured_methods"]
