"""The counterfactual pairs of a DAS sweep: made, split, filtered by the frozen model, recorded.

Pairs the frozen model gets wrong (base or counterfactual) say nothing about where it keeps a
variable, so they are dropped before any site trains; ``run_info.json`` records what was kept,
so a results table can always be traced back to the exact pairs it counts.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from das_train import __version__
from das_train.data.pair_contract import CounterfactualTask
from das_train.data.pair_datamodule import PairDataModule
from das_train.training import config_fingerprint as fingerprints
from das_train.training import preflight, reports
from das_train.training.model_loading import model_identity
from das_train.training.ranks import is_global_zero
from das_train.training.schema import RunConfig


def prepare_pairs(config: RunConfig, task: CounterfactualTask, tokenizer, model: nn.Module,
                  run_dir: Path) -> PairDataModule:
    """The task's splits, set up and filtered with ``model``; refused when too few pairs are
    left (:func:`~das_train.training.preflight.check_pairs_left`); recorded by rank 0."""
    datamodule = PairDataModule(
        task, tokenizer, n_train=config.task.n_train, n_val=config.task.n_val, n_test=config.task.n_test,
        batch_size=config.trainer.batch_size, seed=config.seed, cache_dir=str(Path(config.cache_dir) / "pairs"),
        filter_pairs=config.task.filter_pairs, shuffle=config.trainer.shuffle,
    )
    datamodule.prepare_data()
    datamodule.setup()
    dropped = datamodule.filter_with(model)
    kept = {split: len(ds) for split, ds in datamodule.datasets.items()}
    print(f"pairs kept {kept}, dropped by the frozen-model filter {dropped}", flush=True)
    preflight.check_pairs_left(config.model, kept, dropped)
    if is_global_zero():
        reports.atomic_write_text(run_dir / "run_info.json", json.dumps({
            "das_train_version": __version__,
            "config_fingerprint": fingerprints.config_fingerprint(config),
            "model": model_identity(config.model),
            "dataset": {"task": task.name, "seed": config.seed, "fingerprint": datamodule.fingerprint(),
                        "kept": kept, "dropped": dropped},
        }, indent=2))
    return datamodule


__all__ = ["prepare_pairs"]
