"""Config JSON round trips; save/load reproduces outputs exactly and loads on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

import das_train as pv
from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME


def test_config_json_round_trip():
    config = pv.IntervenableConfig(
        [
            pv.RepresentationConfig(1, "mlp_output", "pos", 2, subspace_partition=[[0, 4], [4, 16]]),
            {"layer": 0, "component": "head_key_output", "unit": "h.pos", "group_key": 1},
            {"layer": 1, "component": "block_output", "intervention_type": "ZeroIntervention", "group_key": 2},
        ],
        intervention_types=[pv.VanillaIntervention, pv.AdditionIntervention, pv.ZeroIntervention],
        mode="serial",
    )
    text = config.to_json()
    again = pv.IntervenableConfig.from_json(text)
    assert again == config
    assert json.loads(text)["intervention_types"] == ["VanillaIntervention", "AdditionIntervention", "ZeroIntervention"]
    assert again.intervention_type_for(1) is pv.AdditionIntervention


def test_positional_representation_follows_pyvene_field_order():
    rep = pv.RepresentationConfig(3, "mlp_output", "pos", 2, 8)
    assert (rep.layer, rep.component, rep.unit, rep.max_number_of_units, rep.low_rank_dimension) == (3, "mlp_output", "pos", 2, 8)


def test_unknown_type_name_is_rejected():
    with pytest.raises(ValueError, match="unknown intervention type 'os.system'"):
        pv.IntervenableConfig([{"layer": 0, "intervention_type": "os.system"}]).intervention_type_for(0)


def test_save_load_reproduces_outputs(tmp_path, gpt2, base_source):
    base, source = base_source
    im = pv.IntervenableModel(
        [
            {"layer": 0, "component": "block_output"},
            {"layer": 1, "component": "mlp_output", "intervention_type": pv.AdditionIntervention,
             "source_representation": torch.linspace(-1, 1, 16)},
            {"layer": 1, "component": "block_input", "intervention": pv.NoiseIntervention(scale=0.3, seed=5)},
        ],
        gpt2,
    )
    locations = {"sources->base": ([[[1]], None, None], [[[1]], [[2]], [[3]]])}
    _, before = im(base, [source, None, None], locations)
    im.save(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    _, after = loaded(base, [source, None, None], locations)
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    noise = loaded.interventions[loaded.sorted_keys[2]]
    assert (noise.scale, noise.seed) == (0.3, 5)


def test_linked_interventions_are_saved_once(tmp_path, gpt2):
    im = pv.IntervenableModel(
        [
            {"layer": 0, "intervention_type": pv.AdditionIntervention, "intervention_link_key": 1,
             "source_representation": torch.ones(16)},
            {"layer": 1, "intervention_type": pv.AdditionIntervention, "intervention_link_key": 1},
        ],
        gpt2,
    )
    a, b = (im.interventions[k] for k in im.sorted_keys)
    assert a is b
    im.save(str(tmp_path))
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    a2, b2 = (loaded.interventions[k] for k in loaded.sorted_keys)
    assert a2 is b2
    torch.testing.assert_close(a2.source_representation, torch.ones(16))


def test_load_never_assumes_cuda(tmp_path, gpt2):
    """pyvene's loader moved tensors to cuda:0; ours loads onto the CPU, then the model's device."""
    im = pv.IntervenableModel({"layer": 0, "intervention_type": pv.AdditionIntervention,
                               "source_representation": torch.ones(16)}, gpt2)
    im.save(str(tmp_path))
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())


def test_functions_cannot_be_saved_and_nothing_is_half_written(tmp_path, gpt2):
    im = pv.IntervenableModel({"layer": 0, "intervention": lambda b, s: b * 2}, gpt2)
    with pytest.raises(ValueError, match="plain function"):
        im.save(str(tmp_path / "out"))
    assert not (tmp_path / "out" / CONFIG_NAME).exists()
    assert not list((tmp_path / "out").glob("*.tmp")) if (tmp_path / "out").exists() else True


def test_missing_local_dir_offline_fails_clearly(gpt2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="is not a local directory and could not be fetched"):
        pv.IntervenableModel.load("no-such-user/no-such-intervention", gpt2)
