"""The small helpers pyvene 0.1.8 exports at top level (``pv.set_seed``, ``pv.top_vals``, ...).

Tutorials import them by name from ``pyvene``; they are kept here with pyvene's signatures
and results so those notebooks run after ``import das_train as pv``. Two differences, both
fixes: ``top_vals`` checks its input is one distribution (pyvene prints garbage for a batch),
and ``GET_LOC`` builds the nested lists for every unit we accept, not only ``"h.pos"``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from das_train.core.model import IntervenableModel


def build_intervenable_model(config: Any, model: nn.Module) -> IntervenableModel:
    """pyvene's factory: an :class:`IntervenableModel` for ``model``. An nnsight model (pyvene's
    remote backend) is refused: we have no nnsight backend."""
    if type(model).__module__.split(".")[0] == "nnsight":
        raise TypeError("nnsight models are not supported; wrap the underlying torch model instead")
    return IntervenableModel(config, model)


def set_seed(seed: int) -> None:
    """Seeds Python's ``random``, numpy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` that require gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_directory(path: str) -> None:
    """Creates ``path`` (and its parents) unless it exists; prints which, as pyvene does."""
    existed = os.path.exists(path)
    os.makedirs(path, exist_ok=True)
    print(f"Directory '{path}' {'already exists' if existed else 'created successfully'}.")


def format_token(tokenizer: Any, tok: int) -> str:
    """A token's text with spaces shown as ``_`` and newlines as ``\\n``, for printed tables."""
    return tokenizer.decode(tok).replace(" ", "_").replace("\n", "\\n")


def top_vals(tokenizer: Any, res: torch.Tensor, n: int = 10, return_results: bool = False):
    """The ``n`` most likely tokens of one distribution ``res`` (vocab,): printed, or returned
    as ``[(token text, value), ...]`` with ``return_results``."""
    if res.dim() != 1:
        raise ValueError(f"top_vals takes one distribution (vocab,), got shape {tuple(res.shape)}")
    values, indices = torch.topk(res, n)
    results = [(format_token(tokenizer, i.item()), v.item()) for v, i in zip(values, indices)]
    if return_results:
        return results
    for token, value in results:
        print(f"{token:<20} {value}")
    return None


def get_list_depth(lst: Any) -> int:
    """Nesting depth of a list (0 for a non-list)."""
    if isinstance(lst, list):
        return 1 + max((get_list_depth(item) for item in lst), default=0)
    return 0


def get_batch_size(model_input: Any) -> int:
    """Batch size of a tensor or of the first tensor in an input dict."""
    if isinstance(model_input, torch.Tensor):
        return model_input.shape[0]
    return next(iter(model_input.values())).shape[0]


def GET_LOC(LOC: tuple, unit: str = "h.pos", batch_size: int = 1) -> list:  # noqa: N802
    """pyvene's location builder: one (head, position) pair -> ``unit_locations`` for unit
    ``"h.pos"``, the same pair for every example: ``[[[[head]] * batch, [[pos]] * batch]]``.
    For a one-level unit (``"pos"``, ``"h"``, ``"t"``) ``LOC`` is one index:
    ``[[[LOC]] * batch]``."""
    if unit == "h.pos":
        return [[[[LOC[0]]] * batch_size, [[LOC[1]]] * batch_size]]
    if unit in ("pos", "h", "t"):
        return [[[LOC]] * batch_size]
    raise ValueError(f"GET_LOC: unit {unit!r} is not one of 'h.pos', 'pos', 'h', 't'")


def sigmoid_boundary(_input: torch.Tensor, boundary_x, boundary_y, temperature) -> torch.Tensor:
    """A soft box mask: ~1 between ``boundary_x`` and ``boundary_y``, sharper as the
    temperature falls."""
    return torch.sigmoid((_input - boundary_x) / temperature) * torch.sigmoid(
        (boundary_y - _input) / temperature)


def harmonic_sigmoid_boundary(_input: torch.Tensor, boundary_x, boundary_y, temperature) -> torch.Tensor:
    """pyvene's box mask whose inside uses the harmonic mean of the distances to both edges."""
    below, above = _input <= boundary_x, _input >= boundary_y
    inside = ~below & ~above
    harmonic = 1.0 / (0.5 * (1.0 / torch.abs(_input - boundary_x) + 1.0 / torch.abs(_input - boundary_y)))
    return (below * torch.sigmoid((_input - boundary_x) / temperature)
            + above * torch.sigmoid((boundary_y - _input) / temperature)
            + inside * torch.sigmoid(harmonic / temperature))


def random_permutation_matrix(n: int) -> torch.Tensor:
    """An ``(n, n)`` permutation matrix (rows of the identity in random order)."""
    return torch.eye(n)[torch.randperm(n)]


def closeness_to_permutation_loss(rotation: torch.Tensor) -> torch.Tensor:
    """How far ``rotation`` is from a permutation: row and column sums off 1, entries off 0/1."""
    row = torch.abs(rotation.sum(dim=1) - 1.0).mean()
    col = torch.abs(rotation.sum(dim=0) - 1.0).mean()
    return 0.5 * (row + col) + (rotation * (1 - rotation)).mean()
