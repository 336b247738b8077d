"""Seeded, cached, filtered counterfactual pairs as a Lightning DataModule.

Every training run of an intervention reads its pairs from here, so the things that make
results comparable live here once: the train, validation and test splits come from different
seeds and share no pair (a held-out IIA must not be measured on training pairs); generated
pairs are cached on disk under a hash of every setting that changes them, written atomically
so a cut-off run never leaves a half-written cache; and :meth:`PairDataModule.filter_with`
keeps only pairs on which the frozen model is right on both base and source, because IIA is
only meaningful where the model computes the task in the first place (DESIGN section 4); pairs
with whole answers (``task.answer_score=sequence``) count a side as right when its own answer
is the best-scoring candidate (:mod:`das_train.data.answer_sequences`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from das_train.core.devices import input_device
from das_train.data.answer_sequences import (
    answer_logits,
    candidate_scores,
    choice_index,
    with_answer,
)
from das_train.data.cache_folders import write_folder_atomically
from das_train.data.fingerprints import settings_fingerprint, tokenizer_fingerprint
from das_train.data.pair_contract import (
    BASE_ANSWER_IDS,
    BASE_EMBEDS,
    BASE_IDS,
    BASE_LABEL,
    CANDIDATE_ANSWER_IDS,
    SOURCE_ANSWER_IDS,
    SOURCE_EMBEDS,
    SOURCE_IDS,
    SOURCE_LABEL,
    CounterfactualTask,
    TaskSpec,
)
from das_train.data.pair_inputs import model_inputs
from das_train.data.samplers import (
    EpochShuffleSampler,
    InOrderSampler,
    ResumableOrder,
    workers_generator,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CACHE_VERSION = 1
"""Bump when pair generation or splitting changes, so old caches are not reused."""
MAX_ROUNDS = 8
"""Generation rounds that top a split up after removing pairs held out by another split."""


def collate(rows: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stacks rows of equal-shaped tensors: ``{column: (batch, ...)}``."""
    return {name: torch.stack([row[name] for row in rows]) for name in rows[0]}


def _split_seed(seed: int, split: str, round_: int) -> int:
    digest = hashlib.sha256(f"{seed}/{split}/{round_}".encode()).hexdigest()
    return int(digest[:12], 16)


def _pair_keys(dataset: Dataset) -> list[bytes]:
    """A key per row of its base and source inputs; equal keys are the same pair."""
    columns = [c for c in (BASE_IDS, SOURCE_IDS, BASE_EMBEDS, SOURCE_EMBEDS) if c in dataset.column_names]
    table = dataset.with_format("numpy", columns=columns)[:]
    arrays = [table[c] for c in columns]  # each (n, ...)
    return [b"|".join(a[i].tobytes() for a in arrays) for i in range(len(dataset))]


def _model_inputs(batch: dict[str, torch.Tensor], side: str, device: torch.device) -> dict[str, torch.Tensor]:
    """A side's model inputs (:func:`~das_train.data.pair_inputs.model_inputs`) on ``device``."""
    inputs = model_inputs(batch, side, is_language_model_task=BASE_IDS in batch)
    return {name: value.to(device) for name, value in inputs.items()}


def predictions(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch,) argmax of the logits at the last position (LM; left-padded rows end there too)
    or of the class logits."""
    logits = model(**inputs).logits  # (batch, length, vocab) or (batch, classes)
    if logits.dim() == 3:
        logits = logits[:, -1]  # (batch, vocab)
    return logits.argmax(-1)


def best_candidates(model: nn.Module, inputs: dict[str, torch.Tensor], candidates: torch.Tensor) -> torch.Tensor:
    """(batch,) index of the candidate answer (``(batch, candidates, T)``) whose summed token
    log-probability after the prompt ``inputs`` is highest: one forward per candidate."""
    candidates = candidates.to(inputs["input_ids"].device)
    return candidate_scores(lambda answer: answer_logits(model(**with_answer(inputs, answer)), answer.shape[1]),
                            candidates).argmax(-1)


class PairDataModule(lightning.LightningDataModule):
    """Train/val/test counterfactual pairs of one task.

    Args:
        task: the task that generates the pairs.
        tokenizer: the tokenizer of text tasks (None: the task's own, or a vector task).
        n_train, n_val, n_test: pairs per split, before filtering.
        batch_size: rows per batch of every dataloader.
        seed: seed of the pairs (each split derives its own) and of the training shuffle.
        cache_dir: where generated pairs are saved and found again; None keeps them in memory.
        filter_pairs: whether :meth:`filter_with` drops pairs the model gets wrong.
        num_workers: dataloader worker processes.
        shuffle: shuffle the training pairs; without it, a DDP run's batches hold exactly the
            rows of a single process's batches (DistributedSampler deals rows round-robin).
    """

    def __init__(
        self,
        task: CounterfactualTask,
        tokenizer: PreTrainedTokenizerBase | None = None,
        n_train: int = 10_000,
        n_val: int = 1_000,
        n_test: int = 1_000,
        batch_size: int = 64,
        seed: int = 0,
        cache_dir: str | None = None,
        filter_pairs: bool = True,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["task", "tokenizer"])
        self.task = task
        self.tokenizer = tokenizer
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.batch_size = batch_size
        self.seed = seed
        self.cache_dir = cache_dir
        self.filter_pairs = filter_pairs
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.datasets: dict[str, Dataset] = {}
        self.dropped: dict[str, int] = {}
        """Pairs :meth:`filter_with` dropped per split (empty before filtering)."""

    # -- identity and caching ------------------------------------------------------------------

    def spec(self) -> TaskSpec:
        """The task's spec under this tokenizer (positions are measured with it)."""
        # TaskSpec positions depend on the tokenizer; the tasks here accept it as an argument.
        return self.task.spec(self.tokenizer) if self.tokenizer is not None else self.task.spec()  # type: ignore[call-arg]

    def fingerprint(self) -> str:
        """A hash of every setting that changes the generated pairs."""
        tok = tokenizer_fingerprint(self.tokenizer) if self.tokenizer is not None else None
        return settings_fingerprint(CACHE_VERSION, self.task.name, self.task, tok, self.sizes, self.seed)

    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return Path(self.cache_dir) / f"{self.task.name}-{self.fingerprint()[:16]}"

    # -- generation ----------------------------------------------------------------------------

    def _generate_split(self, split: str, held_out: set[bytes]) -> Dataset:
        """``n`` pairs for ``split``, none of them in ``held_out``; topped up with further
        seeds when removing held-out pairs leaves too few."""
        n = self.sizes[split]
        parts: list[Dataset] = []
        have = 0
        removed = 0
        for round_ in range(MAX_ROUNDS):
            pairs = self.task.pairs(n if round_ == 0 else 2 * (n - have), _split_seed(self.seed, split, round_), self.tokenizer)
            if held_out:
                keys = _pair_keys(pairs)
                fresh = [i for i, k in enumerate(keys) if k not in held_out]
                removed += len(pairs) - len(fresh)
                pairs = pairs.select(fresh)
            parts.append(pairs.select(range(min(len(pairs), n - have))))
            have += len(parts[-1])
            if have == n:
                break
        else:
            raise ValueError(
                f"could not draw {n} {split} pairs that the other splits do not hold in {MAX_ROUNDS} rounds; "
                f"the task has too few distinct pairs for n_train={self.sizes['train']}, "
                f"n_val={self.sizes['val']}, n_test={self.sizes['test']}"
            )
        if removed:
            logger.info("%s: replaced %d pairs that the held-out splits already hold", split, removed)
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def generate(self) -> DatasetDict:
        """All three splits; test first, then val avoiding test, then train avoiding both.

        A task whose pairs are fixed (a pair file) hands its own splits over instead, through
        ``split_pairs(sizes, seed, tokenizer)``: it knows which rows a file assigns to which
        split, and has no seed to draw further pairs from.
        """
        split_pairs = getattr(self.task, "split_pairs", None)
        if split_pairs is not None:
            return DatasetDict(split_pairs(self.sizes, self.seed, self.tokenizer))
        out: dict[str, Dataset] = {}
        held_out: set[bytes] = set()
        for split in ("test", "val", "train"):
            out[split] = self._generate_split(split, held_out)
            if split != "train":
                held_out.update(_pair_keys(out[split]))
        return DatasetDict({split: out[split] for split in SPLITS})

    def prepare_data(self) -> None:
        """Generates and caches the pairs once (Lightning calls this on one process only)."""
        path = self.cache_path()
        if path is None or path.is_dir():
            return
        _save_atomically(self.generate(), path)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        path = self.cache_path()
        if path is None:
            pairs = self.generate()
        else:
            if not path.is_dir():
                self.prepare_data()
            pairs = load_from_disk(str(path))
            logger.info("loaded %s pairs from %s", {s: len(pairs[s]) for s in SPLITS}, path)
        self.datasets = {split: pairs[split].with_format("torch") for split in SPLITS}

    # -- filtering -----------------------------------------------------------------------------

    def filter_with(self, model: nn.Module) -> dict[str, int]:
        """Keeps the pairs on which ``model`` is right on both base and source.

        Returns (and logs) the number of pairs dropped per split; with ``filter_pairs=False``
        nothing is dropped.
        """
        self.setup()
        if not self.filter_pairs:
            logger.info("pair filtering is off; keeping every pair")
            return {split: 0 for split in SPLITS}
        device = input_device(model)  # a model offloaded by accelerate has weights on `meta`
        was_training = model.training
        model.eval()
        dropped: dict[str, int] = {}
        try:
            for split in SPLITS:
                dataset = self.datasets[split]
                keep = torch.cat([self._right_on_both(model, batch, device) for batch in self._batches(dataset)])
                self.datasets[split] = dataset.select(torch.nonzero(keep).flatten().tolist())
                dropped[split] = len(dataset) - int(keep.sum())
        finally:
            model.train(was_training)
        self.dropped = dropped
        logger.info("filtering with the frozen model dropped %s pairs (kept %s)",
                    dropped, {s: len(self.datasets[s]) for s in SPLITS})
        return dropped

    def _batches(self, dataset: Dataset) -> Iterator[dict[str, torch.Tensor]]:
        size = max(self.batch_size, 256)  # inference only: larger batches are fine
        for start in range(0, len(dataset), size):
            yield dataset[start : start + size]

    @staticmethod
    def _right_on_both(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        if CANDIDATE_ANSWER_IDS in batch:
            return PairDataModule._best_is_own(model, batch, device)
        with torch.no_grad():
            base = predictions(model, _model_inputs(batch, "base", device)).cpu()  # (batch,)
            source = predictions(model, _model_inputs(batch, "source", device)).cpu()
        return (base == batch[BASE_LABEL]) & (source == batch[SOURCE_LABEL])  # (batch,)

    @staticmethod
    def _best_is_own(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Sequence mode: each side's best-scoring candidate is its own answer."""
        candidates = batch[CANDIDATE_ANSWER_IDS]  # (batch, candidates, T)
        keep = torch.ones(len(candidates), dtype=torch.bool)
        with torch.no_grad():
            for side, answers in (("base", BASE_ANSWER_IDS), ("source", SOURCE_ANSWER_IDS)):
                best = best_candidates(model, _model_inputs(batch, side, device), candidates).cpu()  # (batch,)
                keep &= best == choice_index(candidates, batch[answers])
        return keep

    # -- dataloaders ---------------------------------------------------------------------------

    def training_sampler(self, dataset, batch_size: int) -> ResumableOrder:
        """The sampler of training rows for batches of ``batch_size``, shuffled or in order:
        shared with the batched sweep's cached loaders, so both paths see the same batches."""
        if self.shuffle:
            return EpochShuffleSampler(dataset, self.seed, batch_size)
        return InOrderSampler(dataset, batch_size)

    def _loader(self, split: str, training: bool) -> DataLoader:
        self.setup()
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.training_sampler(dataset, self.batch_size) if training else None,
            generator=workers_generator(self.seed),
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", training=False)

    def ordered_dataloader(self, split: str) -> DataLoader:
        """A split in its stored row order (activations collected for probes line up with it)."""
        return self._loader(split, training=False)


def _save_atomically(pairs: DatasetDict, path: Path) -> None:
    """save_to_disk whole or not at all (:func:`write_folder_atomically`)."""
    if write_folder_atomically(path, lambda folder: pairs.save_to_disk(str(folder)), "pairs"):
        logger.info("cached %s pairs at %s", {s: len(pairs[s]) for s in pairs}, path)
