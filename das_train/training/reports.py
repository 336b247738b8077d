"""The sweep's outputs: one table (CSV and Markdown) and heatmaps of IIA and probe accuracy.

Rows are one per (site, seed); the table aggregates seeds into a mean and a spread so two sites
can be told apart from noise. Every file is written under a temporary name and renamed, so an
interrupted run never leaves a half-written table or image behind.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from das_train.core.fault_points import fault_point
from das_train.core.files import atomic_write, atomic_write_text
from das_train.training.validity import columns as card_columns

log = logging.getLogger("das_train")

ROW_FIELDS = (
    "layer",
    "component",
    "position",
    "position_name",
    "seed",
    "iia",
    "probe_accuracy",
    "control_accuracy",
    "selectivity",
    *card_columns.FIELDS,
    "intervention_size",
    "train_seconds",
    "test_pairs",
    "config_fingerprint",
)
METRICS = ("iia", "probe_accuracy", "control_accuracy", "selectivity")
LATER_FIELDS = ("test_pairs", "config_fingerprint", *card_columns.FIELDS)
"""Columns that files written by earlier versions lack; such rows are read without them."""
INTEGER_FIELDS = ("layer", "position", "seed")
FINITE_FIELDS = (*METRICS, "train_seconds")
UNKNOWN_CONFIG = "unknown"
"""The fingerprint of rows whose config is lost (an old file without the column, its config.yaml
deleted): kept in the file, never counted as any config's."""
FINGERPRINT = re.compile(rf"^([0-9a-f]{{12}}|{UNKNOWN_CONFIG})$")


def _parsed(record: dict[Any, Any], header: Sequence[str]) -> dict[str, Any]:
    """One results.csv record as typed values; raises ValueError saying what is wrong with it."""
    if None in record:
        raise ValueError(f"{len(record[None])} fields more than the header's {len(header)}")
    absent = [name for name in header if record.get(name) is None]
    if absent:
        raise ValueError(f"fields missing: {', '.join(absent)}")
    row: dict[str, Any] = dict(record)
    for name in ("component", "position_name"):
        if not row[name]:
            raise ValueError(f"{name} is empty")
    for name in INTEGER_FIELDS:
        row[name] = _number(row, name, int)
    for name in FINITE_FIELDS:
        row[name] = _number(row, name, float)
    card_columns.parse_fields(row)
    if row["intervention_size"] != "":
        row["intervention_size"] = _number(row, "intervention_size", float)
    if "test_pairs" in row:
        row["test_pairs"] = _number(row, "test_pairs", int)
    if "config_fingerprint" in row and not FINGERPRINT.match(row["config_fingerprint"]):
        raise ValueError(f"config_fingerprint {row['config_fingerprint']!r} is neither 12 hex digits nor {UNKNOWN_CONFIG}")
    return row


def _number(row: dict[str, Any], name: str, kind: type) -> int | float:
    try:
        value = kind(row[name])
    except ValueError:
        raise ValueError(f"{name} {row[name]!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} is {row[name]!r}, not a finite number")
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The valid rows of a results file an earlier (possibly interrupted or killed) run wrote.

    Every record is checked (all fields present and parseable, metrics finite); a bad one is
    logged with the file and line and dropped, so its site is trained again rather than
    reported wrong. A last line without its line end was cut off mid-write (a copied or synced
    file; our own writes are atomic) and is dropped too, since a cut number still parses. A row
    written twice for one (site, seed, config) is kept once (the later one). Files of earlier
    versions lack the columns of ``LATER_FIELDS``; their rows have no such key.
    """
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    lacking = [name for name in ROW_FIELDS if name not in header and name not in LATER_FIELDS]
    if lacking:
        log.warning("%s: no columns %s in its header %s; none of its rows is used", path, lacking, header)
        return []
    records = [(reader.line_num, record) for record in reader]
    rows: dict[tuple, dict[str, Any]] = {}
    for index, (line, record) in enumerate(records):
        try:
            if index == len(records) - 1 and not text.endswith("\n"):
                raise ValueError("cut off (the file ends inside it)")
            row = _parsed(record, header)
        except ValueError as problem:
            log.warning("%s line %d: dropped, that site is run again: %s", path, line, problem)
            continue
        key = (row["layer"], row["component"], row["position"], row["seed"], row.get("config_fingerprint"))
        if key in rows:
            log.warning("%s line %d: a second row for %s; the later one is kept", path, line, key)
        rows[key] = row
    return list(rows.values())


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(card_columns.written_fields(row))
    atomic_write_text(path, buffer.getvalue())


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per site with the mean and standard deviation of each metric over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["layer"], row["component"], row["position"], row["position_name"])].append(row)
    out = []
    for (layer, component, position, name), members in sorted(groups.items(), key=lambda kv: (kv[0][1] != "block_input", kv[0][0], kv[0][2])):
        site = {"layer": layer, "component": component, "position": position, "position_name": name,
                "seeds": len(members)}
        for metric in METRICS:
            mean, std = _mean_std([float(m[metric]) for m in members])
            site[metric] = mean
            site[f"{metric}_std"] = std
        out.append(site)
    return out


def site_label(layer: int, component: str) -> str:
    """Row label of a heatmap: the embedding row is layer 0's block input."""
    return "emb" if component == "block_input" else f"L{layer}"


def markdown_table(sites: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| site | position | IIA | probe acc. | control acc. | selectivity | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(site, metric):
        mean, std = site[metric], site[f"{metric}_std"]
        if math.isnan(mean):
            return "-"
        return f"{mean:.3f}" + (f" ± {std:.3f}" if site["seeds"] > 1 else "")

    for s in sites:
        lines.append(
            f"| {site_label(s['layer'], s['component'])} | {s['position_name']} ({s['position']}) | "
            f"{fmt(s, 'iia')} | {fmt(s, 'probe_accuracy')} | {fmt(s, 'control_accuracy')} | "
            f"{fmt(s, 'selectivity')} | {s['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(run_dir: Path, rows: Sequence[dict[str, Any]], card: Mapping[tuple, Mapping[str, float]] | None = None,
                 card_fields: Sequence[str] = (), card_text: Callable[[list[dict[str, Any]]], str] | None = None,
                 ) -> list[dict[str, Any]]:
    """Writes table.csv (aggregated per site) and table.md; returns the aggregated sites.

    ``card`` adds the validity card's figures of each site (keyed ``(layer, component,
    position, position_name)``) as the columns ``card_fields``, and ``card_text`` renders the
    card's own Markdown table, written under the main one."""
    sites = aggregate(rows)
    for site in sites:
        site.update((card or {}).get((site["layer"], site["component"], site["position"], site["position_name"]), {}))
    buffer = io.StringIO()
    fields = ["layer", "component", "position", "position_name", "seeds"] + [
        name for metric in METRICS for name in (metric, f"{metric}_std")
    ] + list(card_fields)
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for site in sites:
        writer.writerow({k: site.get(k, math.nan) for k in fields})
    atomic_write_text(run_dir / "table.csv", buffer.getvalue())
    fault_point("write_table")
    text = markdown_table(sites)
    if card_text is not None:
        text += "\n## Validity card\n\n" + card_text(sites)
    atomic_write_text(run_dir / "table.md", text)
    return sites


VALIDITY_HEATMAP = "validity_heatmaps.png"
"""The validity card's heatmaps: each featurizer's IIA on the changing pairs, and the probe."""
HEATMAP_PANELS = (("iia", "IIA (DAS)"), ("probe_accuracy", "probe accuracy"))


def write_heatmaps(run_dir: Path, sites: Sequence[dict[str, Any]], title: str,
                   panels: Sequence[tuple[str, str]] = HEATMAP_PANELS, name: str = "heatmaps.png") -> Path:
    """One heatmap per ``(metric, title)`` of ``panels`` (by default IIA and probe accuracy)
    side by side: positions (token labels) across, layers down; written to ``run_dir / name``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted({(s["component"] != "block_input", s["layer"], site_label(s["layer"], s["component"])) for s in sites})
    row_labels = [r[2] for r in rows]
    positions = sorted({(s["position"], s["position_name"]) for s in sites})
    col_labels = [name for _, name in positions]
    columns = min(len(panels), 4)
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3 + 1.1 * len(col_labels) * columns,
                                                       (1.5 + 0.45 * len(row_labels)) * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (metric, panel_title) in zip(axes.flat, panels):
        grid = np.full((len(rows), len(positions)), np.nan)
        for s in sites:
            r = row_labels.index(site_label(s["layer"], s["component"]))
            c = positions.index((s["position"], s["position_name"]))
            grid[r, c] = s.get(metric, np.nan)
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(col_labels)), col_labels)
        ax.set_yticks(range(len(row_labels)), row_labels)
        ax.set_xlabel("position")
        ax.set_ylabel("layer")
        ax.set_title(panel_title)
        for r in range(grid.shape[0]):
            for c in range(grid.shape[1]):
                if not np.isnan(grid[r, c]):
                    ax.text(c, r, f"{grid[r, c]:.2f}", ha="center", va="center",
                            color="white" if grid[r, c] < 0.6 else "black", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / name
    try:
        atomic_write(path, lambda tmp: (fig.savefig(tmp, format="png", dpi=120), fault_point("write_heatmaps")))
    finally:
        plt.close(fig)
    return path
