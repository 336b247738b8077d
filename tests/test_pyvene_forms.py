"""pyvene programs run unchanged: the forms and behaviours issue 16 found differing.

Each case is checked against a computation written out with plain torch hooks
(``conftest.patched_run`` and the hand layouts of ``test_hand_oracle``) on GPT-2, GPT-NeoX and
Llama with grouped-query attention, and against pyvene 0.1.8 where pyvene is right:

- a function intervention called without a source is applied (pyvene_101), never skipped;
- a Boundless DAS intervention trained and saved by pyvene reproduces pyvene's outputs, while
  ours keeps its own boundary mask through a save and load;
- ``enable_model_gradients()`` puts the model in train mode, as pyvene's does;
- ``h.pos`` locations written as pyvene's lists ``[heads, positions]``;
- subclasses of every public base class that forward pyvene's ``**kwargs``;
- the keyword arguments pyvene programs pass (``use_fast``, ``model_type``);
- direct calls: a narrow ``embed_dim`` interchanges only the leading columns, and a collect
  returns the chosen columns.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import capture, patched_run
from test_hand_oracle import HAND, assert_matches, clean_run, hand_gather, hand_run, out_of

import das_train as pv

FAMILIES = ["gpt2", "gpt_neox", "llama"]
HEAD_COMPONENTS = [
    "head_attention_value_output", "head_query_output", "head_key_output", "head_value_output",
]


@pytest.fixture(scope="module")
def models(request):
    return {
        "gpt2": request.getfixturevalue("gpt2"),
        "gpt_neox": request.getfixturevalue("neox"),
        "llama": request.getfixturevalue("llama"),
    }


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(16)
    base = {"input_ids": torch.randint(1, 64, (2, 6), generator=g)}
    source = {"input_ids": torch.randint(1, 64, (2, 6), generator=g)}
    return base, source


def block_of(model, family, layer):
    return {"gpt2": lambda: model.transformer.h[layer], "gpt_neox": lambda: model.gpt_neox.layers[layer],
            "llama": lambda: model.model.layers[layer]}[family]()


def edit_position(model, family, layer, base, position, edit):
    """The base run with block ``layer``'s output at ``position`` replaced by ``edit(x)``."""
    def at_position(x):
        x[:, position] = edit(x[:, position].clone())
        return x

    return out_of(patched_run(model, block_of(model, family, layer), "output", base, at_position))


# -- 1. silent differences -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_function_without_a_source_is_applied(models, inputs, family, caplog):
    model, (base, _) = models[family], inputs
    config = {"layer": 1, "component": "block_output", "intervention": lambda b, s: b * 0.5}
    with caplog.at_level(logging.WARNING, logger="das_train"):
        _, out = pv.IntervenableModel(config, model)(base, unit_locations={"base": 3})
    assert not caplog.records, "an intervention was skipped"
    want = edit_position(model, family, 1, base, 3, lambda x: x * 0.5)
    assert_matches(out_of(out), want, clean_run(model, base))


@pytest.mark.parametrize("family", FAMILIES)
def test_function_with_a_source_gets_the_source(models, inputs, family):
    model, (base, source) = models[family], inputs
    config = {"layer": 0, "component": "block_output", "intervention": lambda b, s: 0.5 * (b + s)}
    _, out = pv.IntervenableModel(config, model)(base, [source], {"sources->base": 2})
    src = capture(model, block_of(model, family, 0), "output", source)[:, 2]
    want = edit_position(model, family, 0, base, 2, lambda x: 0.5 * (x + src))
    assert_matches(out_of(out), want, clean_run(model, base))


@pytest.mark.pyvene
def test_function_without_a_source_agrees_with_pyvene(gpt2, inputs):
    pyvene = pytest.importorskip("pyvene")
    base, _ = inputs
    config = {"layer": 1, "component": "block_output", "intervention": lambda b, s: b * 0.5}
    with torch.no_grad():
        _, theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig([config]), gpt2)(
            copy.deepcopy(base), unit_locations={"base": 3})
    _, ours = pv.IntervenableModel(config, gpt2)(base, unit_locations={"base": 3})
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-6, rtol=0)


def _pyvene_trained_boundless(pyvene, model, base, source, directory):
    config = pyvene.IntervenableConfig([{"layer": 1, "component": "block_output",
                                         "intervention_type": pyvene.BoundlessRotatedSpaceIntervention}])
    theirs = pyvene.IntervenableModel(config, model)
    optimizer = torch.optim.Adam(theirs.get_trainable_parameters(), lr=0.05)
    for _ in range(5):
        _, out = theirs(copy.deepcopy(base), [copy.deepcopy(source)], {"sources->base": 3})
        out.logits.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    theirs.save(str(directory))
    with torch.no_grad():
        return theirs(copy.deepcopy(base), [copy.deepcopy(source)], {"sources->base": 3})[1].logits


@pytest.mark.pyvene
def test_pyvene_trained_boundless_reproduces_pyvene(tmp_path, gpt2, inputs):
    pyvene = pytest.importorskip("pyvene")
    base, source = inputs
    torch.manual_seed(0)
    want = _pyvene_trained_boundless(pyvene, gpt2, base, source, tmp_path / "pyvene")
    ours = pv.IntervenableModel.load(str(tmp_path / "pyvene"), gpt2)
    (intervention,) = ours.interventions.values()
    assert intervention.mask_formula == "pyvene"
    got = ours(base, [source], {"sources->base": 3})[1].logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # The recorded formula is what makes it match: our own mask gives other logits.
    intervention.mask_formula = "centred"
    other = ours(base, [source], {"sources->base": 3})[1].logits
    assert float((other - want).abs().max().detach()) > 1e-4
    intervention.mask_formula = "pyvene"
    # Saved again by das_train, it still computes pyvene's mask.
    ours.save(str(tmp_path / "ours"))
    again = pv.IntervenableModel.load(str(tmp_path / "ours"), gpt2)
    assert next(iter(again.interventions.values())).mask_formula == "pyvene"
    torch.testing.assert_close(again(base, [source], {"sources->base": 3})[1].logits, want, atol=1e-6, rtol=0)


def test_our_boundless_keeps_its_mask_through_save_and_load(tmp_path, gpt2, inputs):
    base, source = inputs
    torch.manual_seed(0)
    im = pv.IntervenableModel({"layer": 1, "intervention_type": pv.BoundlessRotatedSpaceIntervention}, gpt2)
    (intervention,) = im.interventions.values()
    assert intervention.mask_formula == "centred"
    intervention.set_intervention_boundaries(0.3)
    intervention.set_temperature(0.5)
    want = im(base, [source], {"sources->base": 3})[1].logits
    im.save(str(tmp_path))
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    assert next(iter(loaded.interventions.values())).mask_formula == "centred"
    torch.testing.assert_close(loaded(base, [source], {"sources->base": 3})[1].logits, want, atol=0, rtol=0)


def test_boundless_pyvene_mask_by_hand():
    layer = pv.BoundlessRotatedSpaceIntervention(embed_dim=8, mask_formula="pyvene")
    layer.set_intervention_boundaries(0.4)
    layer.set_temperature(0.7)
    index = torch.arange(8, dtype=torch.float32)
    want = torch.sigmoid(index / 0.7) * torch.sigmoid((0.4 * 8 - index) / 0.7)
    torch.testing.assert_close(layer.boundary_mask(), want)
    with pytest.raises(ValueError, match="mask_formula"):
        pv.BoundlessRotatedSpaceIntervention(embed_dim=8, mask_formula="other")


@pytest.mark.pyvene
def test_model_gradient_switches_set_train_and_eval_as_pyvene():
    pyvene = pytest.importorskip("pyvene")
    from conftest import make_gpt2

    ours_model, their_model = make_gpt2(), make_gpt2()
    ours = pv.IntervenableModel({"layer": 0}, ours_model)
    theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig([{"layer": 0}]), their_model)
    for im, model in ((ours, ours_model), (theirs, their_model)):
        im.enable_model_gradients()
        assert model.training and all(p.requires_grad for p in model.parameters())
        im.disable_model_gradients()
        assert not model.training and not any(p.requires_grad for p in model.parameters())


# -- 2. h.pos locations as lists -----------------------------------------------------------------

SRC_WHERE = {"heads": [[0], [1]], "pos": [[1], [5]]}
BASE_WHERE = {"heads": [[1], [0]], "pos": [[4], [2]]}


@pytest.mark.parametrize("component", HEAD_COMPONENTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_hpos_locations_as_pyvene_lists(models, inputs, family, component):
    model, (base, source) = models[family], inputs
    layer = 1
    spec = HAND[family](model, layer)[component]
    module, side, view = spec
    src_units = hand_gather(view(capture(model, module, side, source)), "h.pos", SRC_WHERE)
    want = hand_run(model, spec, base, "h.pos", BASE_WHERE, lambda b: src_units)
    rep = {"layer": layer, "component": component, "unit": "h.pos"}
    as_list = {"sources->base": ([[SRC_WHERE["heads"], SRC_WHERE["pos"]]],
                                 [[BASE_WHERE["heads"], BASE_WHERE["pos"]]])}
    as_tuple = {"sources->base": ((SRC_WHERE["heads"], SRC_WHERE["pos"]),
                                  (BASE_WHERE["heads"], BASE_WHERE["pos"]))}
    for locations in (as_list, as_tuple):
        _, out = pv.IntervenableModel(rep, model)(base, [source], locations)
        assert_matches(out_of(out), want, clean_run(model, base))


@pytest.mark.pyvene
def test_hpos_list_form_agrees_with_pyvene(inputs):
    """The form of pyvene's own head tutorials, ``[[[[h]] * b, [[p]] * b]]``, on GPT-2."""
    pyvene = pytest.importorskip("pyvene")
    from test_pyvene_oracle import model_for

    model = model_for("gpt2")
    base, source = inputs
    b = 2
    rep = {"layer": 1, "component": "head_attention_value_output", "unit": "h.pos"}
    locations = {"sources->base": ([[[[1]] * b, [[4]] * b]], [[[[1]] * b, [[4]] * b]])}
    with torch.no_grad():
        _, theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig([rep]), model)(
            copy.deepcopy(base), [copy.deepcopy(source)], copy.deepcopy(locations))
    _, ours = pv.IntervenableModel(rep, model)(base, [source], locations)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    assert float((theirs.logits - clean_run(model, base)).abs().max()) > 1e-3


def test_hpos_list_that_is_not_a_pair_is_refused(gpt2, inputs):
    base, source = inputs
    im = pv.IntervenableModel({"layer": 0, "component": "head_query_output", "unit": "h.pos"}, gpt2)
    with pytest.raises(pv.LocationError, match=r"\[heads, positions\]"):
        im(base, [source], {"sources->base": ([[[[1]], [[2]], [[3]]]], [[[[1]], [[2]], [[3]]]])})


# -- 3. subclasses that forward **kwargs --------------------------------------------------------

PUBLIC_BASES = [
    pv.Intervention, pv.TrainableIntervention, pv.SharedWeightsTrainableIntervention,
    pv.ConstantSourceIntervention, pv.SourcelessIntervention, pv.BasisAgnosticIntervention,
    pv.LocalistRepresentationIntervention, pv.DistributedRepresentationIntervention,
]


def user_class(base_class):
    """What a pyvene user writes: ``__init__(**kwargs)`` forwarding to the base, a parameter
    sized by ``self.embed_dim``, and ``forward`` mixing in the source when there is one."""

    def __init__(self, **kwargs):
        super(cls, self).__init__(**kwargs)
        self.scale = torch.nn.Parameter(torch.full((self.embed_dim,), 0.3))

    def forward(self, base, source=None, subspaces=None):
        return base * self.scale + (0.0 if source is None else 0.7 * source)

    cls = type(f"User{base_class.__name__}", (base_class,), {"__init__": __init__, "forward": forward})
    return cls


@pytest.mark.parametrize("base_class", PUBLIC_BASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("family", FAMILIES)
def test_kwargs_subclasses_of_every_base_class(models, inputs, family, base_class):
    model, (base, source) = models[family], inputs
    cls = user_class(base_class)
    rep = {"layer": 1, "component": "block_output", "intervention_type": cls, "low_rank_dimension": 2}
    im = pv.IntervenableModel(rep, model)
    takes_run = cls.source_kind == "interchange"
    if takes_run:
        _, out = im(base, [source], {"sources->base": 3})
        src = capture(model, block_of(model, family, 1), "output", source)[:, 3]
        want = edit_position(model, family, 1, base, 3, lambda x: x * 0.3 + 0.7 * src)
    else:
        _, out = im(base, unit_locations={"base": 3})
        want = edit_position(model, family, 1, base, 3, lambda x: x * 0.3)
    assert_matches(out_of(out), want, clean_run(model, base))
    assert len(im.get_trainable_parameters()) == (1 if cls.trainable else 0)


@pytest.mark.pyvene
def test_constant_source_subclass_agrees_with_pyvene(gpt2, inputs):
    """pyvene_101's ``MultInt``, written once against each library's base class."""
    pyvene = pytest.importorskip("pyvene")
    base, _ = inputs

    def mult_int(parent):
        class MultInt(parent):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)

            def forward(self, base, source=None, subspaces=None):
                return base * 0.3

        return MultInt

    rep = {"layer": 1, "component": "mlp_output"}
    with torch.no_grad():
        _, theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig(
            [rep], intervention_types=mult_int(pyvene.ConstantSourceIntervention)), gpt2)(
            copy.deepcopy(base), unit_locations={"base": 3})
    ours_config = pv.IntervenableConfig([rep], intervention_types=mult_int(pv.ConstantSourceIntervention))
    _, ours = pv.IntervenableModel(ours_config, gpt2)(base, unit_locations={"base": 3})
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-6, rtol=0)


# -- 4. keyword arguments pyvene programs pass --------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_use_fast_and_model_type_are_accepted(models, inputs, family):
    model, (base, source) = models[family], inputs
    config = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output", "intervention": pv.VanillaIntervention(use_fast=True)}],
        model_type=type(model),
    )
    assert config.model_type is type(model)
    assert config.to_dict()["model_type"] == str(type(model))
    _, out = pv.IntervenableModel(config, model, use_fast=True)(base, [source], {"sources->base": 2})
    src = capture(model, block_of(model, family, 0), "output", source)[:, 2]
    want = edit_position(model, family, 0, base, 2, lambda x: src)
    assert_matches(out_of(out), want, clean_run(model, base))


def test_model_type_survives_json():
    config = pv.IntervenableConfig([{"layer": 0}], model_type="gpt2")
    assert pv.IntervenableConfig.from_json(config.to_json()).model_type == "gpt2"


# -- 5. direct calls -----------------------------------------------------------------------------


def _direct_tensors():
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)


@pytest.mark.parametrize("name,hand", [
    ("VanillaIntervention", lambda b, s: s),
    ("AdditionIntervention", lambda b, s: b + s),
    ("SubtractionIntervention", lambda b, s: b - s),
    ("ZeroIntervention", lambda b, s: torch.zeros_like(b)),
])
def test_narrow_embed_dim_acts_on_the_leading_columns(name, hand):
    base, source = _direct_tensors()
    want = base.clone()
    want[..., :2] = hand(base[..., :2], source[..., :2])
    got = getattr(pv, name)(embed_dim=2)(base, source)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="embed_dim=8"):
        getattr(pv, name)(embed_dim=8)(base, source)


@pytest.mark.pyvene
def test_narrow_embed_dim_agrees_with_pyvene():
    pyvene = pytest.importorskip("pyvene")
    base, source = _direct_tensors()
    theirs = pyvene.VanillaIntervention(embed_dim=2)(base.clone(), source.clone())
    torch.testing.assert_close(pv.VanillaIntervention(embed_dim=2)(base, source), theirs, atol=0, rtol=0)


def test_collect_called_directly_returns_the_chosen_columns():
    base, _ = _direct_tensors()
    collect = pv.CollectIntervention(embed_dim=5)
    torch.testing.assert_close(collect(base, None, subspaces=[[1, 3], [1, 3]]), base[..., [1, 3]])
    torch.testing.assert_close(collect(base, None, subspaces=[4]), base[..., [4]])
    torch.testing.assert_close(collect(base, None), base)
    torch.testing.assert_close(pv.CollectIntervention(embed_dim=2)(base, None), base[..., :2])


@pytest.mark.pyvene
def test_collect_called_directly_agrees_with_pyvene():
    pyvene = pytest.importorskip("pyvene")
    base, _ = _direct_tensors()
    subspaces = [[1, 3], [1, 3]]
    theirs = pyvene.CollectIntervention(embed_dim=5)(base.clone(), None, subspaces=subspaces)
    torch.testing.assert_close(pv.CollectIntervention(embed_dim=5)(base, None, subspaces=subspaces), theirs)
