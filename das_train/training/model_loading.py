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
from das_train.training.schema import ConfigError, ModelConfig, RunConfig

log = logging.getLogger("das_train")

OFFLINE_RECIPES = ("gender_tiny", "pairs_file", "hierarchical_equality", "iit_hierarchical_equality",
                   "iit_gender_tiny", "causal_tracing", "steering_tiny")


def load_hub_model(config: RunConfig):
    """(model, tokenizer) of ``config.model.name`` at ``config.model.revision``, in eval mode and on
    :func:`frozen_model_device`; an unreachable Hub is a :class:`HubUnavailableError`. A name
    that looks like a path is a local folder (:func:`load_folder_model`)."""
    if looks_local(config.model.name):
        return load_folder_model(config)
    dtype = getattr(torch, config.model.dtype)
    offline_hint = (f"Recipes that work offline: {', '.join(OFFLINE_RECIPES)}; or add model=tiny to "
                    "train a small model on this task.")
    reason = hub_unreachable_reason(config.model.name, config.model.revision)
    if reason is not None:
        raise HubUnavailableError(f"recipe {config.recipe!r} needs {config.model.name!r}: {reason}. {offline_hint}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(config.model.name, revision=config.model.revision)
        model = AutoModelForCausalLM.from_pretrained(config.model.name, revision=config.model.revision, dtype=dtype,
                                                     device_map=config.model.device_map)
    except OSError as err:
        raise HubUnavailableError(
            f"recipe {config.recipe!r} needs {config.model.name!r} from the Hugging Face Hub, which cannot be "
            f"reached or is not cached ({type(err).__name__}: {err}). {offline_hint}"
        ) from err
    return _placed(config, model), tokenizer


def load_folder_model(config: RunConfig):
    """(model, tokenizer) from the ``save_pretrained`` folder ``config.model.name``, read with
    ``local_files_only`` so nothing goes to the network; a folder that is missing, or lacks its
    config, weights or tokenizer, is a :class:`ConfigError` naming what is missing.
    ``model.revision`` does not apply to a folder and is ignored (logged)."""
    problems = checkpoint_folder_problems(config.model.name)
    if problems:
        raise ConfigError([f"'model.name' = {config.model.name!r}: {problem}" for problem in problems])
    folder = folder_path(config.model.name)
    identity = checkpoint_identity(config.model.name)
    log.info("model.kind=hub from the local folder %s (fingerprint %s); model.revision=%r is ignored "
             "for a folder", folder, identity["fingerprint"], config.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                 dtype=getattr(torch, config.model.dtype),
                                                 device_map=config.model.device_map)
    return _placed(config, model), tokenizer


def _placed(config: RunConfig, model):
    model.eval()
    device = frozen_model_device(config)
    if device is not None:
        model.to(device)
    return model


def model_identity(model: ModelConfig) -> dict:
    """What the results were computed with, for ``run_info.json``: the Hub id and revision, or
    a folder's path and fingerprint (:func:`~das_train.core.checkpoint_folders.checkpoint_identity`)
    with the revision marked as ignored, or the kind of model trained on the spot."""
    if model.kind != "hub":
        return {"kind": model.kind}
    if looks_local(model.name):
        return {"kind": "hub", **checkpoint_identity(model.name), "revision_ignored": model.revision}
    return {"kind": "hub", "name": model.name, "revision": model.revision}


def frozen_model_device(config: RunConfig) -> torch.device | None:
    """Where a Hub model goes right after loading: the GPU this process will train on.

    Loading leaves it on the CPU. Moved here, before the pair filter runs its forwards, it is
    placed once for the whole run, and every site's fit finds it in place
    (:meth:`DASModule.place_frozen_model`). ``None`` when accelerate places it
    (``model.device_map``), when training runs on the CPU, or when there is no GPU. Under DDP
    each process takes the GPU of its local rank, as Lightning will.
    """
    if config.model.device_map is not None or config.trainer.accelerator == "cpu" or not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def build_model(config: RunConfig, task: CounterfactualTask | None):
    """(model, tokenizer) for the configured model kind; tokenizer is None for vector tasks."""
    if config.model.kind == "hub":
        return load_hub_model(config)
    if config.model.kind == "tiny" and hasattr(task, "build_tokenizer"):
        tokenizer = task.build_tokenizer()
        model = train_tiny_lm(task, tokenizer, n_layer=config.model.n_layer, hidden=config.model.hidden,
                              heads=config.model.heads, max_steps=config.model.max_steps, seed=config.seed,
                              cache_dir=str(Path(config.cache_dir) / "models"))
        return model.eval(), tokenizer
    # kind=mlp, or kind=tiny on a vector task: the task's own small model is the MLP.
    equality = getattr(task, "equality", None)
    if equality is None:
        raise ConfigError([f"model.kind=mlp needs a vector task such as hierarchical_equality, not {task.name}"])
    model, accuracy = train_model(equality, ExperimentSize(hidden=config.model.hidden), seed=config.seed)
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
