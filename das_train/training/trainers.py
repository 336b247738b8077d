"""The Lightning Trainer and logger of a sweep's fits, configured in one place.

Every fit of a sweep (one site, or a group of sites trained together) gets the same Trainer:
checkpoints for resuming exactly, temperature annealing for boundless interventions, the
fault-injection callbacks tests use, and loaders that deal their rows to the ranks themselves.
"""

from __future__ import annotations

from pathlib import Path

import lightning

from das_train.training.callbacks import TemperatureAnnealing, fault_callbacks
from das_train.training.checkpoints import ResumeTrainingOrder, checkpoint_callback
from das_train.training.schema import RunConfig


def make_logger(config: RunConfig, run_dir: Path, version: str):
    """The configured logger of one fit named ``version``, or ``False`` for ``logger.kind=none``
    (a Weights & Biases run is grouped by recipe and records the whole config)."""
    kind = config.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return lightning.pytorch.loggers.CSVLogger(str(run_dir), name="logs", version=version)
    if kind == "tensorboard":
        return lightning.pytorch.loggers.TensorBoardLogger(str(run_dir), name="tensorboard", version=version)
    # lightning's WandbLogger imports wandb (optional) only when it is built
    return lightning.pytorch.loggers.WandbLogger(project=config.logger.project, name=f"{config.recipe}-{version}",
                                                 save_dir=str(run_dir), group=config.recipe, config=config.as_data())


def make_trainer(config: RunConfig, run_dir: Path, version: str, ckpt_dir: Path) -> lightning.Trainer:
    """The Trainer of one site's (or one group of sites') fit: checkpoints in ``ckpt_dir`` for
    resuming exactly (:mod:`das_train.training.checkpoints`), temperature annealing for
    boundless interventions, the configured logger. It reads the trainer settings, the
    intervention's temperatures, the logger and the progress setting: most of the config."""
    trainer, intervention = config.trainer, config.intervention
    callbacks: list[lightning.Callback] = [
        checkpoint_callback(ckpt_dir, every_n_steps=max(trainer.max_steps // 4, 1)), ResumeTrainingOrder(),
    ]
    if "Boundless" in intervention.type:
        callbacks.append(TemperatureAnnealing(intervention.temperature_start, intervention.temperature_end))
    callbacks += fault_callbacks()
    return lightning.Trainer(
        accelerator=trainer.accelerator, devices=trainer.devices, num_nodes=trainer.num_nodes,
        strategy=trainer.strategy, precision=trainer.precision, max_steps=trainer.max_steps,
        logger=make_logger(config, run_dir, version), callbacks=callbacks, enable_progress_bar=config.progress,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=10,
        # Every loader of ours deals its rows to the ranks itself (RankSliceSampler, RankShuffleSampler).
        use_distributed_sampler=False,
    )


__all__ = ["make_logger", "make_trainer"]
