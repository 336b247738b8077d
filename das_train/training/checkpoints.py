"""Resuming a cut-off fit from its checkpoint: safely, exactly, and never into a dead end.

A sweep re-run resumes each cut-off fit from ``checkpoints/<version>/last.ckpt``. Three things
make that trustworthy:

- **Nothing loaded runs code**: checkpoints are read with ``weights_only=True`` (tensors,
  numbers, strings and plain containers only), whatever the installed torch's default.
- **A bad file is no dead end**: random bytes, a truncated file or a zip without a Lightning
  checkpoint's keys is named in a warning, moved aside as ``last.ckpt.corrupt-<time>``, and
  the fit starts from scratch instead of crashing the sweep on every re-run.
- **A resume is exact**: the training order is a stream of batches positioned by the
  optimizer step (:class:`~das_train.data.samplers.ResumableOrder`, which the datamodule's
  shuffle, the batched sweep's cached loader and :class:`~das_train.training.samplers.RankSliceSampler`
  follow), and :class:`ResumeTrainingOrder` moves it to the restored step. A fit cut off
  mid-epoch thus trains on the batches the uninterrupted fit trained on and ends with the same
  weights; Lightning alone would restart the epoch's iterator from its first batch.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning
import torch
from torch.utils.data import DataLoader

from das_train.data.samplers import ResumableOrder
from das_train.training.finite import NonFiniteTrainingError

log = logging.getLogger("das_train")

LAST_NAME = "last.ckpt"
RESUME_KEYS = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")
"""What a Lightning checkpoint must hold for a fit to resume from it."""


def checkpoint_callback(ckpt_dir: Path, every_n_steps: int) -> lightning.pytorch.callbacks.ModelCheckpoint:
    """Keeps ``last.ckpt`` in ``ckpt_dir``, rewritten every ``every_n_steps`` optimizer steps."""
    return lightning.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                                                       every_n_train_steps=every_n_steps)


class ResumeTrainingOrder(lightning.Callback):
    """Positions every resumable training sampler at the step the fit starts from.

    Runs when training starts, after a checkpoint has restored ``global_step`` and before the
    first batch is drawn (samplers are read lazily); 0 for a fresh fit.
    """

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        # Our fits pass one DataLoader; its sampler is ours unless Lightning swapped in its own
        # DistributedSampler (shuffled DDP), whose order restarts the epoch.
        sampler = getattr(trainer.train_dataloader, "sampler", None)
        if isinstance(sampler, ResumableOrder):
            sampler.resume_at(trainer.global_step)


def unusable_reason(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed from, or ``None`` when it can.

    Read weights-only and memory-mapped, so checking a large (IIT) checkpoint costs no copy.
    """
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any unreadable file is a reason, with what torch said
        return f"it cannot be read weights-only ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
    if not isinstance(content, dict):
        return f"it holds a {type(content).__name__}, not a Lightning checkpoint"
    missing = [key for key in RESUME_KEYS if key not in content]
    if missing:
        return f"it lacks the keys {missing} of a Lightning checkpoint"
    return None


def resumable_checkpoint(ckpt_dir: Path) -> Path | None:
    """``ckpt_dir/last.ckpt`` when a fit can resume from it; ``None`` to start from scratch.

    An unusable file is moved aside (kept for inspection, no longer in the way) with a warning
    naming it and why.
    """
    last = ckpt_dir / LAST_NAME
    if not last.exists():
        return None
    reason = unusable_reason(last)
    if reason is None:
        return last
    aside = last.with_name(f"{LAST_NAME}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}")
    last.rename(aside)
    message = f"checkpoint {last} is unusable: {reason}; moved it to {aside.name} and training from scratch"
    warnings.warn(message, RuntimeWarning, stacklevel=2)
    return None


def fit_resuming(trainer: lightning.Trainer, module: lightning.LightningModule, train: DataLoader,
                 ckpt_dir: Path, version: str, site_names: Sequence[str]) -> None:
    """``trainer.fit``, resumed from ``ckpt_dir``'s checkpoint when there is a usable one.

    A fit stopped for non-finite values raises naming its sites by ``site_names`` (one per
    site of the module, e.g. ``block_output-L1-last seed 0``).
    """
    last = resumable_checkpoint(ckpt_dir)
    if last is not None:
        log.info("%s: resuming from %s", version, last)
    try:
        trainer.fit(module, train_dataloaders=train, ckpt_path=None if last is None else str(last),
                    weights_only=True)
    except NonFiniteTrainingError as err:
        raise err.naming(site_names) from None


__all__ = ["LAST_NAME", "ResumeTrainingOrder", "checkpoint_callback", "fit_resuming", "resumable_checkpoint", "unusable_reason"]
