"""Which process of a multi-process job this is (DDP, SLURM, torchrun).

Results, tables and the run's records are written outside any Trainer, by one process only;
the samplers deal rows to the ranks once the process group exists. Both questions are
answered here, so no module asks them its own way.
"""

from __future__ import annotations

import os

import torch


def is_global_zero() -> bool:
    """Rank 0 of a multi-process job: the one process that writes files.

    Read from the environment the launchers set, since files are written outside any Trainer.
    """
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")
    if rank is not None:
        return int(rank) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group, ``(0, 1)`` before one exists or without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


__all__ = ["is_global_zero", "rank_and_world"]
