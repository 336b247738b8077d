"""The Lightning Trainer and logger of a sweep's fits, configured in one place.

Every fit of a sweep (one site, or a group of sites trained together) gets the same Trainer:
checkpoints for resuming exactly, temperature annealing for boundless interventions, the
fault-injection callbacks tests use, and loaders that deal their rows to the ranks themselves.
"""

from __future__ import annotations

from pathlib import Path

import lightning
from omegaconf import DictConfig, OmegaConf

from das_train.training.callbacks import TemperatureAnnealing, fault_callbacks
from das_train.training.checkpoints import ResumeTrainingOrder, checkpoint_callback


def make_logger(cfg: DictConfig, run_dir: Path, version: str):
    """The configured logger of one fit named ``version``, or ``False`` for ``logger.kind=none``."""
    kind = cfg.logger.kind
    if kind == "none":
        return False
    if kind == "csv":
        return lightning.pytorch.loggers.CSVLogger(str(run_dir), name="logs", version=version)
    if kind == "tensorboard":
        return lightning.pytorch.loggers.TensorBoardLogger(str(run_dir), name="tensorboard", version=version)
    # lightning's WandbLogger imports wandb (optional) only when it is built
    return lightning.pytorch.loggers.WandbLogger(project=cfg.logger.project, name=f"{cfg.recipe}-{version}", save_dir=str(run_dir),
                       group=cfg.recipe, config=OmegaConf.to_container(cfg, resolve=True))


def make_trainer(cfg: DictConfig, run_dir: Path, version: str, ckpt_dir: Path) -> lightning.Trainer:
    """The Trainer of one site's (or one group of sites') fit: checkpoints in ``ckpt_dir`` for
    resuming exactly (:mod:`das_train.training.checkpoints`), temperature annealing for
    boundless interventions, the configured logger."""
    callbacks: list[lightning.Callback] = [
        checkpoint_callback(ckpt_dir, every_n_steps=max(cfg.trainer.max_steps // 4, 1)), ResumeTrainingOrder(),
    ]
    if "Boundless" in cfg.intervention.type:
        callbacks.append(TemperatureAnnealing(cfg.intervention.temperature_start, cfg.intervention.temperature_end))
    callbacks += fault_callbacks()
    return lightning.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy, precision=cfg.trainer.precision, max_steps=cfg.trainer.max_steps,
        logger=make_logger(cfg, run_dir, version), callbacks=callbacks, enable_progress_bar=cfg.progress,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=10,
        # Every loader of ours deals its rows to the ranks itself (RankSliceSampler, RankShuffleSampler).
        use_distributed_sampler=False,
    )


__all__ = ["make_logger", "make_trainer"]
