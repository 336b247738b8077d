"""A model class the package does not know gets named components without editing the package:
through pv.register_architecture (a typed table) or pyvene's pv.type_to_module_mapping /
pv.type_to_dimension_mapping. Interchanges at its components are checked against hand hooks,
and against pyvene 0.1.8 given the same pyvene-form entries."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import das_train as pv

WIDTH, INNER = 6, 10


class TinyNet(nn.Module):
    """Residual blocks ``blocks[i]`` with an inner ``ff`` of width ``INNER``; no HF config class."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.config = SimpleNamespace(n_blocks=3, width=WIDTH, inner=INNER, model_type="tinynet")
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"ff": nn.Sequential(nn.Linear(WIDTH, INNER), nn.Tanh()),
                           "out": nn.Linear(INNER, WIDTH)}) for _ in range(3))
        self.head = nn.Linear(WIDTH, 2)

    def run(self, x, upto=None, patch=None):
        """Forward by hand; ``patch(i, inner)`` may replace block i's inner activation."""
        for i, block in enumerate(self.blocks):
            inner = block["ff"](x)
            if patch is not None:
                inner = patch(i, inner)
            x = x + block["out"](inner)
        return self.head(x)

    def forward(self, x):
        return self.run(x)


    @property
    def device(self):  # pyvene reads model.device
        return self.head.weight.device


class TinyNetSubclass(TinyNet):
    pass


def _hand_interchange(model, base, source, layer, dims):
    with torch.no_grad():
        inner_source = {}
        model.run(source, patch=lambda i, h: inner_source.setdefault(i, h))

        def patch(i, h):
            if i == layer:
                h = h.clone()
                h[..., dims] = inner_source[i][..., dims]
            return h

        return model.run(base, patch=patch)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, WIDTH, generator=g), torch.randn(4, 3, WIDTH, generator=g)


@pytest.fixture
def clean_registry():
    yield
    from das_train.core import sites

    sites._REGISTERED.pop(TinyNet, None)
    pv.type_to_module_mapping.pop(TinyNet, None)
    pv.type_to_dimension_mapping.pop(TinyNet, None)


def _interchange(model, layer=1, dims=(2, 7)):
    base, source = _inputs()
    im = pv.IntervenableModel({"layer": layer, "component": "mlp_activation"}, model)
    _, out = im(base, [source], {"sources->base": [[0, 2]] * 4}, subspaces=[list(dims)] * 4)
    return im, out


def _expected(model, layer=1, dims=(2, 7)):
    base, source = _inputs()
    with torch.no_grad():
        full = _hand_interchange(model, base, source, layer, list(dims))
        plain = model(base)
    full[:, 1] = plain[:, 1]  # position 1 was not intervened on
    return full


def test_register_architecture_typed_table(clean_registry):
    model = TinyNetSubclass().eval()  # a subclass finds its base class's table
    pv.register_architecture(TinyNet, pv.ArchitectureTable(
        "tinynet", (), lambda config: config.n_blocks,
        {"mlp_activation": pv.ComponentSpec("blocks.{layer}.ff", "output", lambda c: c.inner),
         "block_output": pv.ComponentSpec("blocks.{layer}", "output", lambda c: c.width)}))
    im, out = _interchange(model)
    assert im.interventions[im.sorted_keys[0]].embed_dim == INNER
    torch.testing.assert_close(out, _expected(model), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="allowed 0..2"):
        pv.IntervenableModel({"layer": 3, "component": "mlp_activation"}, model)


def test_pyvene_form_mappings(clean_registry):
    model = TinyNet().eval()
    pv.type_to_module_mapping[TinyNet] = {
        "mlp_activation": ("blocks[%s].ff", "register_forward_hook"),
        "block_input": ("blocks[%s].ff", "register_forward_pre_hook"),
    }
    pv.type_to_dimension_mapping[TinyNet] = {"mlp_activation": ("inner",), "block_input": ("width*1",)}
    im, out = _interchange(model)
    assert im.interventions[im.sorted_keys[0]].embed_dim == INNER
    torch.testing.assert_close(out, _expected(model), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="allowed 0..2"):  # layers counted from the paths
        pv.IntervenableModel({"layer": 3, "component": "mlp_activation"}, model)
    # no dimension entry: the width is read off the module
    del pv.type_to_dimension_mapping[TinyNet]["mlp_activation"]
    im, out = _interchange(model)
    assert im.interventions[im.sorted_keys[0]].embed_dim == INNER
    torch.testing.assert_close(out, _expected(model), rtol=0, atol=1e-6)


def test_pyvene_form_agrees_with_pyvene(clean_registry):
    pyvene = pytest.importorskip("pyvene")
    model = TinyNet().eval()
    for lib in (pv, pyvene):
        lib.type_to_module_mapping[TinyNet] = {"mlp_activation": ("blocks[%s].ff", "register_forward_hook")}
        lib.type_to_dimension_mapping[TinyNet] = {"mlp_activation": ("inner",)}
    try:
        base, source = _inputs()
        outs = []
        for lib in (pv, pyvene):
            config = lib.IntervenableConfig(
                representations=[lib.RepresentationConfig(1, "mlp_activation", "pos", 1)],
                intervention_types=lib.VanillaIntervention)
            _, out = lib.IntervenableModel(config, model)(
                {"x": base}, [{"x": source}], {"sources->base": ([[[2]] * 4], [[[2]] * 4])}, subspaces=[[[2, 7]] * 4])
            outs.append(out)
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-6)
    finally:
        pyvene.type_to_module_mapping.pop(TinyNet, None)
        pyvene.type_to_dimension_mapping.pop(TinyNet, None)


def test_pyvene_entries_we_cannot_read_are_refused_with_the_reason(clean_registry):
    pv.type_to_module_mapping[TinyNet] = {"mlp_activation": ("blocks[%s].ff", "register_forward_hook", (None, 0))}
    with pytest.raises(ValueError, match="sub-component functions.*register_architecture"):
        pv.IntervenableModel({"layer": 0, "component": "mlp_activation"}, TinyNet())


def test_dimension_proposals_are_read_not_evaluated():
    from das_train.core.sites import pyvene_dimension

    config = SimpleNamespace(hidden_size=16, num_attention_heads=4, text_config=SimpleNamespace(d=3))
    assert pyvene_dimension(config, ("hidden_size/num_attention_heads",)) == 4
    assert pyvene_dimension(config, ("missing", "hidden_size*4")) == 64
    assert pyvene_dimension(config, ("text_config.d",)) == 3
    assert pyvene_dimension(config, ("12",)) == 12
    assert pyvene_dimension(config, ("__import__('os')",)) is None
