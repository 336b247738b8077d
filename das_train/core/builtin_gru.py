"""pyvene's GRU (bare, classifier, language model) with pyvene's fields and module names.

It exists for recurrent toy tasks and to show that the hook core is not transformer-bound: the
GRU calls one cell module per time step, so its sites are indexed by time (unit ``t``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput

from das_train.core.builtin_models import (
    LOSSES,
    classification_loss,
    embed_inputs,
    input_embeddings,
    optional_tokenizer,
)


@dataclass
class GRUConfig:
    """A GRU with pyvene's fields and defaults (``pyvene.models.gru``), so a pyvene script's
    ``GRUConfig(...)`` builds the same network and a pyvene GRU's ``state_dict`` loads as it is.

    Our earlier field ``num_classes`` is accepted as another name for ``n_labels`` (giving both
    with different values is an error); ``input_dim`` is ours alone.
    """

    include_emb: bool = False
    """Embed ``input_ids`` with token (``wte``) and position (``wpe``) embeddings; without it
    the model takes ``inputs_embeds`` only."""
    vocab_size: int = 50_257
    """Rows of ``wte`` and outputs of the language model's ``lm_head``."""
    max_position_embeddings: int = 512
    """Rows of ``wpe`` (used when ``position_ids`` are given)."""
    n_layer: int = 2
    """Stacked GRU cells; each is one module called once per time step."""
    h_dim: int = 512
    """Hidden width; also the input width unless ``input_dim`` is set."""
    n_labels: int | None = None
    """Number of classes of the classifier (2 when neither this nor ``num_classes`` is given)."""
    include_bias: bool = True
    """Whether the cells' ``x2h``/``h2h`` projections have biases."""
    pdrop: float = 0.3
    """Kept for pyvene's scripts; pyvene's GRU applies no dropout, and neither does ours."""
    problem_type: str | None = None
    """Classifier loss when ``labels`` are given: single_label_classification,
    multi_label_classification, regression, or ``None`` (chosen per call, as for the MLP).
    pyvene's signature says single_label_classification, but its ``PretrainedConfig`` base
    resets the field to ``None``, so ``None`` is what a pyvene config holds (its classifier then
    fails on any labels, reading a ``num_labels`` it never sets; ours computes the loss)."""
    initializer_range: float = 0.02
    """Standard deviation of the embeddings' normal initialisation."""
    num_classes: int | None = None
    """Our earlier name of ``n_labels``; after construction both hold the same value."""
    input_dim: int | None = None
    """Width of the first cell's input; ``None`` means ``h_dim`` (pyvene has no such field: its
    first cell always reads ``h_dim`` features)."""
    model_type: str = "das_gru"

    def __post_init__(self) -> None:
        if self.n_labels is not None and self.num_classes is not None and self.n_labels != self.num_classes:
            raise ValueError(
                f"n_labels={self.n_labels} and num_classes={self.num_classes} name the same field; "
                "give one of them (or equal values)")
        self.n_labels = self.num_classes = self.n_labels or self.num_classes or 2
        if self.input_dim is None:
            self.input_dim = self.h_dim
        if self.problem_type is not None and self.problem_type not in LOSSES:
            raise ValueError(f"problem_type={self.problem_type!r}; allowed: {sorted(LOSSES)} or None")

    def to_dict(self) -> dict:
        return asdict(self)


class GRUCell(nn.Module):
    """One recurrent step ``(x_t, h_prev) -> h_t`` with pyvene's module names, so its gates are
    hookable sites: ``x2h``/``h2h`` give the (reset, update, new) pre-activations side by side,
    and ``reset_act``/``update_act``/``new_act`` are the gate nonlinearities. The update rule is
    ``torch.nn.GRUCell``'s."""

    def __init__(self, in_dim: int, config: GRUConfig) -> None:
        super().__init__()
        self.h_dim = config.h_dim
        self.x2h = nn.Linear(in_dim, 3 * config.h_dim, bias=config.include_bias)
        self.h2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.reset_act = nn.Sigmoid()
        self.update_act = nn.Sigmoid()
        self.new_act = nn.Tanh()
        # pyvene's initialisation (uniform in +-1/sqrt(h_dim)), drawn in the same order, so the
        # same seed gives the same weights in both libraries.
        bound = config.h_dim ** -0.5
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor | None = None) -> torch.Tensor:
        if h_prev is None:
            h_prev = x_t.new_zeros(x_t.shape[0], self.h_dim)
        x_reset, x_update, x_new = self.x2h(x_t).chunk(3, dim=-1)
        h_reset, h_update, h_new = self.h2h(h_prev).chunk(3, dim=-1)
        reset = self.reset_act(x_reset + h_reset)
        update = self.update_act(x_update + h_update)
        new = self.new_act(x_new + reset * h_new)
        return update * h_prev + (1 - update) * new


@dataclass
class GRUModelOutput(ModelOutput):
    """``hidden_states``: the last cell's state at every step (batch, time, h_dim);
    ``last_hidden_state``: its state after the last step (batch, h_dim). The field order is
    that of pyvene's default tuple, so ``out[0]``/``out[1]`` index as there."""

    hidden_states: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@dataclass
class GRUHeadOutput(ModelOutput):
    """A classifier's or language model's output: indexing (``out[0]`` the logits without
    labels, then the last state) follows pyvene's tuple; ``hidden_states`` is every step's."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


class GRUModel(nn.Module):
    """pyvene's ``GRUModel``: optional embeddings ``wte``/``wpe`` and the cells ``cells[i]``,
    unrolled step by step so a hook on a cell (or on a part of it) sees each time step."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        if config.include_emb:
            self.wte, self.wpe = input_embeddings(config)
        dims = [config.input_dim] + [config.h_dim] * (config.n_layer - 1)
        self.cells = nn.ModuleList(GRUCell(dim, config) for dim in dims)
        if config.include_emb:
            for embedding in (self.wte, self.wpe):
                nn.init.normal_(embedding.weight, mean=0.0, std=config.initializer_range)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None,
                hidden_states: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> GRUModelOutput | tuple:
        """``hidden_states``: optional initial states (n_layer, batch, h_dim), zeros otherwise.
        ``output_hidden_states`` changes nothing (every step's state is always returned)."""
        inputs_embeds = embed_inputs(self, input_ids, position_ids, inputs_embeds)
        batch, steps = inputs_embeds.shape[:2]
        if hidden_states is None:
            hidden_states = inputs_embeds.new_zeros(self.config.n_layer, batch, self.config.h_dim)
        states = list(hidden_states.unbind(0))
        top = []
        for t in range(steps):
            x = inputs_embeds[:, t]
            for layer, cell in enumerate(self.cells):
                x = states[layer] = cell(x, states[layer])
            top.append(x)
        output = GRUModelOutput(hidden_states=torch.stack(top, dim=1), last_hidden_state=top[-1])
        return output.to_tuple() if return_dict is False else output


def _head_output(loss, logits, gru_output: GRUModelOutput, return_dict: bool | None):
    """pyvene's tuple ``([loss,] logits, last_state)`` with ``return_dict=False``, else ours."""
    if return_dict is False:
        return tuple(v for v in (loss, logits, gru_output.last_hidden_state) if v is not None)
    return GRUHeadOutput(loss=loss, logits=logits, last_hidden_state=gru_output.last_hidden_state,
                         hidden_states=gru_output.hidden_states)


class _GRUWithHead(nn.Module):
    """What both GRU heads stand on: the config and the ``gru`` body, which is the
    ``base_model`` (Hugging Face's name for it, found through ``base_model_prefix``)."""

    base_model_prefix = "gru"

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.gru = GRUModel(config)

    @property
    def base_model(self) -> GRUModel:
        return self.gru


class GRUClassifier(_GRUWithHead):
    """pyvene's ``GRUForClassification``: ``gru`` (a :class:`GRUModel`) then ``score`` (no
    bias), read at each example's last step (the last 1 of ``attention_mask`` when given)."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__(config)
        self.score = nn.Linear(config.h_dim, config.n_labels, bias=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None, attention_mask=None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> GRUHeadOutput | tuple:
        out = self.gru(input_ids, position_ids, inputs_embeds)
        states = out.hidden_states  # (batch, time, h_dim)
        if attention_mask is None:
            last = torch.full((states.shape[0],), states.shape[1] - 1, device=states.device)
        else:
            last = attention_mask.sum(dim=-1).long() - 1
        logits = self.score(states[torch.arange(states.shape[0], device=states.device), last])
        loss = None if labels is None else classification_loss(self.config.problem_type, self.config.n_labels, logits, labels)
        return _head_output(loss, logits, out, return_dict)


class GRULMHeadModel(_GRUWithHead):
    """pyvene's ``GRULMHeadModel``: ``gru`` then ``lm_head`` (no bias, not tied to ``wte``)
    at every step; with ``labels``, the next-token cross-entropy."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> GRUHeadOutput | tuple:
        out = self.gru(input_ids, position_ids, inputs_embeds)
        logits = self.lm_head(out.hidden_states)  # (batch, time, vocab)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
            loss = nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device))
        return _head_output(loss, logits, out, return_dict)


def _create(model_class: type[nn.Module], config: GRUConfig | None, tokenizer_name: str | None,
            cache_dir: str | None, seed: int | None):
    config = config or GRUConfig()
    if seed is not None:
        torch.manual_seed(seed)
    return config, optional_tokenizer(tokenizer_name, cache_dir), model_class(config)


def create_gru(config: GRUConfig | None = None, tokenizer_name: str | None = None,
               cache_dir: str | None = None, *, seed: int | None = None):
    """pyvene's helper: ``(config, tokenizer, GRUModel)``, the tokenizer only when
    ``tokenizer_name`` is given. ``seed`` (ours) seeds torch first."""
    return _create(GRUModel, config, tokenizer_name, cache_dir, seed)


def create_gru_lm(config: GRUConfig | None = None, tokenizer_name: str | None = None,
                  cache_dir: str | None = None, *, seed: int | None = None):
    """pyvene's helper: ``(config, tokenizer, GRULMHeadModel)``; see :func:`create_gru`."""
    return _create(GRULMHeadModel, config, tokenizer_name, cache_dir, seed)


def create_gru_classifier(config: GRUConfig | None = None, tokenizer_name: str | None = None,
                          cache_dir: str | None = None, *, seed: int | None = None):
    """pyvene's helper: ``(config, tokenizer, GRUClassifier)``; see :func:`create_gru`."""
    return _create(GRUClassifier, config, tokenizer_name, cache_dir, seed)
