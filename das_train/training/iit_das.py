"""DAS IIA on a model trained by the IIT job: does a learned rotation find each variable where
IIT put it, and where ordinary training left it?

A full rotation at the IIT site interchanges as many rotated coordinates as the variable's
block has neurons, trained by :class:`~das_train.training.das_module.DASModule` with the run's
``intervention`` and ``trainer`` settings, on the variable's training pairs; its IIA is measured
on the held-out pairs. Neuron-aligned IIA asks whether the variable sits in the block's
neurons; DAS IIA asks whether it sits in any subspace of that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from das_train.training.das_module import DASModule
from das_train.training.iit_data import Pairs, contract_rows, loader
from das_train.training.ranks import is_global_zero
from das_train.training.samplers import distributed_train_loader
from das_train.training.schema import RunConfig
from das_train.training.trainers import make_trainer

EVAL_BATCH = 1024


def das_iia(config: RunConfig, run_dir: Path, model: nn.Module, train: Pairs, test: Pairs,
            units: Sequence[int], version: str) -> float:
    """IIA of a DAS rotation trained on ``train`` at the IIT site of ``model``, swapping
    ``len(units)`` rotated coordinates; the trained intervention is saved in
    ``run_dir/interventions/<version>``."""
    module = DASModule(model, layer=config.iit.layer, component="block_output", position=None,
                       intervention=config.intervention.type, low_rank_dimension=len(units),
                       lr=config.intervention.lr, boundary_penalty=config.intervention.boundary_penalty,
                       is_language_model_task=False)
    trainer = make_trainer(config, run_dir, version, run_dir / "checkpoints" / version)
    rows = loader(contract_rows(train), config.trainer.batch_size, shuffle_seed=config.seed)
    trainer.fit(module, distributed_train_loader(config.trainer, rows))
    iia = module.iia(loader(contract_rows(test), EVAL_BATCH, shuffle_seed=None))
    if is_global_zero():
        module.intervenable.save(str(run_dir / "interventions" / version))
    return iia


__all__ = ["das_iia"]
