"""``job: iit``: interchange intervention training of a model chosen by the task.

The model, the hierarchical equality MLP (``task=hierarchical_equality``,
:mod:`das_train.training.iit_mlp`) or a tiny language model on a text task (``model.kind=tiny``,
:mod:`das_train.training.iit_lm`), is trained from scratch twice, with the same seed, data and
steps: once with task loss + IIT loss (:class:`~das_train.training.iit_module.IITModule`), the
variables placed in the configured blocks of units at the site (``iit.layer``, and
``iit.position`` for a language model), and once with the task loss alone. Each is then
evaluated on held-out data: task accuracy, neuron-aligned IIA per variable (the fixed
interchange of the variable's block) and DAS IIA per variable at the site and, when set, at a
reference site (:mod:`das_train.training.iit_das`).

Outputs (rank 0): ``iit.csv`` / ``iit.md`` (the table, also printed), ``iit_curve.png`` /
``iit_curve.csv`` (neuron-aligned IIA over training steps), ``models/{iit,no_iit}/`` (weights,
config and curve), ``rows/{iit,no_iit}.json`` and ``interventions/das-{iit,no_iit}-<variable>[-reference]/``
(the DAS rotations). A re-run of the same run directory redoes nothing finished
(:mod:`das_train.training.iit_stages`) and resumes a cut-off fit from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning
import torch

from das_train.training.checkpoints import fit_resuming
from das_train.training.iit_checks import IIT_TASK
from das_train.training.iit_das import das_iia
from das_train.training.iit_data import IITData, loader, variable_rows
from das_train.training.iit_lm import TinyLM
from das_train.training.iit_mlp import EqualityMLP
from das_train.training.iit_module import IIACurve, IITModule
from das_train.training.iit_outputs import (
    REFERENCE,
    TRAININGS,
    site_label,
    write_curve,
    write_table,
)
from das_train.training.iit_stages import (
    load_row,
    load_trained,
    model_folder,
    save_row,
    save_trained,
)
from das_train.training.ranks import is_global_zero
from das_train.training.samplers import distributed_train_loader
from das_train.training.schema import RunConfig
from das_train.training.steering import torch_threads
from das_train.training.trainers import make_trainer

log = logging.getLogger("das_train")
ONE_THREAD = 1
"""torch's intra-op threads while the models and the DAS rotations train: a model 64 wide gains
nothing from more, and on a busy machine spinning threads made a 200-step fit 14x slower."""

Subject = EqualityMLP | TinyLM
"""The model an IIT job trains, with its data and its files."""


def iit_subject(config: RunConfig) -> Subject:
    return EqualityMLP.from_config(config) if config.task.name == IIT_TASK else TinyLM.from_config(config)


def iit_module(config: RunConfig, subject: Subject, model: torch.nn.Module, training: str) -> IITModule:
    """The module that trains ``model`` (``training``: ``iit``, or ``no_iit`` with IIT weight 0)
    and measures its neuron-aligned IIA."""
    iit = config.iit
    return IITModule(model, {v: iit.blocks[v] for v in iit.variables}, layer=iit.layer, task_weight=iit.task_weight,
                     iit_weight=iit.iit_weight if training == "iit" else 0.0, lr=iit.lr,
                     position=subject.position(iit.position), is_language_model_task=subject.is_language_model_task)


def train_model(config: RunConfig, run_dir: Path, subject: Subject, data: IITData,
                training: str) -> tuple[IITModule, list]:
    """The model trained from scratch, resuming from ``checkpoints/<training>`` when a fit was
    cut off there; returns the module and its curve of neuron-aligned IIA."""
    iit = config.iit
    lightning.seed_everything(config.seed, verbose=False)
    model = subject.fresh_model(config)
    model.train()
    module = iit_module(config, subject, model, training)
    fit_config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, max_steps=iit.steps))
    ckpt_dir = run_dir / "checkpoints" / training
    trainer = make_trainer(fit_config, run_dir, training, ckpt_dir)
    curve = IIACurve(data.test, iit.eval_every)
    # First, so a step's point is recorded before the checkpoint of that step saves the curve.
    trainer.callbacks.insert(0, curve)
    rows = loader(variable_rows(data.train), iit.batch_size, shuffle_seed=config.seed)
    with torch_threads(ONE_THREAD):
        fit_resuming(trainer, module, distributed_train_loader(fit_config.trainer, rows), ckpt_dir, training,
                     [training])
    module.model.eval()
    return module, curve.points


def evaluate(config: RunConfig, run_dir: Path, subject: Subject, data: IITData, training: str,
             module: IITModule) -> dict:
    """The table's row of one trained model."""
    iit = config.iit
    row = {"training": training, "task_accuracy": module.task_accuracy(data.factual)}
    row |= {f"neuron_iia_{v}": iia for v, iia in module.neuron_iia(data.test).items()}
    sites = {"": (iit.layer, subject.position(iit.position))}
    if iit.reference_layer is not None:
        sites[f"_{REFERENCE}"] = (iit.reference_layer, subject.position(iit.reference_position))
    with torch_threads(ONE_THREAD):
        for suffix, site in sites.items():
            for v in iit.variables:
                rank = iit.das_rank or len(module.units[v])
                row[f"das_iia_{v}{suffix}"] = das_iia(config, run_dir, module.model, (data.train[v], data.test[v]),
                                                      site, rank, subject.is_language_model_task,
                                                      f"das-{training}-{v}{suffix.replace('_', '-')}")
    log.info("%s: %s", TRAININGS[training], row)
    return row


def trained_and_evaluated(config: RunConfig, run_dir: Path, subject: Subject, data: IITData,
                          training: str) -> tuple[dict, list]:
    """``training``'s row and curve: read back when a run finished them, else trained (or the
    saved model read back) and evaluated, each stage saved as it finishes."""
    row, trained = load_row(run_dir, training), load_trained(subject, model_folder(run_dir, training))
    if row is not None and trained is not None:
        log.info("%s: finished by an earlier run, read from %s", TRAININGS[training], run_dir)
        return row, trained[1]
    if trained is None:
        module, curve = train_model(config, run_dir, subject, data, training)
        if is_global_zero():
            save_trained(subject, module.model, curve, model_folder(run_dir, training))
    else:
        log.info("%s: the model trained by an earlier run, read from %s", TRAININGS[training], run_dir)
        model, curve = trained
        module = iit_module(config, subject, model.eval(), training)
    row = evaluate(config, run_dir, subject, data, training, module)
    if is_global_zero():
        save_row(run_dir, training, row)
    return row, curve


def run_iit(config: RunConfig, run_dir: Path) -> Path:
    """Trains with and without IIT, evaluates both, writes the outputs; returns ``run_dir``."""
    subject = iit_subject(config)
    data = subject.data(config)
    rows, curves = [], {}
    for training in TRAININGS:
        row, curves[training] = trained_and_evaluated(config, run_dir, subject, data, training)
        rows.append(row)
    if is_global_zero():
        iit = config.iit
        site = site_label(iit.layer, iit.position)
        labels = [] if iit.position is None and iit.reference_layer is None else [site]
        if iit.reference_layer is not None:
            labels.append(site_label(iit.reference_layer, iit.reference_position))
        table = write_table(run_dir, rows, iit.variables, labels)
        image = write_curve(run_dir, curves, f"{config.recipe}: neuron-aligned IIA, {site}")
        print("\n" + table, flush=True)
        print(f"wrote {run_dir / 'iit.csv'}, {run_dir / 'iit.md'}, {image} and {run_dir / 'models'}", flush=True)
    return run_dir


__all__ = ["evaluate", "iit_module", "iit_subject", "run_iit", "train_model", "trained_and_evaluated"]
