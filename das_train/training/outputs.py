"""What a run prints and writes besides its results: the console setup, the recorded config,
where a shard's rows go, and the final table and heatmaps."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from das_train.training import reports
from das_train.training.ranks import is_global_zero
from das_train.training.schema import RunConfig, SweepConfig


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


def write_outputs(recipe: str, run_dir: Path, rows: list[dict[str, Any]], variable: str) -> None:
    """The finished sweep's table (csv and markdown) and heatmaps, printed and written; the
    heatmaps are titled with the ``recipe`` and the ``variable``."""
    sites_table = reports.write_tables(run_dir, rows)
    image = reports.write_heatmaps(run_dir, sites_table, f"{recipe}: {variable} (DAS vs probe)")
    print("\n" + reports.markdown_table(sites_table), flush=True)
    print(f"wrote {run_dir / 'table.csv'}, {run_dir / 'table.md'} and {image}", flush=True)


__all__ = ["results_path", "setup_output", "write_outputs"]
