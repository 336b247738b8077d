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
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from das_train.interventions.checks import require_dim
from das_train.interventions.subspaces import Subspaces, dims_to_mask, expand_subspaces, list_depth

INTERVENTION_REGISTRY: dict[str, type[Intervention]] = {}

PYVENE_KEYWORDS: frozenset[str] = frozenset(
    {
        # The RepresentationConfig fields pyvene hands every intervention it builds.
        "layer",
        "component",
        "unit",
        "max_number_of_units",
        "low_rank_dimension",
        "intervention_type",
        "intervention",
        "subspace_partition",
        "group_key",
        "intervention_link_key",
        "moe_key",
        "source_representation",
        "hidden_source_representation",
        "latent_dim",
        # Constructor keywords of pyvene 0.1.8's (and pyreft's) intervention classes.
        "embed_dim",
        "input_dim",
        "interchange_dim",
        "use_fast",
        "keep_last_dim",
        "dtype",
        "torch_dtype",
        "add_bias",
        "act_fn",
        "dropout",
        "pca",
        "pca_mean",
        "pca_std",
        "noise_leve",
    }
)
"""Keywords pyvene programs pass to intervention constructors; accepted silently where unused."""


class Intervention(nn.Module):
    """An operation on the gathered units of one site.

    Args:
        embed_dim: width of one unit (the model's hidden size, or a head's size for head
            components). The hook core fills it in from the site when left ``None``; a class
            that sizes parameters by it sets ``needs_embed_dim`` and refuses ``None`` here.
        subspace_partition: ``[[start, end), ...]`` ranges of the last dimension; when given,
            ``subspaces`` name partitions by index instead of single dimensions.
        source_representation: a constant source used in place of a source run.
        keep_last_dim: pyvene's switch for how several selected units (positions, or heads)
            reach a distributed-representation intervention. ``True``: each unit alone, as
            ``(batch, units, width)``. ``False``: concatenated into one vector per example, as
            pyvene's default does, which needs ``embed_dim == units * width``
            (:mod:`das_train.interventions.calling`). ``None`` (ours): concatenated exactly when
            ``embed_dim == units * width`` for several units, each unit alone otherwise.
            Localist interventions (interchange of neurons, addition, zero, ...) always see each
            unit alone, as in pyvene.
        use_fast (keyword only, from ``**pyvene_keywords``): pyvene's promise that every
            example shares one subspace list; ``True`` applies only the first list given
            (:meth:`resolve_subspaces`), as pyvene does. Kept as ``self.use_fast``.
        **pyvene_keywords: pyvene builds every intervention with the whole representation config
            as keywords (``input_dim``, ``interchange_dim``, ``low_rank_dimension``,
            ``use_fast``, ``layer``, ...), and subclasses written for it forward them with
            ``super().__init__(**kwargs)``; pyvene's classes ignore the ones they do not use,
            and so does this one. A keyword outside :data:`PYVENE_KEYWORDS` (likely a typo) is
            accepted with a warning naming it, since pyvene accepts any keyword too, unless the
            class sets ``accepts_unknown_keywords = False`` (no pyvene counterpart): then it is a
            ``TypeError``. This is the one documented exception to typed constructors
            (DESIGN.md section 5), kept for compatibility.
    """

    source_kind: ClassVar[str] = "interchange"
    trainable: ClassVar[bool] = False
    # Whether f(b, b) = b (up to rounding) for every parameter value: the intervention swaps
    # (part of) the source into the base, so where a pair's source equals its base it returns
    # the base and the counterfactual loss cannot depend on its parameters
    # (das_train.training.sweep.shared_prefix).
    keeps_base_for_equal_source: ClassVar[bool] = False
    # Constructor arguments written to the saved config and given back on load; a subclass
    # lists these first and then its own: (*Intervention.config_fields, ...).
    config_fields: ClassVar[tuple[str, ...]] = ("embed_dim", "subspace_partition")
    # Whether a keyword outside PYVENE_KEYWORDS only warns (pyvene's classes take **kwargs).
    accepts_unknown_keywords: ClassVar[bool] = True
    # Whether the constructor refuses a missing or non-positive embed_dim: a class that sizes
    # parameters by it cannot wait for the hook core to fill it in.
    needs_embed_dim: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        INTERVENTION_REGISTRY[cls.__name__] = cls

    def __init__(
        self,
        embed_dim: int | None = None,
        subspace_partition: Sequence[Sequence[int]] | None = None,
        source_representation: torch.Tensor | None = None,
        keep_last_dim: bool | None = None,
        **pyvene_keywords: Any,
    ) -> None:
        if self.needs_embed_dim:
            embed_dim = require_dim(embed_dim, "embed_dim", type(self).__name__, "the width of one unit")
        super().__init__()
        self._check_keywords(pyvene_keywords)
        if keep_last_dim is not None and not isinstance(keep_last_dim, bool):
            raise ValueError(f"keep_last_dim must be True, False or None, got {keep_last_dim!r}")
        self.keep_last_dim = keep_last_dim
        self.use_fast = bool(pyvene_keywords.get("use_fast") or False)
        self.embed_dim = None if embed_dim is None else int(embed_dim)
        self.subspace_partition = (
            None if subspace_partition is None else [list(map(int, p)) for p in subspace_partition]
        )
        self.source_representation = None
        if source_representation is not None:
            self.set_source_representation(source_representation)

    def _check_keywords(self, keywords: dict[str, Any]) -> None:
        unknown = sorted(set(keywords) - PYVENE_KEYWORDS)
        if not unknown:
            return
        owner = type(self).__name__
        if not self.accepts_unknown_keywords:
            raise TypeError(
                f"{owner} got unexpected keyword argument(s) {unknown}; it takes its own "
                f"arguments and these pyvene keywords: {sorted(PYVENE_KEYWORDS)}"
            )
        warnings.warn(
            f"{owner} ignores keyword argument(s) {unknown}: not one it uses nor one pyvene passes "
            "(a typo?); accepted because pyvene's interventions accept any keyword",
            stacklevel=3,
        )

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

    def resolve_subspaces(
        self, subspaces: Subspaces, base: torch.Tensor
    ) -> tuple[list[list[int]] | None, bool]:
        """Dimension indices per row of ``subspaces``, and whether the rows are units.

        Rows are examples (the form the hook core hands over), except in pyvene's direct-call
        form: a 3-d or wider ``base`` and one list per unit (``base.shape[-2]``) where the
        batch has a different size, e.g. ``subspaces=[[1, 0], [0, 1], [1, 2]]`` on a
        ``(2, 3, 6)`` tensor acts on dimensions 1, 0 of the first position of every example.
        When there are as many examples as units, the rows are examples (pyvene's direct call
        would read them as units; its IntervenableModel hands them over per example).

        With ``use_fast=True`` (pyvene's promise that every example shares its subspaces) only
        the first row counts, for every example and unit, as in pyvene; a warning says so when
        the rows differ.
        """
        if subspaces is None:
            return None, False
        if isinstance(subspaces, torch.Tensor):
            subspaces = subspaces.tolist()
        if self.use_fast and list_depth(subspaces) == 2:
            if any(list(row) != list(subspaces[0]) for row in subspaces):
                warnings.warn(
                    f"{type(self).__name__}(use_fast=True) applies only the first of the "
                    f"subspace lists {subspaces!r} to every example and unit, as pyvene does",
                    stacklevel=3,
                )
            subspaces = list(subspaces[0])
        per_unit = (
            base.dim() >= 3
            and list_depth(subspaces) == 2
            and len(subspaces) != base.shape[0]
            and len(subspaces) == base.shape[-2]
        )
        rows = len(subspaces) if per_unit else base.shape[0]
        return expand_subspaces(subspaces, rows, self.subspace_partition), per_unit

    def subspace_mask(self, subspaces: Subspaces, base: torch.Tensor) -> torch.Tensor | None:
        """A boolean mask over ``base``'s last dim, broadcastable to ``base``, or ``None``.

        A mask applied with ``torch.where`` writes a fresh output without cloning ``base``, and
        handles per-example (or per-unit) subspaces of different sizes in one kernel.
        """
        dims, per_unit = self.resolve_subspaces(subspaces, base)
        return dims_to_mask(dims, base, per_unit)

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


def build_intervention(cls: type[Intervention], available: dict[str, Any]) -> Intervention:
    """Constructs ``cls`` with the entries of ``available`` its constructor accepts.

    A class taking ``**kwargs`` (pyvene's convention, which ours follow for the keywords in
    :data:`PYVENE_KEYWORDS`) receives every entry, ``None`` ones included, as pyvene hands a
    user class the whole representation config: ``kwargs["low_rank_dimension"]`` exists in its
    constructor even when unset. A class with only named parameters receives the non-``None``
    entries it names.
    """
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_any:
        kwargs = dict(available)
    else:
        kwargs = {k: v for k, v in available.items() if k in params and v is not None}
    return cls(**kwargs)
