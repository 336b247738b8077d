"""Artifacts saved by pyvene (config.json + intkey_*.bin) load and give the same outputs."""

from __future__ import annotations

import json

import pytest
import torch

import das_train as pv


def _write_pyvene_artifact(directory, constant):
    """The files pyvene 0.1.8's save() writes, reproduced field by field."""
    keys = ["layer_0_comp_block_output_unit_pos_nunit_1#0", "layer_1_comp_mlp_output_unit_pos_nunit_1#0"]
    config = {
        "intervention_constant_sources": [False, True],
        "intervention_dimensions": [16, 16],
        "intervention_types": [
            "<class 'pyvene.models.interventions.VanillaIntervention'>",
            "<class 'pyvene.models.interventions.AdditionIntervention'>",
        ],
        "mode": "parallel",
        "representations": [
            [0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, None, None],
            [1, "mlp_output", "pos", 1, None, None, None, None, None, None, None, None, True, None],
        ],
        "sorted_keys": keys,
        "transformers_version": "4.45.0",
    }
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(
        {"embed_dim": torch.tensor(16), "interchange_dim": torch.tensor(16), "source_representation": constant},
        directory / f"intkey_{keys[1]}.bin",
    )


def test_hand_written_pyvene_artifact_loads(tmp_path, gpt2, base_source):
    base, source = base_source
    constant = torch.linspace(-2, 2, 16)
    _write_pyvene_artifact(tmp_path, constant)
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert [type(i).__name__ for i in loaded.interventions.values()] == ["VanillaIntervention", "AdditionIntervention"]
    locations = {"sources->base": ([[[1]], None], [[[1]], [[3]]])}
    _, out = loaded(base, [source, None], locations)
    expected = pv.IntervenableModel(
        [{"layer": 0}, {"layer": 1, "component": "mlp_output", "intervention_type": pv.AdditionIntervention,
                        "source_representation": constant}],
        gpt2,
    )
    _, want = expected(base, [source, None], locations)
    torch.testing.assert_close(out.logits, want.logits, atol=0, rtol=0)


@pytest.mark.pyvene
def test_pyvene_saved_rotations_reproduce_pyvene_outputs(tmp_path, gpt2, base_source):
    pyvene = pytest.importorskip("pyvene")
    base, source = base_source
    config = pyvene.IntervenableConfig([
        {"layer": 0, "component": "block_output", "intervention_type": pyvene.VanillaIntervention},
        {"layer": 1, "component": "mlp_output", "intervention_type": pyvene.LowRankRotatedSpaceIntervention,
         "low_rank_dimension": 2},
        {"layer": 1, "component": "block_output", "intervention_type": pyvene.RotatedSpaceIntervention},
        {"layer": 1, "component": "block_input", "intervention_type": pyvene.AdditionIntervention,
         "source_representation": torch.ones(16)},
    ])
    theirs = pyvene.IntervenableModel(config, gpt2)
    theirs.save(str(tmp_path))
    ours = pv.IntervenableModel.load(str(tmp_path), gpt2)
    rows = [[[1]] * 2, [[2]] * 2, [[3]] * 2]
    locations = {"sources->base": (rows + [None], rows + [[[4]] * 2])}
    with torch.no_grad():
        want = theirs(base, [source] * 3 + [None], locations)[1].logits
    got = ours(base, [source] * 3 + [None], locations)[1].logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
