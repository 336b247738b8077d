"""The settings of the jobs beside the DAS sweep (causal tracing, steering, publishing, the MIB
export), and :func:`option`, the field helper every part of the run config uses.

Part of the run config's one home (:mod:`das_train.training.schema` composes these into
``RunConfig`` and re-exports them); kept apart so each file stays one screenful of settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def option(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
           allowed: tuple[Any, ...] | None = None, positive: bool = False, non_negative: bool = False) -> Any:
    """A config field whose constraints live beside its default, where a reader of the field
    sees them: ``allowed`` values, ``positive`` (> 0) or ``non_negative`` (>= 0). Every float
    is also checked to be finite (a nan reaches training and turns every weight into nan)."""
    metadata = {"allowed": allowed, "positive": positive, "non_negative": non_negative}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TracingConfig:
    components: list[str] = field(default_factory=lambda: ["block_output", "mlp_activation", "attention_output"])
    """Components restored one (layer, position) at a time (Meng et al.'s three streams)."""
    window: int = option(10, positive=True)
    """Layers restored together around each layer for every component but block_output."""
    noise_scale: float = option(3.0, positive=True)
    """Noise on the subject's embeddings, in multiples of the embeddings' standard deviation."""
    samples: int = option(10, positive=True)
    """Noise samples per fact; the restored probability is their mean."""
    facts: int = option(20, positive=True)
    """How many facts are traced (the heatmaps average them)."""


@dataclass
class SteeringConfig:
    word: str = "happy"
    """The word whose input embedding is added (for a BPE, the first token of " word")."""
    coefficient: float | list[float] = 0.3
    """Scale of the embedding; a list gives one steered column per coefficient."""
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time there was a"])
    """Prompts to continue, each once plainly and once per coefficient."""
    max_new_tokens: int = option(32, positive=True)
    """Tokens generated per continuation."""
    do_sample: bool = False
    """Sample (seeded by ``seed`` and the prompt's index) instead of greedy decoding."""
    temperature: float = option(1.0, positive=True)
    """Sampling temperature (do_sample only)."""
    top_k: int = option(0, non_negative=True)
    """Sample from the k likeliest tokens only; 0 means from all (do_sample only)."""
    samples: int = option(1, positive=True)
    """Continuations per prompt (do_sample only): more give a steadier measured fraction."""
    intervene_on_prompt: bool = False
    """Also add the embedding at every prompt position; false steers the decoding steps only,
    as in the paper's Figure 1 and pyvene's default."""


@dataclass
class PublishConfig:
    repo_id: str | None = None
    """Hub repo to publish the finished sweep to (the token comes from HF_TOKEN, never the
    config, which is uploaded with the run)."""
    private: bool = False
    """Create the repo private."""


@dataclass
class MibConfig:
    out: str | None = None
    """The submission folder ``job=export_mib`` writes; null means ``<run_dir>/mib_export``."""
    overwrite: bool = False
    """Replace ``out`` when it exists (it is refused otherwise)."""
    task: str | None = None
    """MIB task name, the first part of the ``{TASK}_{MODEL}_{VARIABLE}`` folder (e.g.
    ``4_answer_MCQA``); null means the run's ``task.name``."""
    model: str | None = None
    """MIB model name: the model's class (e.g. ``GPT2LMHeadModel``); null means the class
    recorded with the trained interventions."""
    variable: str | None = None
    """The causal variable (e.g. ``answer_pointer``); null means the run's ``task.name``."""
    sites: list[str] | None = None
    """Sites to export, named as the run's ``interventions/`` folders without the seed
    (``block_output-L1-name``); null means every trained site."""
    seed: int | None = None
    """Which seed's intervention each site exports; null means the seed of highest IIA."""
    positions: list[str] = field(default_factory=list)
    """``name:id`` pairs renaming a das_train position to the id of the MIB task's token
    position (e.g. ``[last:last_token]``); a position not listed keeps its name."""


@dataclass
class IITConfig:
    variables: list[str] = field(default_factory=lambda: ["WX", "YZ"])
    """Causal variables the model is trained to hold, from the task's causal model (hierarchical
    equality: ``WX``, ``YZ``; a text task: its one variable, e.g. ``gender``); each step
    interchanges every one of them, with a source of its own."""
    blocks: dict[str, list[int]] = field(default_factory=dict)
    """Each variable's neurons at the site, ``[start, stop)`` among the layer's units, e.g.
    ``{WX: [0, 16], YZ: [16, 32]}`` (the recipe's); the blocks must be disjoint. Given on the
    command line the map replaces the recipe's whole: ``iit.blocks={WX:[0,8],YZ:[8,16]}``."""
    layer: int = option(0, non_negative=True)
    """Layer whose output (``block_output``) holds the variables: a hidden layer of the MLP, or a
    block of the tiny language model (its residual stream after that block)."""
    position: str | None = None
    """Named token position of the site on a text task (one of the task's positions, e.g.
    ``last``); required there, and left unset for the MLP, whose layers have no positions."""
    reference_layer: int | None = None
    """A second site where DAS is also fitted on both models (with ``reference_position`` on a
    text task), e.g. where ordinary training puts the variable; unset: none."""
    reference_position: str | None = None
    """Named token position of the reference site (text tasks)."""
    das_rank: int | None = option(None, positive=True)
    """Rotated coordinates the DAS fits interchange (the rank of a low-rank rotation); unset: as
    many as the variable's block has units."""
    steps: int = option(1000, positive=True)
    """Optimizer steps that train the model from scratch (the same for the run without IIT)."""
    batch_size: int = option(256, positive=True)
    """Pairs per variable per step and per device; the task loss reads their bases."""
    train_pairs: int = option(50_000, positive=True)
    """Training pairs generated per variable (cycled over the steps)."""
    lr: float = option(0.002, positive=True)
    """Adam's learning rate for the model's weights."""
    task_weight: float = option(1.0, non_negative=True)
    """Weight of the task loss (cross-entropy of the model's own output against the label)."""
    iit_weight: float = option(1.0, non_negative=True)
    """Weight of the interchange loss (mean over variables of the cross-entropy of the
    intervened output against the causal model's counterfactual label)."""
    eval_every: int = option(100, positive=True)
    """Steps between two points of the neuron-aligned IIA curve (``iit_curve.png``)."""
    eval_pairs: int = option(2000, positive=True)
    """Held-out pairs per variable for IIA, and held-out inputs for task accuracy."""
