"""Base classes every intervention derives from, and the registry save/load finds them in.

An intervention is a plain ``nn.Module`` that knows nothing of models or hooks: the hook core
gathers the selected units of an activation into a tensor whose last dimension is the site's
width and whose leading dimensions are ``(batch, units, ...)``, calls
``forward(base, source=None, subspaces=None)``, and scatters the result back. So every
intervention can also be called on tensors directly, and it acts on each unit alike (a rotation
is shared by all positions of a site; positions are never flattened into one long vector).

``source_kind`` tells the hook core where the second argument comes from:

- ``"interchange"``: the same site in a source run, or a constant ``source_representation``;
- ``"optional"``: as ``"interchange"`` when the call gives a source or a constant, otherwise
  ``None`` (a plain function, which pyvene applies whether or not a source is given);
- ``"constant"``: only a constant (from the config or the call), otherwise ``None``;
- ``"none"``: nothing (zero, noise, collect);
- ``"module_input"``: the hooked module's own input, so its output can be skipped.

Subclasses register themselves by class name when they are defined; loading a saved
intervention looks its type up here and never unpickles or imports anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

INTERVENTION_REGISTRY: dict[str, type[Intervention]] = {}

Subspaces = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | int | None


class Intervention(nn.Module):
    """An operation on the gathered units of one site.

    Args:
        embed_dim: width of one unit (the model's hidden size, or a head's size for head
            components). The hook core fills it in from the site when left ``None``.
        subspace_partition: ``[[start, end), ...]`` ranges of the last dimension; when given,
            ``subspaces`` name partitions by index instead of single dimensions.
        source_representation: a constant source used in place of a source run.
        **pyvene_keywords: accepted and ignored. pyvene builds every intervention with the whole
            representation config as keywords (``input_dim``, ``interchange_dim``,
            ``low_rank_dimension``, ``use_fast``, ``layer``, ...), and subclasses written for it
            forward them with ``super().__init__(**kwargs)``; pyvene's base classes ignore the
            ones they do not use, and so does this one. This is the one documented exception
            to typed constructors (DESIGN.md section 5), kept for compatibility.
    """

    source_kind: ClassVar[str] = "interchange"
    trainable: ClassVar[bool] = False
    # Whether f(b, b) = b (up to rounding) for every parameter value: the intervention swaps
    # (part of) the source into the base, so where a pair's source equals its base it returns
    # the base and the counterfactual loss cannot depend on its parameters
    # (das_train.training.sweep.shared_prefix).
    keeps_base_for_equal_source: ClassVar[bool] = False
    # Constructor arguments written to the saved config and given back on load.
    config_fields: ClassVar[tuple[str, ...]] = ("embed_dim", "subspace_partition")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INTERVENTION_REGISTRY[cls.__name__] = cls

    def __init__(
        self,
        embed_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        super().__init__()
        self.embed_dim = None if embed_dim is None else int(embed_dim)
        self.subspace_partition = (
            None if subspace_partition is None else [list(map(int, p)) for p in subspace_partition]
        )
        self.source_representation = None
        if source_representation is not None:
            self.set_source_representation(source_representation)

    def set_source_representation(self, value: torch.Tensor) -> None:
        """Stores a constant source as a buffer, so it moves and saves with the module."""
        if "source_representation" in self.__dict__:
            del self.__dict__["source_representation"]
        self.register_buffer("source_representation", torch.as_tensor(value).detach().clone())

    # -- the one signature -------------------------------------------------------------------
    def forward(
        self, base: torch.Tensor, source: torch.Tensor | None = None, subspaces: Subspaces = None
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers shared by subclasses ----------------------------------------------------------
    def init_args(self) -> dict[str, Any]:
        """The JSON-serializable constructor arguments that rebuild this intervention."""
        return {name: getattr(self, name, None) for name in self.config_fields}

    def subspace_size(self) -> int | None:
        """Size of the space ``subspaces`` index (the unit width, unless a basis is learned)."""
        return self.embed_dim

    def subspace_dims(self, subspaces: Subspaces, batch_size: int) -> list[list[int]] | None:
        """Expands ``subspaces`` to dimension indices per example (through the partition)."""
        return expand_subspaces(subspaces, batch_size, self.subspace_partition)

    def subspace_mask(
        self, subspaces: Subspaces, base: torch.Tensor
    ) -> torch.Tensor | None:
        """A boolean mask over ``base``'s last dim, broadcastable to ``base``, or ``None``.

        A mask applied with ``torch.where`` writes a fresh output without cloning ``base``, and
        handles per-example subspaces of different sizes in one kernel.
        """
        dims = self.subspace_dims(subspaces, base.shape[0])
        return dims_to_mask(dims, base)

    def __getitem__(self, index: int) -> Intervention:
        # Older pyvene releases stored (intervention, hook) pairs under
        # `intervenable.interventions[key]`, and published code indexes them with [0].
        if index == 0:
            return self
        raise IndexError("an intervention is not a sequence; index 0 returns the intervention")

    def extra_repr(self) -> str:
        parts = [f"embed_dim={self.embed_dim}"]
        if self.subspace_partition is not None:
            parts.append(f"subspace_partition={self.subspace_partition}")
        return ", ".join(parts)


class TrainableIntervention(Intervention):
    """An intervention with parameters that ``get_trainable_parameters()`` hands to an optimizer."""

    trainable: ClassVar[bool] = True


class SharedWeightsTrainableIntervention(TrainableIntervention):
    """pyvene's base class for trainable interventions meant to be shared between sites.

    Sharing here is declared in the config (``intervention_link_key``), so this class only
    marks the intent; it exists so that code subclassing it runs unchanged.
    """


class ConstantSourceIntervention(Intervention):
    """Takes its source from a constant (config or call) rather than from a source run."""

    source_kind: ClassVar[str] = "constant"


class SourcelessIntervention(Intervention):
    """Needs no source at all (zeroing, noising, collecting)."""

    source_kind: ClassVar[str] = "none"


class BasisAgnosticIntervention(Intervention):
    """Marker for interventions that do not depend on a choice of basis (addition, ...)."""


class LocalistRepresentationIntervention(Intervention):
    """Marker for interventions that act on individual neurons (dimensions)."""


class DistributedRepresentationIntervention(Intervention):
    """Marker for interventions that act in a learned, rotated basis."""


class LambdaIntervention(Intervention):
    """Wraps a plain function ``fn(base, source)`` or ``fn(base, source, subspaces)``.

    Called with the source run's units when the call gives a source (or a constant), and with
    ``source=None`` otherwise, as pyvene does: ``{"intervention": lambda b, s: b * 0.5}`` called
    without sources still halves the base. Functions cannot be saved: a config holding one
    raises on ``save``.
    """

    source_kind: ClassVar[str] = "optional"

    def __init__(self, fn, embed_dim: int | None = None) -> None:
        super().__init__(embed_dim=embed_dim)
        self.fn = fn
        self._takes_subspaces = len(inspect.signature(fn).parameters) >= 3

    def forward(self, base, source=None, subspaces=None):
        if self._takes_subspaces:
            return self.fn(base, source, subspaces)
        return self.fn(base, source)


# -- subspace arithmetic, shared with the hook core's validation ------------------------------


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, (list, tuple)) and len(value) > 0:
        depth += 1
        value = value[0]
    return depth


def expand_subspaces(
    subspaces: Subspaces,
    batch_size: int,
    partition: Sequence[Sequence[int]] | None = None,
) -> list[list[int]] | None:
    """Normalizes ``subspaces`` to a list (one per example) of dimension indices.

    Accepted: ``None`` (all dimensions), an int, a list of ints (the same for every example),
    or a list with one list of ints per example. With a ``partition``, the ints name
    partitions, each of which expands to its ``range(start, end)``.
    """
    if subspaces is None:
        return None
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if isinstance(subspaces, int):
        per_example = [[subspaces]] * batch_size
    elif _depth(subspaces) == 1:
        per_example = [list(subspaces)] * batch_size
    elif _depth(subspaces) == 2:
        if len(subspaces) != batch_size:
            raise ValueError(
                f"subspaces has {len(subspaces)} per-example lists but the batch has "
                f"{batch_size} examples; give one list per example, or one flat list for all"
            )
        per_example = [list(s) for s in subspaces]
    else:
        raise ValueError(
            "subspaces must be an int, a list of ints, or one list of ints per example; "
            f"got {subspaces!r}"
        )
    if partition is None:
        return per_example
    expanded = []
    for chosen in per_example:
        dims: list[int] = []
        for index in chosen:
            if not 0 <= index < len(partition):
                raise ValueError(
                    f"subspace {index} is not a partition of subspace_partition={partition} "
                    f"(allowed: 0..{len(partition) - 1})"
                )
            start, end = partition[index]
            dims.extend(range(start, end))
        expanded.append(dims)
    return expanded


def dims_to_mask(dims: list[list[int]] | None, base: torch.Tensor) -> torch.Tensor | None:
    """Turns per-example dimension lists into a bool mask broadcastable to ``base``."""
    if dims is None:
        return None
    width = base.shape[-1]
    first = dims[0]
    if all(d == first for d in dims):
        # (width,)
        mask = torch.zeros(width, dtype=torch.bool, device=base.device)
        mask[torch.as_tensor(first, dtype=torch.long, device=base.device)] = True
        return mask
    # (batch, 1, ..., 1, width), filled with one scatter rather than a loop over examples
    lengths = torch.tensor([len(chosen) for chosen in dims], device=base.device)
    rows = torch.repeat_interleave(torch.arange(len(dims), device=base.device), lengths)
    cols = torch.tensor([d for chosen in dims for d in chosen], dtype=torch.long, device=base.device)
    mask = torch.zeros(len(dims), width, dtype=torch.bool, device=base.device)
    mask[rows, cols] = True
    return mask.view(len(dims), *([1] * (base.dim() - 2)), width)


def build_intervention(
    cls: type[Intervention], available: dict[str, Any]
) -> Intervention:
    """Constructs ``cls`` with the entries of ``available`` its constructor accepts.

    Constructors are typed (no ``**kwargs`` bags of ours); user classes written for pyvene's
    ``**kwargs`` convention receive every non-``None`` entry.
    """
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_any:
        kwargs = {k: v for k, v in available.items() if v is not None}
    else:
        kwargs = {k: v for k, v in available.items() if k in params and v is not None}
    return cls(**kwargs)
