"""The argument checks the trainable families share: one place refuses a missing width.

Each family used to check ``embed_dim`` in its own constructor; now the base class does it for
every class that sets ``needs_embed_dim``. These tests pin which classes those are and what
they say, and the soft-mask interchange both rotated mask families compute with one helper.
"""

from __future__ import annotations

import pytest
import torch

import das_train  # noqa: F401  (registers every intervention family)
from das_train.interventions.base import INTERVENTION_REGISTRY
from das_train.interventions.masks import (
    BoundlessRotatedSpaceIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from das_train.interventions.subspaces import zero_outside

D = 6

SIZED = {
    "AutoencoderIntervention": {"latent_dim": 4},
    "BoundlessRotatedSpaceIntervention": {},
    "JumpReLUAutoencoderIntervention": {"low_rank_dimension": 4},
    "LoreftIntervention": {"low_rank_dimension": 2},
    "LowRankRotatedSpaceIntervention": {"low_rank_dimension": 2},
    "NoreftIntervention": {"low_rank_dimension": 2},
    "PCARotatedSpaceIntervention": {},
    "RotatedSpaceIntervention": {},
    "SigmoidMaskIntervention": {},
    "SigmoidMaskRotatedSpaceIntervention": {},
}
"""Every class that sizes parameters by ``embed_dim``, with the other sizes it needs."""


def test_the_classes_that_need_embed_dim_are_the_sized_families():
    flagged = {name for name, cls in INTERVENTION_REGISTRY.items() if cls.needs_embed_dim}
    assert flagged - {"_ReftBase"} == set(SIZED)


@pytest.mark.parametrize("name", sorted(SIZED))
def test_missing_embed_dim_names_the_argument_and_the_fix(name):
    with pytest.raises(ValueError, match=rf"{name} needs `embed_dim` \(the width of one unit\)"):
        INTERVENTION_REGISTRY[name](**SIZED[name])


@pytest.mark.parametrize("name", sorted(SIZED))
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_non_positive_or_non_integer_embed_dim_is_refused(name, bad):
    with pytest.raises(
        ValueError, match=rf"{name}: `embed_dim` must be a positive int, got {bad!r}"
    ):
        INTERVENTION_REGISTRY[name](embed_dim=bad, **SIZED[name])


@pytest.mark.parametrize("name", sorted(SIZED))
def test_a_float_that_is_an_integer_is_taken_as_one(name):
    assert INTERVENTION_REGISTRY[name](embed_dim=float(D), **SIZED[name]).embed_dim == D


def test_zero_outside_keeps_the_masked_entries_and_zeroes_the_rest():
    values = torch.arange(1.0, 7.0).reshape(2, 3)
    mask = torch.tensor([True, False, True])
    assert zero_outside(values, mask).tolist() == [[1.0, 0.0, 3.0], [4.0, 0.0, 6.0]]
    assert zero_outside(values, None) is values


@pytest.mark.parametrize(
    "build",
    [
        lambda: BoundlessRotatedSpaceIntervention(D, initial_boundary=0.5, temperature=0.7),
        lambda: SigmoidMaskRotatedSpaceIntervention(D, initial_logit=0.3, temperature=0.7),
    ],
)
def test_rotated_soft_masks_keep_the_base_outside_the_subspaces(build):
    torch.manual_seed(0)
    intervention = build()
    base, source = torch.randn(2, 3, D), torch.randn(2, 3, D)
    rotation = intervention.rotate_layer.weight.detach()  # (d, d)
    mask = (
        intervention.boundary_mask()
        if hasattr(intervention, "boundary_mask")
        else intervention.mask_values()
    )
    kept = torch.zeros(D)
    kept[[1, 4]] = mask.detach()[[1, 4]]
    rb, rs = base @ rotation, source @ rotation
    expected = ((1 - kept) * rb + kept * rs) @ rotation.T
    out = intervention(base, source, subspaces=[1, 4])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
