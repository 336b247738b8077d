"""The frozen model of a run: a Hub checkpoint, a local ``save_pretrained`` folder, or a small
model trained on the task here.

Every job (the DAS sweep, causal tracing, steering) starts from :func:`build_model`, so a
Hub model that cannot be reached fails the same way everywhere, naming the recipes that run
offline, and a folder is read from disk without a single network call.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from das_train.core.checkpoint_folders import (
    checkpoint_folder_problems,
    checkpoint_identity,
    folder_path,
    looks_local,
)
from das_train.core.loaders import HubUnavailableError, hub_unreachable_reason
from das_train.core.sites import missing_table_message, table_for
from das_train.data.pair_contract import CounterfactualTask
from das_train.data.tiny_lm import train_tiny_lm
from das_train.tasks.hierarchical_equality import ExperimentSize, train_model
from das_train.training.schema import ConfigError

log = logging.getLogger("das_train")

OFFLINE_RECIPES = ("gender_tiny", "pairs_file", "hierarchical_equality", "iit_hierarchical_equality",
                   "causal_tracing", "steering_tiny")


def load_hub_model(cfg: DictConfig):
    """(model, tokenizer) of ``cfg.model.name`` at ``cfg.model.revision``, in eval mode and on
    :func:`frozen_model_device`; an unreachable Hub is a :class:`HubUnavailableError`. A name
    that looks like a path is a local folder (:func:`load_folder_model`)."""
    if looks_local(cfg.model.name):
        return load_folder_model(cfg)
    dtype = getattr(torch, cfg.model.dtype)
    offline_hint = (f"Recipes that work offline: {', '.join(OFFLINE_RECIPES)}; or add model=tiny to "
                    "train a small model on this task.")
    reason = hub_unreachable_reason(cfg.model.name, cfg.model.revision)
    if reason is not None:
        raise HubUnavailableError(f"recipe {cfg.recipe!r} needs {cfg.model.name!r}: {reason}. {offline_hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model.name, revision=cfg.model.revision)
        model = AutoModelForCausalLM.from_pretrained(cfg.model.name, revision=cfg.model.revision, dtype=dtype,
                                                     device_map=cfg.model.device_map)
    except OSError as err:
        raise HubUnavailableError(
            f"recipe {cfg.recipe!r} needs {cfg.model.name!r} from the Hugging Face Hub, which cannot be "
            f"reached or is not cached ({type(err).__name__}: {err}). {offline_hint}"
        ) from err
    return _placed(cfg, model), tokenizer


def load_folder_model(cfg: DictConfig):
    """(model, tokenizer) from the ``save_pretrained`` folder ``cfg.model.name``, read with
    ``local_files_only`` so nothing goes to the network; a folder that is missing, or lacks its
    config, weights or tokenizer, is a :class:`ConfigError` naming what is missing.
    ``model.revision`` does not apply to a folder and is ignored (logged)."""
    problems = checkpoint_folder_problems(cfg.model.name)
    if problems:
        raise ConfigError([f"'model.name' = {cfg.model.name!r}: {problem}" for problem in problems])
    folder = folder_path(cfg.model.name)
    identity = checkpoint_identity(cfg.model.name)
    log.info("model.kind=hub from the local folder %s (fingerprint %s); model.revision=%r is ignored "
             "for a folder", folder, identity["fingerprint"], cfg.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=getattr(torch, cfg.model.dtype),
                                                 device_map=cfg.model.device_map)
    return _placed(cfg, model), tokenizer


def _placed(cfg: DictConfig, model):
    model.eval()
    device = frozen_model_device(cfg)
    if device is not None:
        model.to(device)
    return model


def model_identity(cfg: DictConfig) -> dict:
    """What the results were computed with, for ``run_info.json``: the Hub id and revision, or
    a folder's path and fingerprint (:func:`~das_train.core.checkpoint_folders.checkpoint_identity`)
    with the revision marked as ignored, or the kind of model trained on the spot."""
    if cfg.model.kind != "hub":
        return {"kind": cfg.model.kind}
    if looks_local(cfg.model.name):
        return {"kind": "hub", **checkpoint_identity(cfg.model.name), "revision_ignored": cfg.model.revision}
    return {"kind": "hub", "name": cfg.model.name, "revision": cfg.model.revision}


def frozen_model_device(cfg: DictConfig) -> torch.device | None:
    """Where a Hub model goes right after loading: the GPU this process will train on.

    Loading leaves it on the CPU. Moved here, before the pair filter runs its forwards, it is
    placed once for the whole run, and every site's fit finds it in place
    (:meth:`DASModule.place_frozen_model`). ``None`` when accelerate places it
    (``model.device_map``), when training runs on the CPU, or when there is no GPU. Under DDP
    each process takes the GPU of its local rank, as Lightning will.
    """
    if cfg.model.device_map is not None or cfg.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def build_model(cfg: DictConfig, task: CounterfactualTask | None):
    """(model, tokenizer) for the configured model kind; tokenizer is None for vector tasks."""
    if cfg.model.kind == "hub":
        return load_hub_model(cfg)
    if cfg.model.kind == "tiny" and hasattr(task, "build_tokenizer"):
        tokenizer = task.build_tokenizer()
        model = train_tiny_lm(task, tokenizer, n_layer=cfg.model.n_layer, hidden=cfg.model.hidden,
                              heads=cfg.model.heads, max_steps=cfg.model.max_steps, seed=cfg.seed,
                              cache_dir=str(Path(cfg.cache_dir) / "models"))
        return model.eval(), tokenizer
    # kind=mlp, or kind=tiny on a vector task: the task's own small model is the MLP.
    equality = getattr(task, "equality", None)
    if equality is None:
        raise ConfigError([f"model.kind=mlp needs a vector task such as hierarchical_equality, not {task.name}"])
    model, accuracy = train_model(equality, ExperimentSize(hidden=cfg.model.hidden), seed=cfg.seed)
    log.info("trained the %d-layer MLP: held-out accuracy %.3f", model.config.n_layer, accuracy)
    return model, None


def number_of_layers(model: torch.nn.Module) -> int:
    """The layers a sweep or a trace runs over, from the model's architecture table; a model
    with none is refused before any forward, saying which tables exist."""
    table = table_for(model)
    if table is None:
        raise ConfigError([missing_table_message(model)])
    return table.num_layers(model.config)


__all__ = ["OFFLINE_RECIPES", "build_model", "frozen_model_device", "load_folder_model", "load_hub_model",
           "model_identity", "number_of_layers"]
