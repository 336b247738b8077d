"""Cases from pyvene 0.1.8's own test suite that das_train failed, each reduced to one check.

scripts/pyvene_suite.py runs pyvene's suite against das_train; every failure it found that was a
das_train fault (not an expected difference) has its regression test here, on a tiny model.
"""

from __future__ import annotations

import pytest
import torch

import das_train as pv

BATCH = 4


def _linked_mlp():
    """Two interventions linked on one site of the built-in MLP, as pyvene's MLP test builds."""
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5))
    rep = dict(
        layer=0,
        component="mlp_activation",
        unit="pos",
        max_number_of_units=1,
        subspace_partition=[[1, 3], [0, 1]],
        intervention_link_key=0,
    )
    config = pv.IntervenableConfig(
        [pv.RepresentationConfig(**rep), pv.RepresentationConfig(**rep)],
        intervention_types=pv.VanillaIntervention,
    )
    return pv.IntervenableModel(config, mlp)


def test_location_list_shorter_than_interventions_is_an_index_error():
    """InterventionWithMLPTestCase.test_with_subspace_negative: one location entry for two
    interventions must raise something pyvene programs catch as ``IndexError``, and still say
    what is wrong."""
    model = _linked_mlp()
    base = {"inputs_embeds": torch.rand(BATCH, 1, 3)}
    source = {"inputs_embeds": torch.rand(BATCH, 1, 3)}
    one_entry = ([[[0]] * BATCH], [[[0]] * BATCH])
    with pytest.raises(IndexError, match="1 entries for 2 interventions"):
        model(base, [source], {"sources->base": one_entry}, subspaces=0)
    with pytest.raises(ValueError):  # still a ValueError for callers of das_train's own API
        model(base, [source], {"sources->base": one_entry}, subspaces=0)
