"""What a run prints and writes besides its results: the console setup, the recorded config,
where a shard's rows go, and the final table, validity card and heatmaps."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from das_train.training import reports
from das_train.training.ranks import is_global_zero
from das_train.training.reports import VALIDITY_HEATMAP
from das_train.training.schema import RunConfig, SweepConfig
from das_train.training.validity.card import (
    METHOD_LABELS,
    card_columns,
    card_markdown,
    card_sites,
    measured_methods,
)


def setup_output(config: RunConfig, run_dir: Path) -> None:
    """Logging and warnings a reader of the console wants, and the config recorded in
    ``run_dir`` (``config.yaml``, or one per shard) by rank 0."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                  "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Validation is skipped on purpose (IIA is measured once, on the test split), and the
    # LeafSpec notice is Lightning's own deprecation under torch 2.13: neither helps a reader.
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # The batched sweep optimizes by hand; its checkpoint holds the state after the step, whose
    # count it records, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Our training samplers are positioned at the restored step (das_train.training.checkpoints),
    # so a mid-epoch resume is exact, whatever Lightning's check for a stateful loader says.
    warnings.filterwarnings("ignore", message=".*checkpoint that ended before the epoch ended.*")
    if is_global_zero():
        text = OmegaConf.to_yaml(config.as_data())
        print(f"das_train: recipe {config.recipe}, run directory {run_dir}\n{text}", flush=True)
        sweep = config.sweep
        name = "config.yaml" if sweep.num_shards == 1 else f"config.shard-{sweep.shard}.yaml"
        reports.atomic_write_text(run_dir / name, text)


def results_path(run_dir: Path, sweep: SweepConfig) -> Path:
    """``results.csv``, or this shard's own rows file when the sweep is sharded."""
    if sweep.num_shards == 1:
        return run_dir / "results.csv"
    return run_dir / f"results.shard-{sweep.shard}-of-{sweep.num_shards}.csv"


def write_outputs(config: RunConfig, run_dir: Path, rows: list[dict[str, Any]], variable: str,
                  companions: Mapping[str, tuple[Path, list[dict[str, Any]]]] | None = None) -> None:
    """The finished sweep's table (csv and markdown, the validity card under the main table)
    and heatmaps (IIA and probe; each featurizer's IIA on the changing pairs), printed and
    written, titled with the recipe and the ``variable``. ``companions``: the run directory and
    rows of each companion sweep (``boundless``, ``random_init``) that ran beside this one."""
    companions = dict(companions or {})
    figures = card_sites(run_dir, rows, companions, config.sweep.bootstrap, config.seed)
    methods = measured_methods(rows, companions)
    sites = reports.write_tables(run_dir, rows, figures, card_columns(methods), lambda s: card_markdown(s, methods))
    image = reports.write_heatmaps(run_dir, sites, f"{config.recipe}: {variable} (DAS vs probe)")
    panels = [(f"{m}_iia_changing", METHOD_LABELS[m]) for m in methods] + [("probe_accuracy", "probe accuracy")]
    card_image = reports.write_heatmaps(run_dir, sites, f"{config.recipe}: {variable}, IIA on the pairs that should change",
                                        panels, VALIDITY_HEATMAP)
    print("\n" + reports.markdown_table(sites), flush=True)
    print("Validity card: " + card_markdown(sites, methods), flush=True)
    print(f"wrote {run_dir / 'table.csv'}, {run_dir / 'table.md'}, {image} and {card_image}", flush=True)


__all__ = ["results_path", "setup_output", "write_outputs"]
