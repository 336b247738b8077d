"""DAS IIA on a model trained by the IIT job: does a learned rotation find each variable where
IIT put it, and where ordinary training left it?

A rotation at a site (the IIT site, or the reference site) interchanges ``iit.das_rank``
rotated coordinates (by default as many as the variable's block has units), trained by
:class:`~das_train.training.das_module.DASModule` with the run's ``intervention`` and
``trainer`` settings, on the variable's training pairs; its IIA is measured on the held-out
pairs. Neuron-aligned IIA asks whether the variable sits in the block's units; DAS IIA asks
whether it sits in any subspace of that size. A fit cut off part way resumes from its
checkpoint, and a finished one restores its last checkpoint instead of training again.
"""

from __future__ import annotations

from pathlib import Path

import lightning
from torch import nn

from das_train.data.pair_inputs import Position
from das_train.training.checkpoints import fit_resuming
from das_train.training.das_module import DASModule
from das_train.training.iit_data import Pairs, contract_rows, loader
from das_train.training.ranks import is_global_zero
from das_train.training.samplers import distributed_train_loader
from das_train.training.schema import RunConfig
from das_train.training.trainers import make_trainer

EVAL_BATCH = 1024


def das_iia(config: RunConfig, run_dir: Path, model: nn.Module, pairs: tuple[Pairs, Pairs],
            site: tuple[int, Position], rank: int, is_language_model_task: bool, version: str) -> float:
    """IIA on the held-out pairs of a DAS rotation trained on the training pairs (``pairs``:
    train, test) at ``site`` (layer, position) of ``model``, interchanging ``rank`` rotated
    coordinates; the trained intervention is saved in ``run_dir/interventions/<version>``."""
    (train, test), (layer, position) = pairs, site
    # Seeded here, so a fit's rotation starts the same whether or not the model was just trained.
    lightning.seed_everything(config.seed, verbose=False)
    module = DASModule(model, layer=layer, component="block_output", position=position,
                       intervention=config.intervention.type, low_rank_dimension=rank,
                       lr=config.intervention.lr, boundary_penalty=config.intervention.boundary_penalty,
                       is_language_model_task=is_language_model_task)
    ckpt_dir = run_dir / "checkpoints" / version
    trainer = make_trainer(config, run_dir, version, ckpt_dir)
    rows = loader(contract_rows(train), config.trainer.batch_size, shuffle_seed=config.seed)
    fit_resuming(trainer, module, distributed_train_loader(config.trainer, rows), ckpt_dir, version, [version])
    iia = module.iia(loader(contract_rows(test), EVAL_BATCH, shuffle_seed=None))
    if is_global_zero():
        module.intervenable.save(str(run_dir / "interventions" / version))
    return iia


__all__ = ["das_iia"]
