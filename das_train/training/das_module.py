"""``DASModule``: distributed alignment search at one site, as a LightningModule.

A sweep trains one intervention per (layer, position) site on counterfactual pairs and wants
Lightning's devices, DDP, logging and checkpointing for each; this module is that one site.
It wraps the model in an :class:`~das_train.core.model.IntervenableModel` with one trainable
intervention (low-rank rotated, full rotation or boundless), trains it with
:func:`~das_train.training.das_loop.counterfactual_loss`, and reports interchange intervention
accuracy (IIA) with a metric that is exact under DDP.

Two modes:

- **DAS** (default): the model is frozen and is *not* a submodule, so checkpoints, DDP and
  ``state_dict()`` hold only the intervention (pyvene 0.1.8 saved the frozen model with every
  intervention). It stays in eval mode, follows ``module.to(...)`` outside a Trainer, and under a
  Trainer is placed on the module's device once and left there at teardown (see
  :meth:`DASModule._moves_frozen_model`), so a sweep does not copy it back and forth per site.
- **IIT** (``iit=True``, interchange intervention training): the model is trained too, so it is
  registered as the submodule ``model``; its weights are then in the optimizer, in the
  checkpoint and synchronized by DDP. Its train/eval mode stays as its owner set it (Lightning
  2.6 no longer switches modules to train mode; it warns about modules left in eval mode), so
  call ``model.train()`` first to train it with dropout.

Batches are dicts with the pair columns of :mod:`das_train.data.pair_contract` (``base_input_ids``,
``base_attention_mask``, ``source_input_ids``, ... or ``base_inputs_embeds``, ... and
``counterfactual_label``), as a ``datasets.Dataset`` in torch format yields them. A batch with
``counterfactual_answer_ids`` (``task.answer_score=sequence``) is scored on whole answers
(:mod:`das_train.training.sequence_scoring`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from torch import nn

from das_train.core.devices import input_device, is_dispatched, place_model
from das_train.core.model import IntervenableModel
from das_train.data.answer_sequences import AnswerForward
from das_train.data.pair_contract import COUNTERFACTUAL_LABEL, RowPosition
from das_train.data.pair_inputs import (
    Position,
    check_position,
    model_inputs,
    row_indices,
    side_positions,
)
from das_train.interventions.base import INTERVENTION_REGISTRY, Intervention
from das_train.training.das_loop import boundary_penalty as total_boundary_penalty
from das_train.training.das_loop import counterfactual_loss
from das_train.training.finite import check_finite
from das_train.training.metrics import InterchangeInterventionAccuracy, PairCount
from das_train.training.schema import InterventionConfig, SweepConfig
from das_train.training.sequence_scoring import (
    answer_forward,
    is_sequence_batch,
    prompt_position,
    sequence_loss,
    sequence_predictions,
)

Batch = Mapping[str, torch.Tensor]


def unit_locations(batch: Batch, position: Position) -> dict[str, Any] | None:
    """The hook core's ``unit_locations`` of a one-intervention site at ``position`` on a pair
    batch: a shared index as it is; a RowPosition as pyvene's nested per-example form, one
    ``[batch][1]`` list per side, each row's source index going into its own base index."""
    if position is None:
        return None
    if not isinstance(position, RowPosition):
        return {"sources->base": position}
    source = row_indices(position, side_positions(batch, "source"))  # (batch,)
    base = row_indices(position, side_positions(batch, "base"))  # (batch,)
    return {"sources->base": ([source[:, None].tolist()], [base[:, None].tolist()])}


def prediction_logits(outputs: Any) -> torch.Tensor:
    """The logits the label is read from: the last position's, ``(batch, classes)``.

    Rows are fixed-length templates or left-padded, so the prediction of a language model is at
    the last position of every row; a classifier's ``(batch, classes)`` logits pass through unchanged.
    """
    if isinstance(outputs, torch.Tensor):
        logits = outputs
    elif hasattr(outputs, "logits"):
        logits = outputs.logits
    elif isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        logits = outputs[0]
    else:
        raise TypeError(f"cannot find logits in a model output of type {type(outputs).__name__}")
    # (batch, ..., classes) -> (batch, positions, classes) -> (batch, classes)
    return logits.reshape(logits.shape[0], -1, logits.shape[-1])[:, -1]


PREDICTION_ONLY = {"logits_to_keep": 1}
"""Keyword options of a Hugging Face causal LM that leave the prediction's logits unchanged but
skip work a training forward never reads: the language-model head at every position but the
last (on a 50k vocabulary, that head's logits are a large share of a step's memory). The
key/value cache is left as the model's config has it: turning it off made GPT-NeoX's attention
build a full mask and keep it for the backward, more memory for no time saved."""


def prediction_only_options(model: nn.Module) -> dict[str, Any]:
    """The :data:`PREDICTION_ONLY` options that ``model``'s forward accepts (none for a model
    without them, such as the built-in MLP and GRU)."""
    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {name: value for name, value in PREDICTION_ONLY.items() if name in accepted}


def trainable_intervention_class(name: str, iit: bool) -> type[Intervention]:
    """Looks ``name`` up in the registry and checks it can be trained in this mode."""
    if name not in INTERVENTION_REGISTRY:
        trainable = sorted(n for n, c in INTERVENTION_REGISTRY.items() if c.trainable)
        raise ValueError(f"unknown intervention {name!r}; trainable ones: {trainable}")
    cls = INTERVENTION_REGISTRY[name]
    if cls.source_kind != "interchange":
        raise ValueError(f"{name} takes no source, so it cannot be trained on counterfactual pairs")
    if not cls.trainable and not iit:
        raise ValueError(
            f"{name} has no parameters, so DAS has nothing to train; pick a trainable intervention "
            "(e.g. LowRankRotatedSpaceIntervention), or set iit=True to train the model through it"
        )
    return cls


def check_training_options(low_rank_dimension: int, lr: float, boundary_penalty: float) -> None:
    """Refuses a rank below 1, a non-positive learning rate or a negative boundary penalty,
    naming the bad value, before anything is built."""
    if low_rank_dimension < 1:
        raise ValueError(f"low_rank_dimension must be >= 1, got {low_rank_dimension}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if boundary_penalty < 0:
        raise ValueError(f"boundary_penalty must be >= 0, got {boundary_penalty}")


class DASModule(lightning.LightningModule):
    """Trains one intervention at one site on counterfactual pairs (DAS), or the model too (IIT).

    Args:
        model: the model to intervene on (a Hugging Face LM, a built-in MLP/GRU, any module).
            Not a hyperparameter; a submodule only when ``iit`` (see the module docstring).
            Its ``requires_grad`` flags are set: off for DAS, on for IIT; for DAS it is also put
            in eval mode.
        layer: layer of the site.
        component: component of the site (``block_output``, ``mlp_output``, ... or a module path).
        position: token position of the site, the same in base and source; a
            :class:`~das_train.data.pair_contract.RowPosition` reads each pair's base and source
            index from the batch (:func:`unit_locations`); ``None`` intervenes on the whole
            activation (vector tasks, where the activation has no positions).
        intervention: registered name of the intervention class.
        low_rank_dimension: size of the interchanged subspace: the rank ``k`` of a low-rank
            rotation, or the number of leading rotated coordinates a full rotation interchanges.
        lr: Adam's learning rate. Every default here is the run config's (schema.py), so a
            module built in code trains as a run with no overrides does.
        boundary_penalty: weight of the boundless intervention's boundary sparsity loss.
        iit: also train the model (interchange intervention training).
        is_language_model_task: token-id inputs (True) or ``inputs_embeds`` (False).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int,
        component: str = SweepConfig.component,
        position: Position = None,
        intervention: str = InterventionConfig.type,
        low_rank_dimension: int = InterventionConfig.low_rank_dimension,
        lr: float = InterventionConfig.lr,
        boundary_penalty: float = InterventionConfig.boundary_penalty,
        iit: bool = InterventionConfig.iit,
        is_language_model_task: bool = True,
    ) -> None:
        super().__init__()
        # Set first: `_apply` and `train` read them.
        self.iit = iit
        self.position = check_position(position)
        self.is_language_model_task = is_language_model_task
        self.call_options = prediction_only_options(model)
        check_training_options(low_rank_dimension, lr, boundary_penalty)
        self.save_hyperparameters(ignore=["model"])
        if isinstance(position, RowPosition):
            # Checkpoints are read with weights_only=True, which refuses our classes: plain data.
            self.hparams["position"] = {"row_position_column": position.column}
        cls = trainable_intervention_class(intervention, iit)
        if iit:
            # A submodule: its weights are trained, checkpointed and synchronized by DDP.
            self.model = model
        else:
            # Held, not registered: the checkpoint and DDP see only the intervention.
            object.__setattr__(self, "model", model)
            model.eval()  # DAS asks what the trained model computes: no dropout
        self.intervenable = IntervenableModel(
            {
                "layer": layer,
                "component": component,
                "unit": "pos",
                "intervention_type": cls,
                "low_rank_dimension": low_rank_dimension,
            },
            model,
        )
        set_interchange_dim: Callable[[int], None] | None = getattr(
            self.intervention, "set_interchange_dim", None
        )
        if set_interchange_dim is not None:
            # A full rotation interchanges all coordinates by default, which is a plain
            # interchange with nothing to learn; DAS swaps a k-dimensional rotated subspace.
            set_interchange_dim(low_rank_dimension)
        if iit:
            owner_mode = model.training
            self.intervenable.enable_model_gradients()
            # enable_model_gradients() switches to train mode, as pyvene's does; IIT here keeps
            # the mode the model's owner chose (module docstring).
            model.train(owner_mode)
        self.val_iia = InterchangeInterventionAccuracy()
        self.test_iia = InterchangeInterventionAccuracy()
        # Pairs evaluated, across ranks: shows each held-out pair was counted exactly once.
        self.val_pairs = PairCount()
        self.test_pairs = PairCount()

    @property
    def intervention(self) -> Intervention:
        """The trained intervention (a property, so the state dict holds it once)."""
        return self.intervenable.interventions[self.intervenable.sorted_keys[0]]

    # -- where the frozen model lives --------------------------------------------------------
    def _moves_frozen_model(self) -> bool:
        """Whether a device or dtype change of this module should reach the frozen model.

        Outside a Trainer it does: ``module.to("cuda")`` or ``module.double()`` carry the model
        along, as they would a submodule. While a Trainer runs the module it does not:
        Lightning moves the module to its device at the start of every ``fit``/``test`` and
        back to the CPU at teardown, which for a sweep sharing one 7B-parameter model over
        hundreds of sites would copy the model across PCIe four times per site. There the
        ``on_*_start`` hooks place the model once (:meth:`place_frozen_model`) and teardown
        leaves it where it is. A model placed by accelerate (``device_map``, ``cpu_offload``)
        is never moved: that would fail on offloaded weights or undo the dispatch; the hook
        core carries units between its devices and the intervention's.
        """
        if self.iit or is_dispatched(self.model):
            return False  # IIT: the model is a submodule and moves with the module anyway
        trainer = self._trainer
        return trainer is None or trainer.state.status != TrainerStatus.RUNNING

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> DASModule:
        # `.to(device)`, `.cuda()`, `.half()` all end here. The frozen model is not a
        # submodule (so it stays out of checkpoints), so it is moved along by hand.
        super()._apply(fn, recurse)
        if self._moves_frozen_model():
            self.model._apply(fn, recurse)
        return self

    def place_frozen_model(self) -> None:
        """Puts the frozen model on this module's device unless it is there already.

        Called when a Trainer starts fitting, validating, testing or predicting, after it has
        moved the module. The first site of a sweep moves the model; every later one finds it in
        place and copies nothing. Only the device changes: the model keeps its own dtype
        (``model.dtype: bfloat16`` in a recipe), whatever the Trainer's precision does to the
        intervention.
        """
        if not self.iit:
            place_model(self.model, self.device)

    def on_fit_start(self) -> None:
        self.place_frozen_model()

    def on_validation_start(self) -> None:
        self.place_frozen_model()

    def on_test_start(self) -> None:
        self.place_frozen_model()

    def on_predict_start(self) -> None:
        self.place_frozen_model()

    def train(self, mode: bool = True) -> DASModule:
        super().train(mode)
        if not self.iit:
            # IntervenableModel.train() reaches the frozen model; keep it in eval (no dropout).
            self.model.eval()
        return self

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> torch.Tensor:
        """Intervened prediction logits on a pair batch, ``(batch, classes)``."""
        base = model_inputs(batch, "base", self.is_language_model_task)
        source = model_inputs(batch, "source", self.is_language_model_task)
        locations = unit_locations(batch, self.position)
        _, outputs = self.intervenable(base, [source], unit_locations=locations, **self.call_options)
        return prediction_logits(outputs)

    def answer_forward(self, batch: Batch) -> AnswerForward:
        """The intervened forward on ``batch`` as a function of the base's appended answer
        (:func:`~das_train.training.sequence_scoring.answer_forward`)."""
        locations = unit_locations(batch, prompt_position(self.position, batch))
        return answer_forward(self.intervenable, batch, locations, bool(self.call_options))

    def predictions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(predicted, target, loss)`` of a batch: the intervened next-token (or class) argmax
        against the counterfactual label; in sequence mode the best candidate's index against
        the counterfactual answer's."""
        if is_sequence_batch(batch):
            return sequence_predictions(self.answer_forward(batch), batch)
        logits, labels = self(batch), batch[COUNTERFACTUAL_LABEL]  # (batch, classes), (batch,)
        return logits.argmax(-1), labels, counterfactual_loss(logits, labels)

    # -- steps ------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        labels = batch[COUNTERFACTUAL_LABEL]  # (batch,)
        if is_sequence_batch(batch):
            loss = sequence_loss(self.answer_forward(batch), batch)
        else:
            loss = counterfactual_loss(self(batch), labels)
        size = int(labels.shape[0])
        penalty = total_boundary_penalty(self.intervenable)
        if penalty is not None:
            self.log("train/boundary", penalty.detach(), on_step=True, on_epoch=False, batch_size=size)
            if self.hparams.boundary_penalty:
                loss = loss + self.hparams.boundary_penalty * penalty
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        self._step_loss = loss.detach()
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's step, then the check that the loss and the weights are still finite
        (:mod:`das_train.training.finite`), before any callback can checkpoint them."""
        super().optimizer_step(*args, **kwargs)
        # Lightning counts this step in global_step only once the hook returns.
        check_finite(self.trainer.global_step + 1, {0: self._step_loss},
                     {0: self.intervenable.get_trainable_parameters()})

    def _evaluate(self, batch: Batch, metric: InterchangeInterventionAccuracy, pairs: PairCount,
                  stage: str) -> None:
        predicted, labels, loss = self.predictions(batch)  # (batch,), (batch,), ()
        size = int(labels.shape[0])
        metric.update(predicted, labels)
        pairs.update(labels)
        # Logging the metric objects lets Lightning compute them once per epoch from the summed
        # counts of every rank, then reset them.
        self.log(f"{stage}/iia", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=size)
        self.log(f"{stage}/pairs", pairs, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=size)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_iia, self.val_pairs, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_iia, self.test_pairs, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Intervention parameters, plus the model's when IIT enabled its gradients. Buffers
        # (the boundless temperature) are never handed to the optimizer.
        params = self.intervenable.get_trainable_parameters()
        if not params:
            raise ValueError("nothing to train: the intervention has no parameters and iit is off")
        return torch.optim.Adam(params, lr=self.hparams.lr)

    # -- outside a Trainer ------------------------------------------------------------------------
    @torch.no_grad()
    def iia(self, batches: Iterable[Batch]) -> float:
        """IIA over ``batches`` (e.g. a DataLoader) without a Trainer.

        Batches go to the model's input device. After a fit on a GPU that is where the frozen
        model still is, while Lightning's teardown has brought the intervention back to the CPU;
        the hook core carries the units between the two.
        """
        # Restore each module's own mode afterwards, as Lightning's loops do: a blanket
        # train() would switch on dropout in an IIT model its owner had put in eval mode.
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        device = input_device(self.model)
        metric = InterchangeInterventionAccuracy().to(device)
        try:
            for batch in batches:
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
                predicted, labels, _ = self.predictions(batch)
                metric.update(predicted, labels)
        finally:
            for module, mode in modes:
                module.training = mode
        return float(metric.compute())


__all__ = ["DASModule", "model_inputs", "prediction_logits", "prediction_only_options", "unit_locations"]
