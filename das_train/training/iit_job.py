"""``job: iit``: interchange intervention training of the hierarchical equality MLP.

The 3-layer MLP of :mod:`das_train.tasks.hierarchical_equality` is trained from scratch twice,
with the same seed, data and steps: once with task loss + IIT loss
(:class:`~das_train.training.iit_module.IITModule`), the variables placed in the configured
blocks of neurons of one hidden layer, and once with the task loss alone. Each is then
evaluated on held-out data: task accuracy, neuron-aligned IIA per variable (the fixed
interchange of the variable's block) and DAS IIA per variable (:mod:`das_train.training.iit_das`).

Outputs (rank 0): ``iit.csv`` / ``iit.md`` (the table, also printed), ``iit_curve.png`` /
``iit_curve.csv`` (neuron-aligned IIA over training steps), ``models/{iit,no_iit}/`` (weights
and config) and ``interventions/das-{iit,no_iit}-<variable>/`` (the DAS rotations).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning
import torch

from das_train.core.builtin_models import create_mlp_classifier
from das_train.tasks.hierarchical_equality import EqualityTask, ExperimentSize, model_config
from das_train.training.iit_das import das_iia
from das_train.training.iit_data import Pairs, loader, variable_pairs, variable_rows
from das_train.training.iit_module import IIACurve, IITModule
from das_train.training.iit_outputs import TRAININGS, save_model, write_curve, write_table
from das_train.training.ranks import is_global_zero
from das_train.training.samplers import distributed_train_loader
from das_train.training.schema import RunConfig
from das_train.training.steering import torch_threads
from das_train.training.trainers import make_trainer

log = logging.getLogger("das_train")
ONE_THREAD = 1
"""torch's intra-op threads while the MLP and the DAS rotations train: a model 64 wide gains
nothing from more, and on a busy machine spinning threads made a 200-step fit 14x slower."""


@dataclasses.dataclass(frozen=True)
class IITData:
    """Everything both trainings read: the same pairs and held-out data for each."""

    task: EqualityTask
    train: dict[str, Pairs]
    """Training pairs per variable (the bases also feed the task loss)."""
    test: dict[str, Pairs]
    """Held-out pairs per variable: neuron-aligned and DAS IIA."""
    inputs: torch.Tensor
    """(n, 4 * dim) held-out inputs for task accuracy."""
    labels: torch.Tensor


def iit_data(config: RunConfig) -> IITData:
    task = EqualityTask(seed=config.seed)
    iit = config.iit
    inputs, labels = task.factual(iit.eval_pairs, seed=config.seed + 3)
    return IITData(task, variable_pairs(task, iit.variables, iit.train_pairs, seed=config.seed + 1),
                   variable_pairs(task, iit.variables, iit.eval_pairs, seed=config.seed + 2), inputs, labels)


def train_model(config: RunConfig, run_dir: Path, data: IITData, training: str) -> tuple[IITModule, list]:
    """The MLP trained from scratch (``training``: ``iit`` or ``no_iit``, the latter with IIT
    weight 0); returns the module and its curve of neuron-aligned IIA."""
    iit = config.iit
    lightning.seed_everything(config.seed, verbose=False)
    _, _, model = create_mlp_classifier(model_config(data.task, ExperimentSize(hidden=config.model.hidden)),
                                        seed=config.seed)
    blocks = {v: iit.blocks[v] for v in iit.variables}
    module = IITModule(model, blocks, layer=iit.layer, task_weight=iit.task_weight,
                       iit_weight=iit.iit_weight if training == "iit" else 0.0, lr=iit.lr)
    fit_config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, max_steps=iit.steps))
    trainer = make_trainer(fit_config, run_dir, training, run_dir / "checkpoints" / training)
    curve = IIACurve(data.test, iit.eval_every)
    trainer.callbacks.append(curve)
    rows = loader(variable_rows(data.train), iit.batch_size, shuffle_seed=config.seed)
    with torch_threads(ONE_THREAD):
        trainer.fit(module, distributed_train_loader(fit_config.trainer, rows))
    module.model.eval()
    return module, curve.points


def evaluate(config: RunConfig, run_dir: Path, data: IITData, training: str, module: IITModule) -> dict:
    """The table's row of one trained model."""
    row = {"training": training, "task_accuracy": module.task_accuracy(data.inputs, data.labels)}
    row |= {f"neuron_iia_{v}": iia for v, iia in module.neuron_iia(data.test).items()}
    with torch_threads(ONE_THREAD):
        for v in config.iit.variables:
            row[f"das_iia_{v}"] = das_iia(config, run_dir, module.model, data.train[v], data.test[v],
                                          module.units[v], f"das-{training}-{v}")
    log.info("%s: %s", TRAININGS[training], row)
    return row


def run_iit(config: RunConfig, run_dir: Path) -> Path:
    """Trains with and without IIT, evaluates both, writes the outputs; returns ``run_dir``."""
    data = iit_data(config)
    rows, curves = [], {}
    for training in TRAININGS:
        module, curves[training] = train_model(config, run_dir, data, training)
        if is_global_zero():
            save_model(module.model, run_dir / "models" / training)
        rows.append(evaluate(config, run_dir, data, training, module))
    if is_global_zero():
        table = write_table(run_dir, rows, config.iit.variables)
        image = write_curve(run_dir, curves, f"{config.recipe}: neuron-aligned IIA, layer {config.iit.layer}")
        print("\n" + table, flush=True)
        print(f"wrote {run_dir / 'iit.csv'}, {run_dir / 'iit.md'}, {image} and {run_dir / 'models'}", flush=True)
    return run_dir


__all__ = ["IITData", "evaluate", "iit_data", "run_iit", "train_model"]
