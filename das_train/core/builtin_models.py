"""Small built-in models with architecture tables of their own: pyvene's MLP classifier, with
pyvene's fields and module names (pyvene's GRU is in :mod:`das_train.core.builtin_gru`).

They exist for the causal-abstraction tasks that need no language model (the hierarchical
equality task) and to show that the hook core is not transformer-bound. The losses and the
tokenizer helper here serve both built-in families.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


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
        if self.problem_type is not None and self.problem_type not in LOSSES:
            raise ValueError(f"problem_type={self.problem_type!r}; allowed: {sorted(LOSSES)}")

    def to_dict(self) -> dict:
        return asdict(self)


LOSSES = {
    "single_label_classification": lambda logits, labels: nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)),
    "multi_label_classification": nn.functional.binary_cross_entropy_with_logits,
    "regression": lambda logits, labels: nn.functional.mse_loss(logits.squeeze(), labels.squeeze()),
}


def input_embeddings(config: MLPConfig | Any) -> tuple[nn.Embedding, nn.Embedding]:
    """``(wte, wpe)``: pyvene's token and position embeddings of the MLP and the GRU, built in
    that order (so a seed gives pyvene's weights) and ``input_dim`` wide."""
    return (nn.Embedding(config.vocab_size, config.input_dim),
            nn.Embedding(config.max_position_embeddings, config.input_dim))


def embed_inputs(model: nn.Module, input_ids, position_ids, inputs_embeds) -> torch.Tensor:
    """``inputs_embeds`` (or ``wte(input_ids)``) plus ``wpe(position_ids)`` when given; the
    one way pyvene's MLP and GRU read their input, with an error naming what is missing."""
    name = type(model).__name__
    if inputs_embeds is None:
        if input_ids is None or not model.config.include_emb:
            raise ValueError(f"{name} needs inputs_embeds, or input_ids with include_emb=True")
        inputs_embeds = model.wte(input_ids)
    if position_ids is not None:
        if not model.config.include_emb:
            raise ValueError(f"{name}: position_ids need include_emb=True (the wpe embedding)")
        inputs_embeds = inputs_embeds + model.wpe(position_ids)
    return inputs_embeds


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
            self.wte, self.wpe = input_embeddings(config)
        self.dropout = nn.Dropout(config.pdrop)
        dims = [config.input_dim] + [config.h_dim] * config.n_layer
        self.h = nn.ModuleList(MLPBlock(dims[i], dims[i + 1], config) for i in range(config.n_layer))

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None,
                output_hidden_states: bool | None = None) -> list[torch.Tensor]:
        """The last hidden state, preceded by every layer's input when
        ``output_hidden_states``: ``[input, h0, ..., last]``."""
        hidden = embed_inputs(self, input_ids, position_ids, inputs_embeds)
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
        loss = None if labels is None else classification_loss(self.config.problem_type, self.config.num_classes, logits, labels)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=tuple(hidden) if output_hidden_states else None)
        return output.to_tuple() if return_dict is False else output


def classification_loss(problem_type: str | None, n_classes: int, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The configured loss, or with ``problem_type=None`` the one pyvene picks per call:
    regression for one class, cross-entropy for integer labels, BCE with logits otherwise."""
    if problem_type is None:
        if n_classes == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    return LOSSES[problem_type](logits, labels)


def create_mlp_classifier(config: MLPConfig | None = None, tokenizer_name: str | None = None,
                          cache_dir: str | None = None, *, seed: int | None = None):
    """Builds an MLP classifier; returns ``(config, tokenizer, model)`` as pyvene's helper does.

    The tokenizer is loaded only when ``tokenizer_name`` is given (else ``None``).
    """
    config = config or MLPConfig()
    if seed is not None:
        torch.manual_seed(seed)
    return config, optional_tokenizer(tokenizer_name, cache_dir), MLPClassifier(config)


def optional_tokenizer(tokenizer_name: str | None, cache_dir: str | None):
    """The named tokenizer, or ``None`` without a name (pyvene's helpers always load one)."""
    if tokenizer_name is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_name, cache_dir=cache_dir)
