"""How a run's loaders deal their rows to the ranks of a multi-process job.

Lightning's own DistributedSampler pads an evaluation split (counting pairs twice in IIA) and
restarts a shuffled epoch on resume. These samplers deal rows so that several processes train
and evaluate exactly as one process does, and a fit cut off mid-epoch resumes at its batch.
"""

from __future__ import annotations

import torch

from das_train.data.samplers import EpochShuffleSampler, ResumableOrder
from das_train.training.ranks import rank_and_world
from das_train.training.schema import TrainerConfig


class RankSliceSampler(ResumableOrder, torch.utils.data.DistributedSampler):
    """Rows ``rank, rank + world, ...`` in order, with the rank read when iterated.

    Two uses:

    - training with ``trainer.shuffle=false`` (``drop_remainder=True``): a DDP step then sees
      exactly the rows one process sees in a batch ``world`` times larger; the last
      ``size % world`` rows are dropped so that every rank takes the same number of steps.
    - evaluation (``drop_remainder=False``): every row exactly once across ranks, the first
      ``size % world`` ranks holding one row more. Lightning's own DistributedSampler pads a
      split whose size is not a multiple of the world size by repeating rows, which would
      count those pairs twice in IIA.

    It subclasses DistributedSampler only so that Lightning, which replaces any other sampler
    of a distributed run when ``use_distributed_sampler=True``, leaves it alone; it does not
    call that class's constructor, which needs the process group. The rank and world size are
    read when iterated, once the process group exists. A training fit resumed mid-epoch
    continues at the batch it was cut off at (:class:`~das_train.data.samplers.ResumableOrder`).
    """

    def __init__(self, size: int, drop_remainder: bool = True, batch_size: int = 1) -> None:
        self.size = size
        self.drop_remainder = drop_remainder
        self.batch_size = batch_size
        self.epoch = 0

    @staticmethod
    def _world() -> tuple[int, int]:
        return rank_and_world()

    @property
    def rank(self) -> int:
        return self._world()[0]

    @property
    def num_replicas(self) -> int:
        return self._world()[1]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # the order never changes with the epoch; kept for Lightning's call

    def epoch_order(self, epoch: int) -> list[int]:
        rank, world = self._world()
        stop = self.size - self.size % world if self.drop_remainder else self.size
        return list(range(rank, stop, world))

    def __len__(self) -> int:
        rank, world = self._world()
        if self.drop_remainder:
            return self.size // world
        return len(range(rank, self.size, world))


class RankShuffleSampler(RankSliceSampler):
    """Training with ``trainer.shuffle=true`` on several processes: epoch ``e``'s shuffle of the
    whole split (the order one process's
    :class:`~das_train.data.samplers.EpochShuffleSampler` takes), dealt to the ranks in
    turn, the last ``size % world`` rows dropped.

    The order is a pure function of (seed, epoch), so a fit resumed mid-epoch continues at the
    batch it was cut off at, which Lightning's own shuffled DistributedSampler cannot (it
    restarts the epoch). Rank ``r``'s batch ``k`` of ``b`` rows holds the rows
    ``r, r + world, ...`` of the shuffle's ``k``-th run of ``world * b``: together the ranks
    train on one process's batch of ``world * b`` wherever the split divides into such
    batches.
    """

    def __init__(self, size: int, seed: int, batch_size: int) -> None:
        super().__init__(size, drop_remainder=True, batch_size=batch_size)
        self.shuffle = EpochShuffleSampler(range(size), seed, batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        rank, world = self._world()
        order = self.shuffle.epoch_order(epoch)
        return order[rank : len(order) - len(order) % world : world]


def _with_sampler(loader: torch.utils.data.DataLoader, sampler: torch.utils.data.Sampler) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                                       sampler=sampler, num_workers=loader.num_workers)


def distributed_train_loader(trainer: TrainerConfig, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader``, or when the ``trainer`` runs several processes its rows dealt to the ranks:
    in order (:class:`RankSliceSampler`), or shuffled as ``loader``'s own
    :class:`~das_train.data.samplers.EpochShuffleSampler` shuffles (:class:`RankShuffleSampler`)."""
    if trainer.devices * trainer.num_nodes == 1:
        return loader
    size, batch = len(loader.dataset), loader.batch_size
    if isinstance(loader.sampler, EpochShuffleSampler):
        return _with_sampler(loader, RankShuffleSampler(size, loader.sampler.seed, batch))
    return _with_sampler(loader, RankSliceSampler(size, batch_size=batch))


def train_loader(trainer: TrainerConfig, datamodule) -> torch.utils.data.DataLoader:
    return distributed_train_loader(trainer, datamodule.train_dataloader())


def distributed_eval_loader(loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
    """``loader``'s rows in order, each evaluated exactly once across ranks (RankSliceSampler).

    With one process it yields what ``loader`` yields (an unshuffled evaluation loader). Under
    DDP, with ``trainer.shuffle`` on or off alike, Lightning keeps this sampler instead of
    padding the split, so an IIA or accuracy counted over it is the single-process value.
    """
    return _with_sampler(loader, RankSliceSampler(len(loader.dataset), drop_remainder=False))


__all__ = ["RankShuffleSampler", "RankSliceSampler", "distributed_eval_loader", "distributed_train_loader",
           "train_loader"]
