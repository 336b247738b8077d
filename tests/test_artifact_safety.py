"""Loading an artifact is refused, with the file and the reason named, when its format is
unknown, when it was saved on another architecture, or when a name in it leaves its folder."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from conftest import make_gpt2, make_neox

import das_train as pv
from das_train.core.serialization import CONFIG_NAME, FORMAT
from das_train.hub import from_pretrained


def saved_rotation(tmp_path, model):
    im = pv.IntervenableModel({"layer": 0, "component": "block_output",
                               "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 2},
                              model)
    im.save(str(tmp_path))
    return im


@pytest.mark.parametrize("document", [{}, {"format": "someone.else/3"}, [], {"representations": []}])
def test_a_config_of_no_known_format_is_refused_naming_the_file_and_the_formats(tmp_path, document):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.raises(ValueError, match=f"{tmp_path / CONFIG_NAME} is not a saved intervention.*{FORMAT}.*pyvene"):
        pv.IntervenableModel.load(str(tmp_path), make_gpt2())


def test_an_artifact_saved_on_one_architecture_is_refused_on_another_of_equal_width(tmp_path):
    saved_rotation(tmp_path, make_gpt2())
    with pytest.raises(ValueError, match="saved on a 'gpt2' model .*onto a 'gpt_neox' model"):
        pv.IntervenableModel.load(str(tmp_path), make_neox())
    assert pv.IntervenableModel.load(str(tmp_path), make_gpt2()) is not None


def test_a_site_of_another_width_is_refused(tmp_path):
    saved_rotation(tmp_path, make_gpt2())
    wider = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64,
                                                                 n_positions=32))
    with pytest.raises(ValueError, match="16"):
        pv.IntervenableModel.load(str(tmp_path), wider)


def test_an_artifact_without_the_architecture_record_loads_with_a_warning(tmp_path, base_source):
    model = make_gpt2()
    im = saved_rotation(tmp_path, model)
    document = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert document["architecture"] == {"model_class": "GPT2LMHeadModel", "model_type": "gpt2",
                                        "site_widths": {im.sorted_keys[0]: 16}}
    del document["architecture"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="records no architecture"):
        loaded = pv.IntervenableModel.load(str(tmp_path), model)
    base, source = base_source
    locations = {"sources->base": 1}
    torch.testing.assert_close(loaded(base, [source], locations)[1].logits, im(base, [source], locations)[1].logits)


def test_a_pyvene_key_that_leaves_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    torch.save({"source_representation": torch.ones(16)}, outside)
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / CONFIG_NAME).write_text(json.dumps({
        "intervention_dimensions": [16], "mode": "parallel",
        "intervention_types": ["<class 'pyvene.models.interventions.AdditionIntervention'>"],
        "representations": [[0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, True, None]],
        "sorted_keys": ["../../outside"],
    }))
    with pytest.raises(ValueError, match="'../../outside' is not a plain name"):
        pv.IntervenableModel.load(str(artifact), make_gpt2())


def test_files_symlinked_out_of_the_artifact_are_refused(tmp_path):
    saved_rotation(tmp_path / "real", make_gpt2())
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    for name in os.listdir(tmp_path / "real"):
        (artifact / name).symlink_to(tmp_path / "real" / name)
    with pytest.raises(ValueError, match="outside .*artifact"):
        pv.IntervenableModel.load(str(artifact), make_gpt2())


@pytest.mark.parametrize("subfolder", ["../elsewhere", "/etc", "sweep/../../elsewhere", "escape"])
def test_a_subfolder_outside_the_folder_is_refused(tmp_path, subfolder):
    saved_rotation(tmp_path / "elsewhere", make_gpt2())
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="subfolder"):
        from_pretrained(str(root), make_gpt2(), subfolder=subfolder)
