"""Small built-in models with architecture tables of their own: pyvene's MLP classifier and
pyvene's GRU (bare, classifier, language model), with pyvene's fields and module names.

They exist for the causal-abstraction tasks that need no language model (the hierarchical
equality task, recurrent toy tasks) and to show that the hook core is not transformer-bound.
The GRU calls one cell module per time step, so its sites are indexed by time (unit ``t``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput


@dataclass
class MLPConfig:
    """A feed-forward classifier with pyvene's fields and defaults (``pyvene.models.mlp``), so a
    pyvene script's ``MLPConfig(...)`` builds the same network and its weights load as they are.
    """

    include_emb: bool = False
    """Embed ``input_ids`` with token (``wte``) and position (``wpe``) embeddings."""
    vocab_size: int | None = None
    """Rows of ``wte``; with ``include_emb`` it defaults to pyvene's 50257. Without, it stays
    ``None``: the model takes no token ids (pyvene keeps 50257 there, which would make input
    checks expect ids)."""
    max_position_embeddings: int | None = None
    """Rows of ``wpe``; with ``include_emb`` it defaults to pyvene's 512, else ``None``."""
    n_layer: int = 2
    """Number of hidden layers (the sites ``block_input``/``block_output`` index these)."""
    h_dim: int = 512
    """Width of every hidden layer."""
    num_classes: int = 2
    """Number of output classes."""
    activation_function: str = "gelu"
    """A name in transformers' ``ACT2FN`` (relu, gelu, tanh, sigmoid, silu, ...)."""
    pdrop: float = 0.3
    """Dropout on the input and after each hidden layer (training mode only)."""
    problem_type: str | None = None
    """Loss when ``labels`` are given: single_label_classification (cross-entropy),
    multi_label_classification (BCE with logits), regression (MSE), or ``None``: chosen per call
    as pyvene does (regression for one class, cross-entropy for integer labels, BCE otherwise,
    e.g. for the one-hot float labels of pyvene's DAS tutorial)."""
    include_bias: bool = True
    """Whether the linear layers have biases."""
    squeeze_output: bool = True
    """Squeeze dim 1 of the logits: inputs ``(batch, 1, dim)`` give ``(batch, num_classes)``."""
    input_dim: int | None = None
    """Width of the input; ``None`` means ``h_dim`` (pyvene has no such field: its first layer
    always reads ``h_dim`` features)."""
    model_type: str = "das_mlp"

    def __post_init__(self) -> None:
        from transformers.activations import ACT2FN

        if self.input_dim is None:
            self.input_dim = self.h_dim
        if self.include_emb:
            self.vocab_size = 50_257 if self.vocab_size is None else self.vocab_size
            if self.max_position_embeddings is None:
                self.max_position_embeddings = 512
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function={self.activation_function!r}; allowed: {sorted(ACT2FN)}"
            )
        if self.problem_type is not None and self.problem_type not in _LOSSES:
            raise ValueError(f"problem_type={self.problem_type!r}; allowed: {sorted(_LOSSES)}")

    def to_dict(self) -> dict:
        return asdict(self)


_LOSSES = {
    "single_label_classification": lambda logits, labels: nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)),
    "multi_label_classification": nn.functional.binary_cross_entropy_with_logits,
    "regression": lambda logits, labels: nn.functional.mse_loss(logits.squeeze(), labels.squeeze()),
}


class MLPBlock(nn.Module):
    """``ff1``, activation (``act``, the ``mlp_activation`` site), dropout: one hidden layer."""

    def __init__(self, in_dim: int, out_dim: int, config: MLPConfig) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.ff1 = nn.Linear(in_dim, out_dim, bias=config.include_bias)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.ff1(x)))


class MLPModel(nn.Module):
    """The hidden layers ``h[i]`` (pyvene's ``MLPModel``)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.input_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.input_dim)
        self.dropout = nn.Dropout(config.pdrop)
        dims = [config.input_dim] + [config.h_dim] * config.n_layer
        self.h = nn.ModuleList(MLPBlock(dims[i], dims[i + 1], config) for i in range(config.n_layer))

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None,
                output_hidden_states: bool | None = None) -> list[torch.Tensor]:
        """The last hidden state, preceded by every layer's input when
        ``output_hidden_states``: ``[input, h0, ..., last]``."""
        if inputs_embeds is None:
            if input_ids is None or not self.config.include_emb:
                raise ValueError("the MLP needs inputs_embeds, or input_ids with include_emb=True")
            inputs_embeds = self.wte(input_ids)
        hidden = inputs_embeds
        if position_ids is not None:
            hidden = hidden + self.wpe(position_ids)
        states = [self.dropout(hidden)]
        for block in self.h:
            states.append(block(states[-1]))
        return states if output_hidden_states else states[-1:]


class MLPClassifier(nn.Module):
    """pyvene's ``MLPForClassification``: ``mlp`` (an :class:`MLPModel`) then ``score``.

    ``inputs_embeds`` (batch, ..., input_dim) -> logits (batch, ..., num_classes), dim 1
    squeezed when ``config.squeeze_output``. Module names and parameter names are pyvene's.
    """

    base_model_prefix = "mlp"

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)

    @property
    def base_model(self) -> MLPModel:
        return self.mlp

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None,
                labels: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> SequenceClassifierOutput | tuple:
        """``return_dict=False`` gives pyvene's tuple ``([loss,] logits[, hidden_states])``;
        the default output also indexes that way (``out[0]`` is the logits without labels)."""
        hidden = self.mlp(input_ids, position_ids, inputs_embeds, output_hidden_states)
        logits = self.score(hidden[-1])
        if self.config.squeeze_output:
            logits = logits.squeeze(1)
        loss = None if labels is None else _loss(self.config.problem_type, self.config.num_classes, logits, labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None)
        return output.to_tuple() if return_dict is False else output


def _loss(problem_type: str | None, n_classes: int, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The configured loss, or with ``problem_type=None`` the one pyvene picks per call:
    regression for one class, cross-entropy for integer labels, BCE with logits otherwise."""
    if problem_type is None:
        if n_classes == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    return _LOSSES[problem_type](logits, labels)


def create_mlp_classifier(config: MLPConfig | None = None, tokenizer_name: str | None = None,
                          cache_dir: str | None = None, *, seed: int | None = None):
    """Builds an MLP classifier; returns ``(config, tokenizer, model)`` as pyvene's helper does.

    The tokenizer is loaded only when ``tokenizer_name`` is given (else ``None``).
    """
    config = config or MLPConfig()
    if seed is not None:
        torch.manual_seed(seed)
    return config, _tokenizer(tokenizer_name, cache_dir), MLPClassifier(config)


def _tokenizer(tokenizer_name: str | None, cache_dir: str | None):
    if tokenizer_name is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_name, cache_dir=cache_dir)




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
        if self.problem_type is not None and self.problem_type not in _LOSSES:
            raise ValueError(f"problem_type={self.problem_type!r}; allowed: {sorted(_LOSSES)} or None")

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
            self.wte = nn.Embedding(config.vocab_size, config.input_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.input_dim)
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
        if inputs_embeds is None:
            if input_ids is None or not self.config.include_emb:
                raise ValueError("the GRU needs inputs_embeds, or input_ids with include_emb=True")
            inputs_embeds = self.wte(input_ids)
        if position_ids is not None:
            if not self.config.include_emb:
                raise ValueError("position_ids need include_emb=True (the wpe embedding)")
            inputs_embeds = inputs_embeds + self.wpe(position_ids)
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


class GRUClassifier(nn.Module):
    """pyvene's ``GRUForClassification``: ``gru`` (a :class:`GRUModel`) then ``score`` (no
    bias), read at each example's last step (the last 1 of ``attention_mask`` when given)."""

    base_model_prefix = "gru"

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.gru = GRUModel(config)
        self.score = nn.Linear(config.h_dim, config.n_labels, bias=False)

    @property
    def base_model(self) -> GRUModel:
        return self.gru

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
        loss = None if labels is None else _loss(self.config.problem_type, self.config.n_labels, logits, labels)
        return _head_output(loss, logits, out, return_dict)


class GRULMHeadModel(nn.Module):
    """pyvene's ``GRULMHeadModel``: ``gru`` then ``lm_head`` (no bias, not tied to ``wte``)
    at every step; with ``labels``, the next-token cross-entropy."""

    base_model_prefix = "gru"

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.gru = GRUModel(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)

    @property
    def base_model(self) -> GRUModel:
        return self.gru

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
    return config, _tokenizer(tokenizer_name, cache_dir), model_class(config)


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
