"""The declarative, serializable description of where and how to intervene.

``RepresentationConfig`` names one site and the intervention placed there;
``IntervenableConfig`` lists them with a mode. Both accept the forms the pyvene seeds use
(a dict, a list of dicts, positional lists in pyvene's field order) and round-trip through JSON,
with intervention types written by class name and looked up in our registry on the way back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from das_train.interventions.base import INTERVENTION_REGISTRY, Intervention
from das_train.interventions.static import VanillaIntervention

MODES = ("parallel", "serial")
UNITS = ("pos", "h", "h.pos", "t")


@dataclass
class RepresentationConfig:
    """One intervention site and what happens there.

    The field order is pyvene's, so ``RepresentationConfig(*values)`` written for it works.
    """

    layer: int = 0
    """Layer index of the site (ignored for module-path components)."""
    component: str = "block_output"
    """A component name of the model's architecture table, or a module path such as
    ``"transformer.h[0].mlp.output"`` (``.output``/``.input`` pick the hook side)."""
    unit: str = "pos"
    """What locations index: ``pos`` (token positions), ``h`` (heads), ``h.pos`` (heads at
    positions) or ``t`` (recurrent time steps)."""
    max_number_of_units: int = 1
    """How many units a location usually holds; part of the key. Interventions act on each
    unit alike, so more units than this are accepted."""
    low_rank_dimension: int | None = None
    """Rank of low-rank interventions (LowRankRotatedSpace, LoRA, LoReFT)."""
    intervention_type: type[Intervention] | str | None = None
    """The intervention class (or its registered name), built with the site's width."""
    intervention: Intervention | None = None
    """An intervention already built; takes the place of ``intervention_type``."""
    subspace_partition: list[list[int]] | None = None
    """``[[start, end), ...]`` ranges; ``subspaces`` then name partitions by index."""
    group_key: int | None = None
    """Interventions with the same group key read from the same source input."""
    intervention_link_key: int | None = None
    """Interventions with the same link key share one intervention (and its weights)."""
    moe_key: int | None = None
    """Kept for pyvene compatibility; unused."""
    source_representation: torch.Tensor | None = None
    """A constant source for this intervention, used when the call gives none."""
    hidden_source_representation: Any = None
    """Kept for pyvene compatibility; unused."""
    latent_dim: int | None = None
    """Latent width of autoencoder interventions."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields. Built interventions and constants are saved separately."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("intervention", "source_representation", "hidden_source_representation"):
                continue
            if f.name == "intervention_type" and value is not None:
                value = value if isinstance(value, str) else value.__name__
            out[f.name] = value
        return out


def _coerce_representation(rep: Any) -> RepresentationConfig:
    if isinstance(rep, RepresentationConfig):
        return dataclasses.replace(rep)
    if isinstance(rep, Mapping):
        known = {f.name for f in dataclasses.fields(RepresentationConfig)}
        unknown = sorted(set(rep) - known)
        if unknown:
            raise ValueError(
                f"unknown RepresentationConfig key(s) {unknown}; allowed: {sorted(known)}"
            )
        return RepresentationConfig(**rep)
    if isinstance(rep, (list, tuple)) and not isinstance(rep, str):
        return RepresentationConfig(*rep)
    raise ValueError(
        f"a representation must be a RepresentationConfig, a dict or a list; got {type(rep).__name__}"
    )


def resolve_intervention_type(value: Any) -> type[Intervention]:
    """A class, or a class name found in the registry (never imported from a string path)."""
    if isinstance(value, type) and issubclass(value, Intervention):
        return value
    if isinstance(value, str):
        name = value.rsplit(".", 1)[-1].strip("'<> ")
        if name in INTERVENTION_REGISTRY:
            return INTERVENTION_REGISTRY[name]
        raise ValueError(
            f"unknown intervention type {value!r}; registered: {sorted(INTERVENTION_REGISTRY)}"
        )
    if callable(value):
        return value  # a plain function; wrapped by the model in a LambdaIntervention
    raise ValueError(f"intervention_type must be an Intervention class or name, got {value!r}")


@dataclass(init=False)
class IntervenableConfig:
    """The list of representations, how they combine (``mode``) and their default types."""

    representations: list[RepresentationConfig] = field(default_factory=list)
    """The sites, in order; that order is the order of ``sources`` and of location lists."""
    intervention_types: Any = None
    """One intervention class for all representations, or one per representation; a
    representation's own ``intervention_type``/``intervention`` wins."""
    mode: str = "parallel"
    """``parallel``: every source patches the base at once. ``serial``: source 0 patches
    source 1, whose result patches source 2, ..., and the last patches the base."""
    sorted_keys: list[str] | None = None
    """Keys in order, as saved; informational."""
    model_type: Any = None
    """pyvene's (deprecated) model type, a class such as ``type(gpt2)`` or its name. Kept as
    given (saved as its ``str``) so programs that pass or read it run; nothing here uses it:
    the architecture is read off the model itself."""

    def __init__(
        self,
        representations: Any = None,
        intervention_types: Any = None,
        mode: str = "parallel",
        sorted_keys: list[str] | None = None,
        model_type: Any = None,
        **legacy: Any,
    ) -> None:
        # `**legacy` only absorbs fields pyvene wrote into its saved config.json files
        # (intervention_dimensions, ...), so those files still load.
        if representations is None:
            representations = [RepresentationConfig()]
        if isinstance(representations, (Mapping, RepresentationConfig)):
            representations = [representations]
        self.representations = [_coerce_representation(r) for r in representations]
        self.intervention_types = intervention_types
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
        self.mode = mode
        self.sorted_keys = sorted_keys
        self.model_type = model_type
        self._check_types()

    def _check_types(self) -> None:
        types = self.intervention_types
        if isinstance(types, (list, tuple)) and len(types) != len(self.representations):
            raise ValueError(
                f"intervention_types has {len(types)} entries for "
                f"{len(self.representations)} representations; give one, or one per representation"
            )
        for i, rep in enumerate(self.representations):
            if rep.intervention is not None and rep.intervention_type is not None:
                raise ValueError(
                    f"representations[{i}] gives both intervention and intervention_type; give one"
                )

    def intervention_type_for(self, index: int) -> Any:
        """The type representation ``index`` is built with (its own, else the config's)."""
        rep = self.representations[index]
        if rep.intervention_type is not None:
            return resolve_intervention_type(rep.intervention_type)
        types = self.intervention_types
        if isinstance(types, (list, tuple)):
            types = types[index]
        if types is None:
            return VanillaIntervention
        return resolve_intervention_type(types)

    def add_intervention(self, representation: Any) -> IntervenableConfig:
        """Appends a representation and returns the config, as the seeds chain it."""
        rep = _coerce_representation(representation)
        if isinstance(self.intervention_types, (list, tuple)):
            self.intervention_types = list(self.intervention_types) + [
                rep.intervention_type or (type(rep.intervention) if rep.intervention else None)
            ]
        elif self.intervention_types is not None and rep.intervention_type is None and rep.intervention is None:
            rep.intervention_type = self.intervention_types
        self.representations.append(rep)
        return self

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        types = self.intervention_types
        if isinstance(types, (list, tuple)):
            types = [t if t is None or isinstance(t, str) else t.__name__ for t in types]
        elif types is not None and not isinstance(types, str):
            types = types.__name__
        return {
            "representations": [r.to_dict() for r in self.representations],
            "intervention_types": types,
            "mode": self.mode,
            "sorted_keys": self.sorted_keys,
            "model_type": None if self.model_type is None else str(self.model_type),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntervenableConfig:
        return cls(
            representations=list(data.get("representations", [])),
            intervention_types=data.get("intervention_types"),
            mode=data.get("mode", "parallel"),
            sorted_keys=data.get("sorted_keys"),
            model_type=data.get("model_type"),
        )

    @classmethod
    def from_json(cls, text: str) -> IntervenableConfig:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IntervenableConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        reps = ",\n  ".join(
            f"{r.layer}:{r.component}[{r.unit}]"
            f" {(r.intervention_type if isinstance(r.intervention_type, (str, type(None))) else r.intervention_type.__name__) or ''}"
            for r in self.representations
        )
        return f"IntervenableConfig(mode={self.mode!r}, representations=[\n  {reps}\n])"


def as_config(config: Any) -> IntervenableConfig:
    """Accepts an IntervenableConfig, a dict, a list of dicts or a RepresentationConfig."""
    if isinstance(config, IntervenableConfig):
        return config
    if isinstance(config, Mapping) and "representations" in config:
        return IntervenableConfig(**config)
    return IntervenableConfig(config)
