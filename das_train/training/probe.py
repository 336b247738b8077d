"""Linear probes on collected activations: the baseline IIA is read against.

The pyvene paper's second case study sets DAS next to probing: a probe that decodes a variable
from a site shows the information is *there*, not that the model *uses* it there. A sweep
reports both at every site. This module gathers a site's activations with a
:class:`~das_train.interventions.static.CollectIntervention` (the same site definition DAS uses,
so the two columns of the table describe the same tensor) and trains linear probes with
Lightning, many sites in one fit; :mod:`~das_train.training.probe_results` sets each next to
its control task.

Everything is seeded without touching torch's global RNG, so a sweep's probe figures are
reproducible and independent of what ran before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator, Mapping

import lightning
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

import das_train as pv
from das_train.data.pair_contract import BASE_CONTROL, BASE_VARIABLE
from das_train.data.pair_inputs import Position, model_inputs, row_indices, side_positions
from das_train.training.metrics import CountingAccuracy
from das_train.training.schema import ProbeConfig

Batch = Mapping[str, torch.Tensor]


def site_collector(model: nn.Module, layer: int, component: str) -> pv.IntervenableModel:
    """An IntervenableModel that collects (layer, component), leaving ``model``'s
    ``requires_grad`` flags as they were (wrapping freezes the model; collecting mid-IIT must
    change nothing)."""
    requires_grad = [p.requires_grad for p in model.parameters()]
    try:
        return pv.IntervenableModel(
            {"layer": layer, "component": component, "unit": "pos",
             "intervention_type": pv.CollectIntervention},
            model,
        )
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)


@torch.no_grad()
def collected_rows(collector: pv.IntervenableModel, inputs: Batch, position: int | torch.Tensor | None) -> torch.Tensor:
    """``collector``'s activations on the model ``inputs`` at ``position`` (``None``: the whole
    activation; a ``(batch,)`` tensor: each row's own index, as
    :func:`~das_train.data.pair_inputs.row_indices` gives a RowPosition), one
    ``(batch, units * D)`` float32 row per input, on CPU."""
    device = collector.get_device()
    if isinstance(position, torch.Tensor):
        position = position.reshape(-1, 1).tolist()  # [batch][1]: one unit per row
    locations = None if position is None else {"base": position}
    (_, collected), _ = collector({k: v.to(device) for k, v in inputs.items()}, unit_locations=locations)
    acts = collected[0]  # (batch, units, D); units = 1 at one position
    return acts.reshape(acts.shape[0], -1).float().cpu()  # (batch, units * D)


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    layer: int,
    component: str,
    position: Position,
    dataloader: Iterable[Batch],
    is_language_model_task: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The base inputs' activations at one site, with their variable and control labels.

    Args:
        model: the (frozen) model; left in the train/eval mode it was in.
        layer, component, position: the site, as :class:`~das_train.training.das_module.DASModule`
            takes it (a RowPosition reads each base's own index); ``position=None`` collects the
            whole activation (vector tasks).
        dataloader: pair batches with the base input columns, ``base_variable`` and
            ``base_control``.

    Returns:
        ``(activations, variables, controls)``: ``(N, D)`` float32 on CPU (several units are
        flattened into one row), and two ``(N,)`` int64 label vectors.
    """
    collector = site_collector(model, layer, component)
    activations: list[torch.Tensor] = []
    variables: list[torch.Tensor] = []
    controls: list[torch.Tensor] = []
    for batch in dataloader:
        at = row_indices(position, side_positions(batch, "base"))  # an int, None or (batch,)
        activations.append(collected_rows(collector, model_inputs(batch, "base", is_language_model_task), at))
        variables.append(torch.as_tensor(batch[BASE_VARIABLE]).long().cpu())
        controls.append(torch.as_tensor(batch[BASE_CONTROL]).long().cpu())
    if not activations:
        raise ValueError("the dataloader yielded no batches")
    return torch.cat(activations), torch.cat(variables), torch.cat(controls)


class LinearProbes(lightning.LightningModule):
    """``S`` independent ``Linear(D, n_classes)`` probes on standardized activations, trained
    together with Adam.

    A sweep fits one probe per site; stacking them makes that one training loop instead of one
    per site. The loss is the sum of each probe's mean cross-entropy, so each probe's gradient,
    and (Adam being per-parameter) each probe's whole trajectory, is what it would be alone.

    Standardizing (with the training split's mean and std per probe, kept as buffers) makes one
    learning rate work at every layer, whose activation scales differ by orders of magnitude in
    the residual stream; it does not change what a linear probe can express.

    Args:
        n_probes: number ``S`` of probes.
        input_dim: width ``D`` of one activation row.
        n_classes: number of label values.
        lr: Adam's learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``); more of it makes a probe less able
            to memorise, which the control task measures.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_probes: int, input_dim: int, n_classes: int, lr: float = ProbeConfig.lr,
                 weight_decay: float = ProbeConfig.weight_decay) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a probe needs n_classes >= 2, got {n_classes}")
        if n_probes < 1:
            raise ValueError(f"n_probes must be >= 1, got {n_probes}")
        self.save_hyperparameters()
        # Zero, as logistic regression starts: the weights hold only what the labels put there,
        # so the probe's direction (what it reads, a featurizer of the validity card) is not
        # the random start's direction on features the labels never move.
        self.weight = nn.Parameter(torch.zeros(n_probes, input_dim, n_classes))  # (S, D, C)
        self.bias = nn.Parameter(torch.zeros(n_probes, n_classes))  # (S, C)
        self.register_buffer("mean", torch.zeros(n_probes, input_dim))
        self.register_buffer("std", torch.ones(n_probes, input_dim))
        self.val_accuracy = CountingAccuracy()

    @torch.no_grad()
    def set_normalization(self, rows: TableRows) -> None:
        """Standardizes with the statistics of ``rows`` (the training split)."""
        mean, std = rows.mean_std()
        self.mean.copy_(mean)
        # Constant features (std 0) are left unscaled rather than divided by zero.
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(S, B, D)`` activations -> ``(S, B, n_classes)`` logits."""
        x = (x - self.mean[:, None]) / self.std[:, None]
        return torch.baddbmm(self.bias[:, None], x, self.weight)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Sum over probes of each probe's mean cross-entropy (see the class docstring).
        n_probes, batch, classes = logits.shape
        per_row = nn.functional.cross_entropy(logits.reshape(-1, classes), labels.repeat(n_probes),
                                              reduction="none")
        return per_row.view(n_probes, batch).mean(1).sum()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (S, B, D), (B,)
        loss = self._loss(self(x), y)
        self.log("train/loss", loss / self.hparams.n_probes, on_step=False, on_epoch=True, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # (S, B, D), (B,)
        logits = self(x)  # (S, B, C)
        self.val_accuracy.update(logits, y.expand(logits.shape[0], -1))
        self.log("val/accuracy", self.val_accuracy, on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=y.shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def accuracies(self, rows: TableRows) -> list[float]:
        """Each probe's accuracy on the rows of ``rows`` (read a chunk at a time)."""
        right = torch.zeros(self.hparams.n_probes)
        for x, y in rows.chunks():
            right += (self(x.to(self.device)).argmax(-1).cpu() == y[None]).sum(1)
        return (right / len(rows)).tolist()


class TableRows(Dataset):
    """Labelled rows read from an activation table through an index, a batch at a time.

    ``table`` is ``(S, U, D)``: one slice per probe, a row per distinct input; row ``i`` of the
    data is ``table[:, index[i]]`` with label ``labels[i]``. A sweep's pairs share their inputs
    (see :class:`~das_train.training.sweep.site_cache.LayerActivations`), so no split is ever copied
    out whole: each batch gathers its own rows, ``(S, B, D)``.
    """

    CHUNK_BYTES = 2**20
    """Most bytes a chunk of rows takes when a whole split is read (statistics, accuracy): a
    chunk holds every probe's copy of its rows, so with many probes stacked a fixed row count
    would be a large allocation (4,096 rows of 20 probes of width 64 are 21 MB)."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> None:
        if len(index) != len(labels):
            raise ValueError(f"{len(index)} rows but {len(labels)} labels")
        self.table, self.index, self.labels = table, index, labels
        row_bytes = table.shape[0] * table.shape[-1] * 4  # float32 (S, D) per row
        self.chunk_rows = max(1, self.CHUNK_BYTES // row_bytes)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.table[:, self.index[i]].float(), self.labels[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        picked = torch.as_tensor(indices, dtype=torch.long)
        return self.table[:, self.index[picked]].float(), self.labels[picked]

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self), self.chunk_rows):
            yield self.__getitems__(list(range(start, min(start + self.chunk_rows, len(self)))))

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per probe and feature, the rows' mean and (unbiased) standard deviation, ``(S, D)``
        each, in two passes over the chunks."""
        total = sum(x.sum(1) for x, _ in self.chunks())
        mean = total / len(self)
        if len(self) < 2:
            return mean, torch.ones_like(mean)
        squares = sum(((x - mean[:, None]) ** 2).sum(1) for x, _ in self.chunks())
        return mean, (squares / (len(self) - 1)).sqrt()


def _batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate function for :class:`TableRows` loaders: ``__getitems__`` already stacked it."""
    return batch


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, held-out) index split; at least one example on each side."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * holdout_fraction)), n - 1)
    return order[n_test:], order[:n_test]


def checked_rows(activations: torch.Tensor, labels: torch.Tensor, n_classes: int,
                 rows: torch.Tensor | None) -> torch.Tensor:
    """Each example's row in ``activations`` (``rows``, or one row per example), once the
    shapes agree and every label is a class; else a ValueError naming the shapes or labels."""
    if rows is None:
        rows = torch.arange(activations.shape[1] if activations.dim() == 3 else 0)
    if activations.dim() != 3 or labels.shape != rows.shape:
        raise ValueError(
            f"need activations (S, N, D) and labels (N,), got {tuple(activations.shape)} and "
            f"{tuple(labels.shape)}"
            + ("" if rows.shape == labels.shape else f" for {len(rows)} rows")
        )
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return rows


def train_probes(
    activations: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    lr: float = ProbeConfig.lr,
    weight_decay: float = ProbeConfig.weight_decay,
    batch_size: int = 256,
    max_epochs: int = ProbeConfig.max_epochs,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    accelerator: str = "cpu",
    enable_progress_bar: bool = False,
    logger: Logger | bool = False,
    rows: torch.Tensor | None = None,
) -> tuple[LinearProbes, list[float]]:
    """One probe per site trained on ``activations`` ``(S, N, D)`` with shared ``labels`` ``(N,)``:
    the probes (eval mode; kept for their weight directions) and their held-out accuracies.

    With ``rows`` ``(N,)``, ``activations`` is a table ``(S, U, D)`` of distinct inputs and
    example ``i`` is ``activations[:, rows[i]]``: batches are gathered from the table, so a
    sweep's probes never copy its activations per pair (:class:`TableRows`).

    All probes share the seeded split, initialization and batch order, so each result equals
    fitting that site's probe alone with the same seed (:func:`fit_probe`). The same ``seed``
    gives the same result whatever ran before (torch's global RNG is forked, not reseeded).
    ``accelerator="cpu"`` by default: a probe is a few thousand multiply-adds per example,
    cheaper on CPU than a device round trip.
    """
    labels = labels.long()  # (N,)
    rows = checked_rows(activations, labels, n_classes, rows)
    n_probes, _, width = activations.shape
    train_idx, test_idx = split_indices(len(rows), holdout_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probes = LinearProbes(n_probes, width, n_classes, lr=lr, weight_decay=weight_decay)
    train_rows = TableRows(activations, rows[train_idx], labels[train_idx])
    held_out_rows = TableRows(activations, rows[test_idx], labels[test_idx])
    probes.set_normalization(train_rows)
    train = DataLoader(train_rows, batch_size=batch_size, shuffle=True, collate_fn=_batch_as_is,
                       generator=torch.Generator().manual_seed(seed))
    held_out = DataLoader(held_out_rows, batch_size=held_out_rows.chunk_rows, collate_fn=_batch_as_is)
    trainer = lightning.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        logger=logger,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    # Validating every epoch only feeds the logger; without one it is wasted work.
    trainer.fit(probes, train, held_out if logger else None)
    probes.eval()
    accuracies = probes.accuracies(held_out_rows)
    # The Trainer and its loaders reference each other: collect them now, before the caller's
    # next allocation.
    del trainer, train, held_out
    gc.collect()
    return probes, accuracies


def fit_probes(activations: torch.Tensor, labels: torch.Tensor, n_classes: int, **options) -> list[float]:
    """Each probe's held-out accuracy: :func:`train_probes` (same options) without the probes."""
    return train_probes(activations, labels, n_classes, **options)[1]


def fit_probe(activations: torch.Tensor, labels: torch.Tensor, n_classes: int, **options) -> float:
    """One probe on ``activations`` ``(N, D)``; :func:`fit_probes` with ``S = 1`` (same options)."""
    if activations.dim() != 2:
        raise ValueError(f"need activations (N, D), got {tuple(activations.shape)}")
    return fit_probes(activations[None], labels, n_classes, **options)[0]


__all__ = [
    "LinearProbes",
    "TableRows",
    "collect_activations",
    "collected_rows",
    "fit_probe",
    "fit_probes",
    "site_collector",
    "split_indices",
    "train_probes",
]
