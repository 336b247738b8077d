"""``IITModule``: interchange intervention training (Geiger et al., 2022) as a LightningModule.

IIT trains the model itself so that chosen variables of a causal model live at chosen sites:
besides the task loss, each step takes, for every variable, a base and a source of its own,
runs the base with the variable's block of units taken from the source (a fixed,
neuron-aligned interchange through das_train's hook core, with no parameters of its own), and
pushes the result towards the causal model's counterfactual label. Gradients flow through the
interchange into the model's weights, on both the base and the source run.

One module serves a classifier on vectors (the hierarchical equality MLP: the site is a hidden
layer, ``position=None``) and a language model on token ids (the site is a layer's residual
stream at one token position, and the prediction is the next token at the last position).

The model is a registered submodule, so its weights are in the optimizer, the checkpoint and
DDP's synchronization, as in :class:`~das_train.training.das_module.DASModule` with ``iit=True``;
every rank computes the loss on its own rows, and logs (and checks for finiteness) the mean
over the ranks: the loss one process would have on the whole batch. With ``iit_weight=0`` the
module trains on the task loss alone: the same model, seed and steps without IIT, the job's
baseline.

Batches are :func:`~das_train.training.iit_data.variable_rows` batches: each variable's pair
contract columns under ``"<variable>."`` (``"WX.base_inputs_embeds"``, ``"gender.base_input_ids"``,
``"gender.base_label"``, ``"gender.counterfactual_label"``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning
import torch
from torch import nn

from das_train.core.model import IntervenableModel
from das_train.data.pair_contract import BASE_LABEL, COUNTERFACTUAL_LABEL
from das_train.data.pair_inputs import Position, check_position, model_inputs
from das_train.interventions.static import VanillaIntervention
from das_train.training.das_loop import counterfactual_loss
from das_train.training.das_module import prediction_logits, unit_locations
from das_train.training.finite import check_finite
from das_train.training.iit_checks import block_problems
from das_train.training.iit_data import Pairs, batch_pairs
from das_train.training.ranks import rank_and_world

Batch = Mapping[str, torch.Tensor]


def neuron_interchange(model: nn.Module, layer: int, component: str = "block_output") -> IntervenableModel:
    """The fixed interchange at ``component`` of ``layer``; a call's ``subspaces`` say which
    units (neurons) move from the source into the base."""
    return IntervenableModel({"layer": layer, "component": component, "intervention_type": VanillaIntervention},
                             model)


def interchange_logits(intervenable: IntervenableModel, pairs: Pairs, units: Sequence[int], position: Position,
                       is_language_model_task: bool) -> torch.Tensor:
    """``(n, classes)`` prediction logits of the bases of ``pairs`` run with ``units`` of the
    site (at ``position`` of each side, or the whole activation for ``None``) taken from the
    sources."""
    base = model_inputs(pairs, "base", is_language_model_task)
    source = model_inputs(pairs, "source", is_language_model_task)
    n = len(pairs[COUNTERFACTUAL_LABEL])
    _, out = intervenable(base, [source], unit_locations=unit_locations(pairs, position),
                          subspaces=[list(units)] * n)
    return prediction_logits(out)


class IITModule(lightning.LightningModule):
    """Trains ``model`` with ``task_weight`` x task loss + ``iit_weight`` x interchange loss.

    Args:
        model: the model to train (the hierarchical equality MLP, a tiny language model); trained
            in place.
        blocks: each variable's units ``[start, stop)`` at the site; disjoint, inside the layer.
        layer: layer of the site.
        component: component of the site; the blocks index its units (a language model's:
            dimensions of the residual stream).
        position: token position of the site (an int, or a RowPosition read per row); ``None``
            for a classifier on vectors, whose activations have no positions.
        is_language_model_task: token-id inputs whose prediction is the next token at the last
            position (True), or ``inputs_embeds`` and a classifier's output (False).
        task_weight: weight of the cross-entropy of the model's output on the bases.
        iit_weight: weight of the interchange loss, the mean over variables of the cross-entropy
            of the intervened output against the counterfactual label; 0 trains without IIT.
        lr: Adam's learning rate.
    """

    def __init__(self, model: nn.Module, blocks: Mapping[str, Sequence[int]], layer: int = 0,
                 component: str = "block_output", task_weight: float = 1.0, iit_weight: float = 1.0,
                 lr: float = 2e-3, position: Position = None, is_language_model_task: bool = False) -> None:
        super().__init__()
        self.model = model
        self.position = check_position(position)
        self.is_language_model_task = is_language_model_task
        self.intervenable = neuron_interchange(model, layer, component)
        owner_mode = model.training
        # The hook core freezes a model it wraps (DAS trains only the intervention); IIT trains
        # the model, in the mode its owner chose.
        self.intervenable.enable_model_gradients()
        model.train(owner_mode)
        width = self.intervenable.interventions[self.intervenable.sorted_keys[0]].embed_dim
        problems = block_problems(list(blocks), blocks, width, known=list(blocks), where="IITModule")
        if problems:
            raise ValueError("bad IIT blocks:\n  - " + "\n  - ".join(problems))
        self.units = {name: list(range(*block)) for name, block in blocks.items()}
        self.task_weight, self.iit_weight, self.lr = task_weight, iit_weight, lr
        self.save_hyperparameters(ignore=["model", "position"])

    @property
    def variables(self) -> list[str]:
        return list(self.units)

    def interchange(self, pairs: Pairs, variable: str) -> torch.Tensor:
        """``(n, classes)`` logits of the bases with ``variable``'s block from the sources."""
        return interchange_logits(self.intervenable, pairs, self.units[variable], self.position,
                                  self.is_language_model_task)

    def predict(self, pairs: Pairs) -> torch.Tensor:
        """``(n, classes)`` prediction logits of the model on the bases of ``pairs``, unintervened."""
        return prediction_logits(self.model(**model_inputs(pairs, "base", self.is_language_model_task)))

    def task_loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the model on every variable's bases against their own labels (the
        mean over variables: with one batch size for all, the mean over every base)."""
        losses = [nn.functional.cross_entropy(self.predict(pairs), pairs[BASE_LABEL])
                  for pairs in (batch_pairs(batch, v) for v in self.variables)]
        return torch.stack(losses).mean()

    def iit_loss(self, batch: Batch) -> torch.Tensor:
        """Mean over variables of the interchange's cross-entropy against the counterfactual label."""
        losses = [counterfactual_loss(self.interchange(pairs, v), pairs[COUNTERFACTUAL_LABEL])
                  for v, pairs in ((v, batch_pairs(batch, v)) for v in self.variables)]
        return torch.stack(losses).mean()

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        size = int(batch[f"{self.variables[0]}.{COUNTERFACTUAL_LABEL}"].shape[0])
        losses = {"task_loss": self.task_loss(batch)}
        loss = self.task_weight * losses["task_loss"]
        if self.iit_weight:
            losses["iit_loss"] = self.iit_loss(batch)
            loss = loss + self.iit_weight * losses["iit_loss"]
        losses["loss"] = loss
        # The means over the ranks, each over as many rows: one process's losses on the whole
        # batch. Every rank checks the same loss for finiteness, so none stops alone while the
        # others wait for it in the next all-reduce.
        means = mean_over_ranks(torch.stack(list(losses.values())).detach())
        for name, mean in zip(losses, means, strict=True):
            self.log(f"train/{name}", mean, on_step=True, on_epoch=False, prog_bar=name == "loss", batch_size=size)
        self._step_loss = means[-1]
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """Lightning's step, then the check that the loss and the weights are still finite."""
        super().optimizer_step(*args, **kwargs)
        check_finite(self.trainer.global_step + 1, {0: self._step_loss}, {0: list(self.model.parameters())})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.lr)

    # -- evaluation, outside the optimizer's graph ---------------------------------------------
    @torch.no_grad()
    def neuron_iia(self, pairs: Mapping[str, Pairs]) -> dict[str, float]:
        """Per variable, the share of its pairs whose fixed interchange of the variable's block
        gives the counterfactual label (all pairs counted)."""
        with eval_mode(self.model):
            return {v: _share(self.interchange(_on(p, self.device), v), p[COUNTERFACTUAL_LABEL])
                    for v, p in pairs.items()}

    @torch.no_grad()
    def task_accuracy(self, factual: Pairs) -> float:
        """Share of ``factual``'s bases (base columns and ``base_label``) the model gets right."""
        with eval_mode(self.model):
            return _share(self.predict(_on(factual, self.device)), factual[BASE_LABEL])


class IIACurve(lightning.Callback):
    """Neuron-aligned IIA on fixed held-out pairs every ``every`` steps (and before the first),
    as ``(step, variable, iia)`` rows in :attr:`points`: how fast IIT moves each variable into
    its block. Every rank computes the same rows; the job writes rank 0's. The points are part
    of the fit's checkpoint, so a resumed fit's curve has the points from before the cut."""

    def __init__(self, pairs: Mapping[str, Pairs], every: int) -> None:
        self.pairs, self.every = pairs, every
        self.points: list[tuple[int, str, float]] = []

    def state_dict(self) -> dict[str, list]:
        return {"points": [list(point) for point in self.points]}  # plain data: read weights-only

    def load_state_dict(self, state_dict: dict[str, list]) -> None:
        self.points = [(int(step), str(v), float(iia)) for step, v, iia in state_dict["points"]]

    def _record(self, module: IITModule, step: int) -> None:
        self.points += [(step, v, iia) for v, iia in module.neuron_iia(self.pairs).items()]

    def on_train_start(self, trainer: lightning.Trainer, module: IITModule) -> None:
        if trainer.global_step == 0:
            self._record(module, 0)

    def on_train_batch_end(self, trainer: lightning.Trainer, module: IITModule, *args) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self._record(module, step)


class eval_mode:
    """The model in eval mode for a block, then back in the mode its owner chose."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for module, mode in self.modes:
            module.training = mode


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the ranks of a multi-process job (one all-reduce); as they are
    in one process."""
    world = rank_and_world()[1]
    if world == 1:
        return values
    values = values.clone()
    torch.distributed.all_reduce(values)
    return values / world


def _on(pairs: Pairs, device: torch.device) -> Pairs:
    return {key: value.to(device) for key, value in pairs.items()}


def _share(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1).cpu() == labels.cpu()).float().mean())


__all__ = ["IIACurve", "IITModule", "eval_mode", "interchange_logits", "mean_over_ranks", "neuron_interchange"]
