"""A trained DAS intervention as the MIB causal-variable track's featurizer, inverse and indices.

MIB (the Mechanistic Interpretability Benchmark) evaluates a featurizer: a module mapping a
hidden vector ``x`` to ``(features, error)``, an inverse mapping ``(features, error)`` back, and
the indices of the features its interchange swaps. Its subspace featurizer holds an orthogonal
``(d, k)`` matrix ``W`` (torch's orthogonal parametrization of a ``weight`` read as ``x @ W``):

    features = x @ W,  error = x - features @ W^T,  inverse(f, error) = f @ W^T + error

so swapping features ``I`` of the base for the source's gives
``b + ((s - b) @ W[:, I]) @ W[:, I]^T``, which is das_train's interchange for each family here:

- ``LowRankRotatedSpaceIntervention``: ``W`` its ``(d, k)`` directions, ``I`` all ``k``;
- ``RotatedSpaceIntervention``: ``W`` its ``(d, d)`` rotation, ``I`` its first
  ``interchange_dim`` coordinates (all when unset);
- ``BoundlessRotatedSpaceIntervention``: ``W`` its rotation, ``I`` the coordinates its boundary
  mask (at the trained, annealed temperature) puts above one half. MIB swaps whole features, so
  a mask still soft at the end of training is exported hardened; the README says so.

Each of the two files is ``torch.save({"model_info": ..., "state_dict": ...})`` with the
state dict of a module whose ``rotate`` is that parametrized layer, and the indices file is the
JSON list of ints. Followed, read but not copied (the files of MIB's submission format):

- github.com/aaronmueller/MIB @ cc2a160ef6da5508bd670e8c0ba696168a57fca3,
  ``MIB-causal-variable-track/README.md`` (folder layout), ``verify_submission.py`` (what a
  valid featurizer / inverse / indices triplet holds) and ``evaluate_submission.py`` (how the
  folder and file names are parsed);
- its submodule CausalAbstraction (pinned at f9ed6777, read in the fork
  github.com/sidnb13/CausalAbstraction @ 1d3a1910829c2f608cd9d01950b0c8edf5282604):
  ``neural/featurizers.py`` (``Featurizer.save_modules`` / ``load_modules``,
  ``SubspaceFeaturizerModule``, ``SubspaceInverseFeaturizerModule``) and
  ``neural/LM_units.py`` (``ResidualStream.load_modules``: the unit's file names).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from das_train.core.files import atomic_write, atomic_write_text
from das_train.interventions.masks import BoundlessRotatedSpaceIntervention
from das_train.interventions.rotated import (
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
)

FEATURIZER_CLASS = "SubspaceFeaturizerModule"
INVERSE_CLASS = "SubspaceInverseFeaturizerModule"
"""The class names MIB's loader rebuilds a subspace featurizer from (``model_info``)."""
FEATURIZER_ID = "DAS"
FILE_SUFFIXES = ("_featurizer", "_inverse_featurizer", "_indices")
"""A unit's three files: ``<unit id><suffix>``, no extension, as MIB's loader looks them up."""
ORIGINAL_KEY = "rotate.parametrizations.weight.original"
BASE_KEY = "rotate.parametrizations.weight.0.base"
EXPORTABLE = (LowRankRotatedSpaceIntervention, RotatedSpaceIntervention, BoundlessRotatedSpaceIntervention)


@dataclass
class MibFeatures:
    """One trained site in MIB's terms: the orthonormal columns ``W`` (``(d, k)``, read as
    ``x @ W``) and the feature indices an interchange swaps."""

    rotation: torch.Tensor
    indices: list[int]
    hardened_from: float | None = None
    """For Boundless DAS: the softest mask value made 0 or 1 (how far from hard the mask was)."""


@torch.no_grad()
def features_of(intervention: Any) -> MibFeatures:
    """The featurizer matrix and indices of a trained rotation-family intervention."""
    if not isinstance(intervention, EXPORTABLE):
        allowed = [cls.__name__ for cls in EXPORTABLE]
        raise ValueError(f"a {type(intervention).__name__} has no MIB subspace featurizer; exportable: {allowed}")
    rotation = intervention.rotate_layer.weight.detach().to("cpu", torch.float32).clone()
    width = rotation.shape[1]
    if isinstance(intervention, LowRankRotatedSpaceIntervention):
        return MibFeatures(rotation, list(range(width)))
    if isinstance(intervention, RotatedSpaceIntervention):
        count = width if intervention.interchange_dim is None else intervention.interchange_dim
        return MibFeatures(rotation, list(range(count)))
    mask = intervention.boundary_mask().detach().to("cpu", torch.float32)  # (d,)
    chosen = mask > 0.5
    softest = float(torch.where(chosen, 1 - mask, mask).max())
    return MibFeatures(rotation, [int(i) for i in torch.nonzero(chosen).flatten()], hardened_from=softest)


def subspace_state(rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state dict under which torch's orthogonal parametrization (its default map, with the
    trivialization base, as MIB's loader builds it) reads exactly ``rotation``: the base is
    ``rotation`` completed to a ``(d, d)`` orthogonal matrix, and the tangent ``original`` is
    ``-I``, which both maps (Householder when tall, matrix exponential when square) read as the
    identity, so the weight is the base's first ``k`` columns."""
    dim, width = rotation.shape
    complement = torch.linalg.qr(rotation, mode="complete").Q[:, width:]  # (d, d - k)
    return {ORIGINAL_KEY: -torch.eye(dim, width), BASE_KEY: torch.cat([rotation, complement], dim=1).contiguous()}


def checkpoints(features: MibFeatures) -> tuple[dict[str, Any], dict[str, Any]]:
    """The featurizer's and the inverse's saved dicts (one shared rotation, as in MIB)."""
    info = {
        "featurizer_class": FEATURIZER_CLASS,
        "inverse_featurizer_class": INVERSE_CLASS,
        "n_features": int(features.rotation.shape[1]),
        "featurizer_id": FEATURIZER_ID,
        "additional_config": {"rotation_matrix": features.rotation.clone(), "requires_grad": False},
    }
    state = subspace_state(features.rotation)
    return ({"model_info": info, "state_dict": dict(state)},
            {"model_info": dict(info), "state_dict": dict(state)})


def write_unit(folder: Path, unit_id: str, features: MibFeatures) -> list[Path]:
    """Writes ``<unit_id>_featurizer``, ``_inverse_featurizer`` and ``_indices`` into ``folder``,
    each atomically; returns their paths."""
    featurizer, inverse = checkpoints(features)
    paths = [folder / f"{unit_id}{suffix}" for suffix in FILE_SUFFIXES]
    atomic_write(paths[0], lambda tmp: torch.save(featurizer, tmp))
    atomic_write(paths[1], lambda tmp: torch.save(inverse, tmp))
    # One line, no newline: MIB's check reads the first line with ast.literal_eval.
    atomic_write_text(paths[2], json.dumps(features.indices))
    return paths


__all__ = ["EXPORTABLE", "FILE_SUFFIXES", "MibFeatures", "checkpoints", "features_of", "subspace_state",
           "write_unit"]
