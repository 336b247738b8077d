"""Built-in MLP/GRU models and module-path components on models with no table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import das_train as pv


class Bare(nn.Module):
    """No .config, no .device: only submodules."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
        self.dec = nn.Linear(8, 3)

    def forward(self, x):
        return self.dec(self.enc(x))


def test_module_path_on_a_bare_module():
    model = Bare().eval()
    base, source = torch.randn(4, 6), torch.randn(4, 6)
    im = pv.IntervenableModel({"component": "enc.output"}, model)
    assert im.interventions[im.sorted_keys[0]].embed_dim == 8  # inferred from the Linear
    _, out = im(base, [source], subspaces=[1, 5])
    with torch.no_grad():
        hb, hs = model.enc(base), model.enc(source)
        hb[:, [1, 5]] = hs[:, [1, 5]]
        expected = model.dec(hb)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_module_path_input_side_and_bracket_indices(gpt2, base_source):
    base, source = base_source
    im = pv.IntervenableModel({"component": "transformer.h[1].mlp.input"}, gpt2)
    named = pv.IntervenableModel({"layer": 1, "component": "mlp_input"}, gpt2)
    _, a = im(base, [source], {"sources->base": 2})
    _, b = named(base, [source], {"sources->base": 2})
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


def test_mlp_block_output_by_hand():
    config, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=8, n_layer=3, input_dim=12, num_classes=2, activation_function="relu"), seed=0)
    mlp.eval()
    base, source = torch.randn(5, 12), torch.randn(5, 12)
    im = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.VanillaIntervention}, mlp)
    _, out = im({"inputs_embeds": base}, [{"inputs_embeds": source}], subspaces=[0, 2, 4])
    with torch.no_grad():
        hb = mlp.mlp.h[1](mlp.mlp.h[0](base))
        hs = mlp.mlp.h[1](mlp.mlp.h[0](source))
        hb[:, [0, 2, 4]] = hs[:, [0, 2, 4]]
        expected = mlp.score(mlp.mlp.h[2](hb))
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)
    widths = pv.IntervenableModel(
        [{"layer": 0, "component": "block_input"}, {"layer": 1, "component": "block_input"}], mlp
    )
    assert [widths.interventions[k].embed_dim for k in widths.sorted_keys] == [12, 8]


def test_mlp_position_must_be_zero():
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=8), seed=0)
    im = pv.IntervenableModel({"layer": 0}, mlp)
    with pytest.raises(pv.LocationError, match=r"positions \[3\] out of range; allowed 0..0"):
        im({"inputs_embeds": torch.randn(2, 8)}, [{"inputs_embeds": torch.randn(2, 8)}], {"sources->base": 3})


def test_gru_every_time_step_when_no_location():
    """Unit 't' without a location: every step takes the source's value of the same step."""
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=6, num_classes=3), seed=0)
    gru.eval()
    base, source = torch.rand(2, 4, 6), torch.rand(2, 4, 6)
    im = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, gru)
    _, out = im({"inputs_embeds": base}, [{"inputs_embeds": source}])
    torch.testing.assert_close(out.logits, gru(inputs_embeds=source).logits, atol=1e-6, rtol=0)


def test_gru_cell_input_zeroed_at_one_step_by_hand():
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=6), seed=0)
    gru.eval()
    base = torch.rand(3, 5, 6)
    im = pv.IntervenableModel({"component": "cell_input", "unit": "t", "intervention_type": pv.ZeroIntervention}, gru)
    _, out = im({"inputs_embeds": base}, unit_locations={"base": [[1], [4], [0]]})
    with torch.no_grad():
        zeroed = base.clone()
        zeroed[0, 1] = 0
        zeroed[1, 4] = 0
        zeroed[2, 0] = 0
        expected = gru(inputs_embeds=zeroed).logits
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)


def test_gpt_neo_and_bert_have_tables():
    from conftest import make_bert, make_gpt_neo

    for model, width in ((make_gpt_neo(), 64), (make_bert(), 32)):
        im = pv.IntervenableModel({"layer": 1, "component": "mlp_activation"}, model)
        assert im.interventions[im.sorted_keys[0]].embed_dim == width
