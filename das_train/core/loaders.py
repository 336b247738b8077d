"""Thin loaders for Hugging Face models, named as in the seeds (``pv.create_gpt2()``...).

Each returns ``(config, tokenizer, model)``. They need the Hub (or a local cache); when the
Hub cannot be reached they fail at once with a message that says so and how to work offline,
instead of hanging or printing a stack of connection errors. A name that looks like a path
(:func:`~das_train.core.checkpoint_folders.looks_local`) is a ``save_pretrained`` folder, read
from disk alone.
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

import torch

from das_train.core.checkpoint_folders import checkpoint_folder_problems, folder_path, looks_local


class HubUnavailableError(OSError):
    """A model or tokenizer could not be loaded from the Hugging Face Hub or the local cache."""


def hub_unreachable_reason(repo_id: str, revision: str | None = None, timeout: float = 3.0) -> str | None:
    """Why ``repo_id`` cannot be loaded right now, or ``None`` when it can be tried.

    A model in the local cache is always loadable. Otherwise the Hub must answer within
    ``timeout`` seconds: without this check, transformers retries a closed network for most of a
    minute before it gives up.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if isinstance(cached, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set and the model is not in the local cache"
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return None
    except OSError as err:
        return f"the Hub at {constants.ENDPOINT} cannot be reached ({err.__class__.__name__}) and the model is not cached"


def _load_folder(model_cls: Any, name: str, dtype: Any):
    """A local ``save_pretrained`` folder, read without any network call."""
    import transformers

    problems = checkpoint_folder_problems(name)
    if problems:
        raise FileNotFoundError("; ".join(problems))
    folder = folder_path(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = model_cls.from_pretrained(folder, local_files_only=True, dtype=dtype)
    model.eval()
    return model.config, tokenizer, model


def _load(model_cls_name: str, name: str, cache_dir: str | None, dtype: Any = None, **kwargs: Any):
    import transformers

    model_cls = getattr(transformers, model_cls_name)
    if looks_local(name):
        return _load_folder(model_cls, name, dtype)
    reason = hub_unreachable_reason(name)
    if reason is not None:
        raise HubUnavailableError(
            f"cannot load {name!r}: {reason}. When offline, build a model from a config instead "
            "(e.g. GPT2LMHeadModel(GPT2Config(...))) or run a recipe that trains a tiny model on "
            "the spot, such as recipe=gender_tiny."
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, cache_dir=cache_dir)
        model = model_cls.from_pretrained(name, cache_dir=cache_dir, dtype=dtype, **kwargs)
    except OSError as err:
        raise HubUnavailableError(
            f"cannot load {name!r} from the Hugging Face Hub or the local cache ({err}). "
            "When offline, build a model from a config instead (e.g. GPT2LMHeadModel(GPT2Config(...))) "
            "or run a recipe that trains a tiny model on the spot, such as recipe=gender_tiny."
        ) from err
    model.eval()
    return model.config, tokenizer, model


def _build_from_config(model_cls_name: str, name: str, config: Any, cache_dir: str | None):
    """A randomly initialised model from ``config``, as pyvene's loaders build one when given a
    config; the tokenizer comes from the local cache when it is there, else it is ``None``
    (pyvene always downloads it, which fails offline)."""
    import transformers

    model = getattr(transformers, model_cls_name)(config)
    model.eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, cache_dir=cache_dir, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return config, tokenizer, model


def _create(model_cls_name: str, name: str, config: Any, cache_dir: str | None, dtype: Any):
    if config is not None:
        return _build_from_config(model_cls_name, name, config, cache_dir)
    return _load(model_cls_name, name, cache_dir, dtype)


def create_gpt2(name: str = "gpt2", cache_dir: str | None = None, dtype: Any = None, config: Any = None):
    """GPT-2 *base* model (hidden states out), as the paper's snippets use it. With ``config``,
    a random-init ``GPT2Model(config)`` is built offline (tokenizer from the cache, or None)."""
    return _create("GPT2Model", name, config, cache_dir, dtype)


def create_gpt2_lm(name: str = "gpt2", config: Any = None, cache_dir: str | None = None, dtype: Any = None):
    """GPT-2 with its LM head; pyvene's argument order ``(name, config, cache_dir)``."""
    return _create("GPT2LMHeadModel", name, config, cache_dir, dtype)


def create_gpt_neox(name: str = "EleutherAI/pythia-70m", cache_dir: str | None = None, dtype: Any = None,
                    config: Any = None):
    return _create("GPTNeoXForCausalLM", name, config, cache_dir, dtype)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: str | None = None, dtype: Any = None,
                   config: Any = None):
    return _create("GPTNeoForCausalLM", name, config, cache_dir, dtype)


def create_llama(name: str = "sharpbai/alpaca-7b-merged", cache_dir: str | None = None,
                 dtype: Any = torch.bfloat16, config: Any = None):
    """Llama (pyvene's default checkpoint and argument order). With ``config`` the model is
    built in float32, as pyvene builds it, and ``dtype`` is not applied."""
    return _create("LlamaForCausalLM", name, config, cache_dir, dtype)


def create_olmo(name: str = "allenai/OLMo-7B-0424-hf", cache_dir: str | None = None,
                dtype: Any = torch.bfloat16, config: Any = None):
    """OLMo, as :func:`create_llama` (pyvene also takes ``revision``; we load ``main``)."""
    return _create("OlmoForCausalLM", name, config, cache_dir, dtype)


def embed_to_distrib(model, embed: torch.Tensor, log: bool = False, logits: bool = False) -> torch.Tensor:
    """Maps final hidden states (e.g. a base model's ``last_hidden_state``, already through the
    final layer norm) to next-token distributions with the model's unembedding matrix.

    ``logits=True`` returns logits; otherwise probabilities (log-probabilities with ``log``).
    """
    out_embed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out_embed is None and hasattr(model, "get_input_embeddings"):
        out_embed = model.get_input_embeddings()  # tied embeddings, as in GPT-2's base model
    if out_embed is None:
        raise ValueError(f"{type(model).__name__} has no input or output embeddings to unembed with")
    weight = out_embed.weight  # (vocab, hidden)
    vocab = torch.matmul(embed.to(weight.dtype), weight.t())  # (..., vocab)
    if logits:
        return vocab
    return torch.log_softmax(vocab, dim=-1) if log else torch.softmax(vocab, dim=-1)
