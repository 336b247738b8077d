"""Loading interventions that pyvene saved (``config.json`` + ``intkey_<key>.bin`` files).

Published pyvene artifacts keep working: the representations are read in pyvene's field
order, each ``"<class 'pyvene....VanillaIntervention'>"`` is looked up by its class name in our
registry (nothing is imported from the string), and weights are read with
``torch.load(weights_only=True, map_location="cpu")``, which unpickles tensors only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from das_train.core.config import IntervenableConfig, RepresentationConfig
from das_train.core.paths import contained_path, is_plain_name
from das_train.interventions.base import INTERVENTION_REGISTRY, Intervention, build_intervention

_CLASS_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)'?>?\s*$")
# pyvene stores these as buffers; ours are plain ints set from the config.
_PYVENE_ONLY = ("embed_dim", "interchange_dim", "intervention_population")


def _type_name(text: str) -> str:
    match = _CLASS_NAME.search(text.strip())
    if not match:
        raise ValueError(f"cannot read an intervention type from {text!r}")
    return match.group(1)


def _representation(values: Any) -> RepresentationConfig:
    if isinstance(values, dict):
        values = {k: v for k, v in values.items() if k in RepresentationConfig.__dataclass_fields__}
        rep = RepresentationConfig(**values)
    else:
        rep = RepresentationConfig(*values)
    rep.hidden_source_representation = None
    rep.intervention_type = None
    return rep


def _restore(intervention: Intervention, state: dict[str, torch.Tensor], key: str) -> None:
    state = dict(state)
    interchange = state.pop("interchange_dim", None)
    for name in _PYVENE_ONLY:
        state.pop(name, None)
    if interchange is not None and hasattr(intervention, "set_interchange_dim"):
        value = int(interchange)
        if intervention.embed_dim is None or value < intervention.embed_dim:
            intervention.set_interchange_dim(value)
    constant = state.get("source_representation")
    if constant is not None:
        intervention.set_source_representation(constant)
    missing, unexpected = intervention.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{key}: pyvene weights do not fit {type(intervention).__name__}: missing {missing}, "
            f"unexpected {unexpected}"
        )


def pyvene_artifact_config(directory: Path, document: dict[str, Any]) -> IntervenableConfig:
    """The config of a pyvene artifact, each representation holding its intervention built
    and loaded (or, with no recorded width, the type to build it from)."""
    names = [_type_name(t) for t in document.get("intervention_types") or []]
    reps = [_representation(r) for r in document.get("representations", [])]
    keys = document.get("sorted_keys") or [None] * len(reps)
    dims = document.get("intervention_dimensions") or [None] * len(reps)
    if len(names) != len(reps):
        raise ValueError(
            f"{directory}: {len(names)} intervention types for {len(reps)} representations"
        )
    for i, (rep, name, key, dim) in enumerate(zip(reps, names, keys, dims)):
        cls = INTERVENTION_REGISTRY.get(name)
        if cls is None:
            raise ValueError(
                f"{directory}: intervention type {name!r} (representation {i}) has no counterpart "
                f"here; registered: {sorted(INTERVENTION_REGISTRY)}"
            )
        embed_dim = dim if isinstance(dim, int) else None
        intervention = build_intervention(cls, {
            "embed_dim": embed_dim,
            "low_rank_dimension": rep.low_rank_dimension,
            "subspace_partition": rep.subspace_partition,
            "latent_dim": rep.latent_dim,
            # Boundless DAS trained by pyvene learned under pyvene's boundary mask.
            "mask_formula": "pyvene",
        }) if embed_dim is not None else None
        if key is not None and not is_plain_name(str(key)):
            raise ValueError(f"{directory}: sorted key {key!r} is not a plain name; it would read a file "
                             "outside the artifact")
        weights = contained_path(directory, f"intkey_{key}.bin", "the weights file")
        if intervention is not None and weights.exists():
            state = torch.load(weights, map_location="cpu", weights_only=True)
            _restore(intervention, state, str(key))
        if intervention is not None:
            rep.intervention = intervention
        else:
            rep.intervention_type = cls
    return IntervenableConfig(reps, mode=document.get("mode", "parallel"))
