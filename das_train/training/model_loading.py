"""The frozen model of a run: a Hub checkpoint, or a small model trained on the task here.

Every job (the DAS sweep, causal tracing, steering) starts from :func:`build_model`, so a
Hub model that cannot be reached fails the same way everywhere, naming the recipes that run
offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from das_train.core.loaders import HubUnavailableError, hub_unreachable_reason
from das_train.core.sites import table_for
from das_train.data.pair_contract import CounterfactualTask
from das_train.data.tiny_lm import train_tiny_lm
from das_train.tasks.hierarchical_equality import ExperimentSize, train_model
from das_train.training.schema import ConfigError

log = logging.getLogger("das_train")

OFFLINE_RECIPES = ("gender_tiny", "hierarchical_equality", "causal_tracing", "steering_tiny")


def load_hub_model(cfg: DictConfig):
    """(model, tokenizer) of ``cfg.model.name`` at ``cfg.model.revision``, in eval mode and on
    :func:`frozen_model_device`; an unreachable Hub is a :class:`HubUnavailableError`."""
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
    model.eval()
    device = frozen_model_device(cfg)
    if device is not None:
        model.to(device)
    return model, tokenizer


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
    """The layers a sweep or a trace runs over, from the model's architecture table."""
    table = table_for(model)
    if table is None:
        raise ConfigError([f"{type(model).__name__} has no architecture table; sweeps need one"])
    return table.num_layers(model.config)


__all__ = ["OFFLINE_RECIPES", "build_model", "frozen_model_device", "load_hub_model", "number_of_layers"]
