"""Training orders that resume mid-epoch at the batch a cut-off fit would have trained next.

The DataModule's training loader and the batched sweep's cached loaders draw their rows from
these samplers, so both paths see the same batches, and a resumed fit the batches the
uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import RandomSampler, SequentialSampler


class ResumableOrder:
    """A sampler's order as one stream of batches, positioned by the optimizer step.

    Lightning resumes a fit cut off mid-epoch by restarting the epoch's iterator from its
    first batch, and numbers the epochs of a resumed fit its own way, so a sampler that
    follows ``set_epoch`` replays batches the cut-off fit already trained on. Here the
    training order is a stream: epoch ``e``'s rows in :meth:`epoch_order`, cut into batches of
    ``batch_size`` (the last one of an epoch short), then epoch ``e + 1``'s. Each iteration
    yields the rest of the stream's current epoch; :meth:`resume_at` (called with the
    restored ``global_step``, see :mod:`das_train.training.checkpoints`) moves the position to
    the batch that step trains on. One batch is one optimizer step in our fits.
    """

    batch_size: int = 1
    step: int = 0

    def epoch_order(self, epoch: int) -> list[int]:
        raise NotImplementedError

    def resume_at(self, step: int) -> None:
        self.step = step

    def __iter__(self) -> Iterator[int]:
        per_epoch = max(-(-len(self) // self.batch_size), 1)
        epoch, batch = divmod(self.step, per_epoch)
        self.step = (epoch + 1) * per_epoch
        return iter(self.epoch_order(epoch)[batch * self.batch_size :])


class EpochShuffleSampler(ResumableOrder, RandomSampler):
    """A training shuffle whose order is a pure function of (seed, epoch), resumable mid-epoch.

    A DataLoader given ``shuffle=True`` and a seeded generator draws each epoch's order from
    that generator's running state, so a fit resumed from a checkpoint, with a fresh
    generator, would see epoch 0's order again. Here epoch ``e`` takes the order such a
    DataLoader gives in its epoch ``e`` (per epoch it draws a workers' base seed, then two
    permutations, and keeps the first), so an uninterrupted fit sees exactly the batches it
    saw before this class existed, and a resumed one the batches it would have seen
    (:class:`ResumableOrder`). It stays a RandomSampler so that Lightning, under DDP, still
    knows the loader is shuffled and swaps in its DistributedSampler.
    """

    def __init__(self, data_source, seed: int, batch_size: int) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.batch_size = batch_size

    def epoch_order(self, epoch: int) -> list[int]:
        size = len(self.data_source)
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):
            _draw_workers_seed(generator)
            torch.randperm(size, generator=generator)
            torch.randperm(size, generator=generator)
        _draw_workers_seed(generator)
        return torch.randperm(size, generator=generator).tolist()


class InOrderSampler(ResumableOrder, SequentialSampler):
    """The rows in stored order every epoch (``shuffle=False``), resumable mid-epoch."""

    def __init__(self, data_source, batch_size: int) -> None:
        super().__init__(data_source)
        self.batch_size = batch_size

    def epoch_order(self, epoch: int) -> list[int]:
        return list(range(len(self.data_source)))


def _draw_workers_seed(generator: torch.Generator) -> None:
    torch.empty((), dtype=torch.int64).random_(generator=generator)


def workers_generator(seed: int) -> torch.Generator:
    """The generator a training DataLoader draws its workers' base seed from each epoch, so
    that drawing it leaves the global RNG alone."""
    return torch.Generator().manual_seed(seed)
