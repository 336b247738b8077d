"""Small built-in models with architecture tables of their own: an MLP and a GRU classifier.

They exist for the causal-abstraction tasks that need no language model (the hierarchical
equality task, recurrent toy tasks) and to show that the hook core is not transformer-bound.
The GRU calls one cell module per time step, so its sites are indexed by time (unit ``t``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass
class MLPConfig:
    """A feed-forward classifier: ``n_layer`` hidden layers of width ``h_dim``."""

    h_dim: int = 32
    """Width of every hidden layer."""
    n_layer: int = 2
    """Number of hidden layers (the sites ``block_input``/``block_output`` index these)."""
    num_classes: int = 2
    """Number of output classes."""
    input_dim: int | None = None
    """Width of the input; ``None`` means ``h_dim``."""
    activation_function: str = "relu"
    """One of relu, gelu, tanh, sigmoid."""
    pdrop: float = 0.0
    """Dropout after each hidden layer."""
    include_bias: bool = True
    """Whether the linear layers have biases."""
    model_type: str = "das_mlp"

    def __post_init__(self) -> None:
        if self.input_dim is None:
            self.input_dim = self.h_dim
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(
                f"activation_function={self.activation_function!r}; allowed: {sorted(_ACTIVATIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


class MLPBlock(nn.Module):
    """Linear, activation, dropout: one hidden layer, hooked as a whole."""

    def __init__(self, in_dim: int, out_dim: int, config: MLPConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=config.include_bias)
        self.act = _ACTIVATIONS[config.activation_function]()
        self.dropout = nn.Dropout(config.pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.linear(x)))


class MLPClassifier(nn.Module):
    """``inputs_embeds`` (batch, ..., input_dim) -> logits (batch, ..., num_classes)."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        dims = [config.input_dim] + [config.h_dim] * config.n_layer
        self.layers = nn.ModuleList(
            MLPBlock(dims[i], dims[i + 1], config) for i in range(config.n_layer)
        )
        self.head = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)

    def forward(
        self, inputs_embeds: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden)
        logits = self.head(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


@dataclass
class GRUConfig:
    """A GRU classifier over a sequence of vectors (or token ids with ``vocab_size``)."""

    h_dim: int = 32
    """Hidden width; also the input width unless ``input_dim`` is set."""
    n_layer: int = 1
    """Stacked GRU layers; each is one cell module called once per time step."""
    num_classes: int = 2
    """Number of output classes, read from the last time step."""
    input_dim: int | None = None
    """Width of each input vector; ``None`` means ``h_dim``."""
    vocab_size: int | None = None
    """When set, ``input_ids`` are embedded to ``input_dim``."""
    model_type: str = "das_gru"

    def __post_init__(self) -> None:
        if self.input_dim is None:
            self.input_dim = self.h_dim

    def to_dict(self) -> dict:
        return asdict(self)


class GRUCellBlock(nn.Module):
    """One recurrent step ``(x_t, h_prev) -> h_t``; the module a time-step hook sits on."""

    def __init__(self, in_dim: int, h_dim: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(in_dim, h_dim)

    def forward(self, x_t: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        return self.cell(x_t, h_prev)


class GRUClassifier(nn.Module):
    """Unrolls the cells step by step so hooks see every time step separately."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.input_dim) if config.vocab_size else None
        dims = [config.input_dim] + [config.h_dim] * config.n_layer
        self.cells = nn.ModuleList(GRUCellBlock(dims[i], config.h_dim) for i in range(config.n_layer))
        self.head = nn.Linear(config.h_dim, config.num_classes)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        if inputs_embeds is None:
            if input_ids is None or self.embed is None:
                raise ValueError("GRUClassifier needs inputs_embeds, or input_ids with vocab_size set")
            inputs_embeds = self.embed(input_ids)
        sequence = inputs_embeds  # (batch, time, input_dim)
        batch, steps = sequence.shape[:2]
        for cell in self.cells:
            h = sequence.new_zeros(batch, self.config.h_dim)
            outputs = []
            for t in range(steps):
                h = cell(sequence[:, t], h)  # (batch, h_dim)
                outputs.append(h)
            sequence = torch.stack(outputs, dim=1)  # (batch, time, h_dim)
        logits = self.head(sequence[:, -1])
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=(sequence,))


def create_mlp_classifier(config: MLPConfig | None = None, seed: int | None = None):
    """Builds an MLP classifier; returns ``(config, None, model)`` as the seeds' helpers do."""
    config = config or MLPConfig()
    if seed is not None:
        torch.manual_seed(seed)
    return config, None, MLPClassifier(config)


def create_gru_classifier(config: GRUConfig | None = None, seed: int | None = None):
    """Builds a GRU classifier; returns ``(config, None, model)`` as the seeds' helpers do."""
    config = config or GRUConfig()
    if seed is not None:
        torch.manual_seed(seed)
    return config, None, GRUClassifier(config)
