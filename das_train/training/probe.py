"""Linear probes on collected activations: the baseline IIA is read against.

The pyvene paper's second case study sets DAS next to probing: a probe that decodes a variable
from a site shows the information is *there*, not that the model *uses* it there. A sweep
reports both at every site. This module gathers a site's activations with a
:class:`~das_train.interventions.static.CollectIntervention` (the same site definition DAS uses,
so the two columns of the table describe the same tensor), trains a linear probe with Lightning,
and runs the control task of Hewitt & Liang (2019): the same probe on labels that are a random
function of the word, whose accuracy measures what the probe can memorise. Selectivity = probe
accuracy - control accuracy; a probe is only informative where it is selective.

Everything is seeded without touching torch's global RNG, so a sweep's probe figures are
reproducible and independent of what ran before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import lightning
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import das_train as pv
from das_train.training.das_module import model_inputs
from das_train.training.metrics import CountingAccuracy
from tasks.base import BASE_CONTROL, BASE_VARIABLE

Batch = Mapping[str, torch.Tensor]


@torch.no_grad()
def collect_activations(
    model: nn.Module,
    layer: int,
    component: str,
    position: int | None,
    dataloader: Iterable[Batch],
    is_language_model_task: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The base inputs' activations at one site, with their variable and control labels.

    Args:
        model: the (frozen) model; left in the train/eval mode it was in.
        layer, component, position: the site, as :class:`~das_train.training.das_module.DASModule`
            takes it; ``position=None`` collects the whole activation (vector tasks).
        dataloader: pair batches with the base input columns, ``base_variable`` and
            ``base_control``.

    Returns:
        ``(activations, variables, controls)``: ``(N, D)`` float32 on CPU (several units are
        flattened into one row), and two ``(N,)`` int64 label vectors.
    """
    # Wrapping freezes the model; restore its flags so collecting mid-IIT changes nothing.
    requires_grad = [p.requires_grad for p in model.parameters()]
    try:
        collector = pv.IntervenableModel(
            {"layer": layer, "component": component, "unit": "pos",
             "intervention_type": pv.CollectIntervention},
            model,
        )
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
    device = collector.get_device()
    locations = None if position is None else {"base": position}
    activations: list[torch.Tensor] = []
    variables: list[torch.Tensor] = []
    controls: list[torch.Tensor] = []
    for batch in dataloader:
        base = {k: v.to(device) for k, v in model_inputs(batch, "base", is_language_model_task).items()}
        (_, collected), _ = collector(base, unit_locations=locations)
        acts = collected[0]  # (batch, units, D); units = 1 at one position
        activations.append(acts.reshape(acts.shape[0], -1).float().cpu())  # (batch, units * D)
        variables.append(torch.as_tensor(batch[BASE_VARIABLE]).long().cpu())
        controls.append(torch.as_tensor(batch[BASE_CONTROL]).long().cpu())
    if not activations:
        raise ValueError("the dataloader yielded no batches")
    return torch.cat(activations), torch.cat(variables), torch.cat(controls)


class LinearProbe(lightning.LightningModule):
    """``Linear(D, n_classes)`` on standardized activations, trained with Adam.

    Standardizing (with the training split's mean and std, kept as buffers) makes one learning
    rate work at every layer, whose activation scales differ by orders of magnitude in the
    residual stream; it does not change what a linear probe can express.

    Args:
        input_dim: width ``D`` of one activation row.
        n_classes: number of label values.
        lr: Adam's learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``); more of it makes the probe less able
            to memorise, which the control task measures.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, input_dim: int, n_classes: int, lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a probe needs n_classes >= 2, got {n_classes}")
        self.save_hyperparameters()
        self.linear = nn.Linear(input_dim, n_classes)
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))
        self.train_accuracy = CountingAccuracy()
        self.val_accuracy = CountingAccuracy()

    @torch.no_grad()
    def set_normalization(self, activations: torch.Tensor) -> None:
        """Standardizes with the statistics of ``activations`` ``(N, D)`` (the training split)."""
        self.mean.copy_(activations.mean(0))
        # Constant features (std 0) are left unscaled rather than divided by zero.
        std = activations.std(0) if activations.shape[0] > 1 else torch.ones_like(self.std)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.std)  # (batch, n_classes)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_accuracy.update(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=y.shape[0])
        self.log("train/accuracy", self.train_accuracy, on_step=False, on_epoch=True, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_accuracy.update(self(x), y)
        self.log("val/accuracy", self.val_accuracy, on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=y.shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)

    @torch.no_grad()
    def accuracy(self, activations: torch.Tensor, labels: torch.Tensor) -> float:
        metric = CountingAccuracy()
        metric.update(self(activations.to(self.device)).cpu(), labels.cpu())
        return float(metric.compute())


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, held-out) index split; at least one example on each side."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * holdout_fraction)), n - 1)
    return order[n_test:], order[:n_test]


def fit_probe(
    activations: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    max_epochs: int = 30,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    accelerator: str = "cpu",
    enable_progress_bar: bool = False,
    logger: Logger | bool = False,
) -> float:
    """Trains a :class:`LinearProbe` on a seeded split and returns its held-out accuracy.

    The same ``seed`` gives the same split, initialization and batch order, whatever ran before
    (torch's global RNG is forked, not reseeded). ``accelerator="cpu"`` by default: a probe is
    a few thousand multiply-adds per example, cheaper on CPU than a device round trip.
    """
    activations = activations.float()  # (N, D)
    labels = labels.long()  # (N,)
    if activations.dim() != 2 or labels.shape != activations.shape[:1]:
        raise ValueError(
            f"need activations (N, D) and labels (N,), got {tuple(activations.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    train_idx, test_idx = split_indices(activations.shape[0], holdout_fraction, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(activations.shape[1], n_classes, lr=lr, weight_decay=weight_decay)
    probe.set_normalization(activations[train_idx])
    train = DataLoader(
        TensorDataset(activations[train_idx], labels[train_idx]), batch_size=batch_size,
        shuffle=True, generator=torch.Generator().manual_seed(seed),
    )
    held_out = DataLoader(TensorDataset(activations[test_idx], labels[test_idx]), batch_size=4096)
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
    trainer.fit(probe, train, held_out if logger else None)
    probe.eval()
    return probe.accuracy(activations[test_idx], labels[test_idx])


@dataclass(frozen=True)
class ProbeResult:
    """A probe's held-out accuracy next to its control task's (Hewitt & Liang, 2019)."""

    accuracy: float
    """Held-out accuracy on the variable."""
    control_accuracy: float
    """Held-out accuracy of the same probe, same split, on the control labels."""

    @property
    def selectivity(self) -> float:
        """``accuracy - control_accuracy``: how much of the accuracy memorising cannot explain."""
        return self.accuracy - self.control_accuracy


def probe_with_control(
    activations: torch.Tensor,
    variables: torch.Tensor,
    controls: torch.Tensor,
    n_classes: int,
    n_control_classes: int | None = None,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    max_epochs: int = 30,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    accelerator: str = "cpu",
    enable_progress_bar: bool = False,
    logger: Logger | bool = False,
) -> ProbeResult:
    """Fits the probe on ``variables`` and, with identical settings, on ``controls``.

    ``n_control_classes`` defaults to ``controls.max() + 1``.
    """
    if n_control_classes is None:
        n_control_classes = max(int(controls.max()) + 1, 2)

    def fit(labels: torch.Tensor, classes: int) -> float:
        return fit_probe(
            activations, labels, classes, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, max_epochs=max_epochs, holdout_fraction=holdout_fraction,
            seed=seed, accelerator=accelerator, enable_progress_bar=enable_progress_bar,
            logger=logger,
        )

    return ProbeResult(fit(variables, n_classes), fit(controls, n_control_classes))


__all__ = [
    "LinearProbe",
    "ProbeResult",
    "collect_activations",
    "fit_probe",
    "probe_with_control",
    "split_indices",
]
