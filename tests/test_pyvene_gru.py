"""The built-in GRU is pyvene's: same config fields, module and parameter names, the same three
models (bare, classifier, language model) and components; time-step interventions agree with a
hand computation on plain hooks, and with pyvene 0.1.8 where pyvene is right.

pyvene 0.1.8 applies a time-step intervention at every step whatever the location says (its
``{"base": 3}`` zeroes all ten steps of the paper's snippet), so it is the oracle for
every-step interventions only; the hand computation judges step-selective ones.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import das_train as pv
from das_train.core.tables import GRU

H, STEPS = 8, 6
FIELDS = dict(h_dim=H, n_layer=2, vocab_size=11, include_emb=True, max_position_embeddings=16)
GRU_COMPONENTS = sorted(GRU.components)

# component -> (path inside the cell, hook side, columns of the hooked tensor)
CELL_PARTS = {
    "cell_input": ("", "input", slice(None)),
    "cell_output": ("", "output", slice(None)),
    "x2h_output": ("x2h", "output", slice(None)),
    "reset_x2h_output": ("x2h", "output", slice(0, H)),
    "update_h2h_output": ("h2h", "output", slice(H, 2 * H)),
    "new_h2h_output": ("h2h", "output", slice(2 * H, 3 * H)),
    "update_gate_output": ("update_act", "output", slice(None)),
    "new_gate_input": ("new_act", "input", slice(None)),
}


def _pyvene_gru():
    pytest.importorskip("pyvene")
    from pyvene.models.gru import modelings_gru

    return modelings_gru


def _pair(ours_class, theirs_name, **fields):
    """A pyvene GRU built with seed 0 and ours holding its weights (loaded, not re-drawn)."""
    theirs_module = _pyvene_gru()
    fields = {**FIELDS, **fields}
    torch.manual_seed(0)
    theirs = getattr(theirs_module, theirs_name)(theirs_module.GRUConfig(**fields)).eval()
    ours = ours_class(pv.GRUConfig(**fields)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def _embeds(seed, batch=1):
    return torch.rand(batch, STEPS, H, generator=torch.Generator().manual_seed(seed))


# -- config ---------------------------------------------------------------------------------


def test_config_fields_and_defaults_are_pyveness():
    theirs = _pyvene_gru().GRUConfig()
    ours = pv.GRUConfig()
    pyvene_fields = ("include_emb", "vocab_size", "max_position_embeddings", "n_layer", "h_dim",
                     "n_labels", "include_bias", "pdrop", "problem_type", "initializer_range")
    assert {f: getattr(ours, f) for f in pyvene_fields} == {f: getattr(theirs, f) for f in pyvene_fields}
    assert set(pyvene_fields) <= {f.name for f in dataclasses.fields(pv.GRUConfig)}


def test_num_classes_is_another_name_for_n_labels():
    assert pv.GRUConfig(num_classes=3).n_labels == 3
    assert pv.GRUConfig(n_labels=4).num_classes == 4
    assert pv.GRUConfig(n_labels=5, num_classes=5).n_labels == 5
    with pytest.raises(ValueError, match="n_labels=3 and num_classes=4 name the same field"):
        pv.GRUConfig(n_labels=3, num_classes=4)


def test_bad_problem_type_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"problem_type='ranking'; allowed: .*single_label_classification"):
        pv.GRUConfig(problem_type="ranking")


# -- the models: pyvene's weights load and give pyvene's outputs ------------------------------------


@pytest.mark.parametrize("ours_class, theirs_name", [
    (pv.GRUModel, "GRUModel"),
    (pv.GRUClassifier, "GRUForClassification"),
    (pv.GRULMHeadModel, "GRULMHeadModel"),
])
def test_pyvene_weights_load_and_outputs_agree(ours_class, theirs_name):
    ours, theirs = _pair(ours_class, theirs_name)
    torch.manual_seed(0)
    fresh = ours_class(pv.GRUConfig(**FIELDS))
    # the same initialisation, drawn in the same order: the same seed gives the same weights
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, atol=0, rtol=0)
    ids = torch.randint(0, 11, (3, STEPS), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(STEPS).repeat(3, 1)
    with torch.no_grad():
        for inputs in ({"input_ids": ids}, {"input_ids": ids, "position_ids": positions}):
            expected = theirs(**inputs)  # pyvene's default output is a tuple
            got = ours(**inputs)
            for i in range(len(expected)):
                torch.testing.assert_close(got[i], expected[i], atol=1e-6, rtol=0)
            assert isinstance(ours(**inputs, return_dict=False), tuple)


def test_classifier_pools_at_the_mask_end_and_losses_agree():
    ours, theirs = _pair(pv.GRUClassifier, "GRUForClassification")
    embeds = _embeds(2, batch=3)
    mask = torch.tensor([[1] * STEPS, [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    labels = torch.tensor([0, 1, 1])
    theirs.num_labels = theirs.n_labels  # pyvene's loss reads num_labels, which it never sets
    with torch.no_grad():
        loss, logits, _ = theirs(inputs_embeds=embeds.clone(), attention_mask=mask, labels=labels)
        out = ours(inputs_embeds=embeds, attention_mask=mask, labels=labels)
        by_hand = ours.score(out.hidden_states[torch.arange(3), torch.tensor([5, 2, 1])])
    torch.testing.assert_close(out.logits, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.logits, by_hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)


def test_lm_loss_is_the_shifted_next_token_loss():
    ours, theirs = _pair(pv.GRULMHeadModel, "GRULMHeadModel")
    ids = torch.randint(0, 11, (2, STEPS), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss, _, _ = theirs(input_ids=ids, labels=ids)
        out = ours(input_ids=ids, labels=ids)
    torch.testing.assert_close(out.loss, loss, atol=1e-6, rtol=0)
    by_hand = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, by_hand, atol=1e-6, rtol=0)


def test_create_helpers_take_pyvenes_arguments():
    config = pv.GRUConfig(h_dim=H, n_layer=1, vocab_size=13)
    for create, model_class in ((pv.create_gru, pv.GRUModel), (pv.create_gru_lm, pv.GRULMHeadModel),
                                (pv.create_gru_classifier, pv.GRUClassifier)):
        got_config, tokenizer, model = create(config=config, tokenizer_name=None, cache_dir=None)
        assert got_config is config and tokenizer is None and type(model) is model_class
    assert pv.create_gru_lm(config=config)[2].lm_head.out_features == 13


def test_ids_without_embeddings_are_refused():
    _, _, gru = pv.create_gru(config=pv.GRUConfig(h_dim=H))
    with pytest.raises(ValueError, match="input_ids with include_emb=True"):
        gru(input_ids=torch.zeros(1, 3, dtype=torch.long))


# -- interventions --------------------------------------------------------------------------------


@pytest.mark.parametrize("component", GRU_COMPONENTS)
def test_every_component_agrees_with_pyvene_at_every_step(component):
    """pyvene zeroes at every step (its location is not honoured); ours with no location too."""
    pyvene = pytest.importorskip("pyvene")
    ours, theirs = _pair(pv.GRUClassifier, "GRUForClassification", include_emb=False)
    base = _embeds(4)
    for layer in (0, 1):
        config = {"layer": layer, "component": component, "unit": "t"}
        with torch.no_grad():
            _, expected = pyvene.IntervenableModel(
                {**config, "intervention_type": pyvene.ZeroIntervention}, theirs
            )({"inputs_embeds": base.clone()}, unit_locations={"base": 3})
            _, got = pv.IntervenableModel(
                {**config, "intervention_type": pv.ZeroIntervention}, ours)({"inputs_embeds": base})
            plain = ours(inputs_embeds=base).logits
        torch.testing.assert_close(got.logits, expected[0], atol=1e-6, rtol=0)
        assert (got.logits - plain).abs().max() > 1e-5, f"{component} at layer {layer} changed nothing"


def _interchange_by_hand(model, layer, component, base, source, src_step, base_step):
    """Plain hooks: record the part at the source's step, write it at the base's step."""
    path, side, columns = CELL_PARTS[component]
    cell = model.gru.cells[layer]
    module = cell.get_submodule(path) if path else cell
    seen, calls = {}, [0]

    def tensor_of(args, output):
        return args[0] if side == "input" else output

    def record(module, args, output=None):
        if calls[0] == src_step:
            seen["value"] = tensor_of(args, output)[:, columns].clone()
        calls[0] += 1

    def write(module, args, output=None):
        step, calls[0] = calls[0], calls[0] + 1
        if step != base_step:
            return None
        edited = tensor_of(args, output).clone()
        edited[:, columns] = seen["value"]
        return (edited, *args[1:]) if side == "input" else edited

    register = module.register_forward_pre_hook if side == "input" else module.register_forward_hook
    with torch.no_grad():
        handle = register(record)
        model(inputs_embeds=source)
        handle.remove()
        calls[0] = 0
        handle = register(write)
        out = model(inputs_embeds=base).logits
        handle.remove()
    return out


@pytest.mark.parametrize("component", sorted(CELL_PARTS))
def test_time_step_interchange_matches_hand_hooks(component):
    """Source step 4 into base step 2, a batch of three, both layers of a two-layer GRU
    (cell_input at layer 1 is layer 0's state: writing it in place would corrupt layer 0)."""
    _, _, model = pv.create_gru_classifier(pv.GRUConfig(h_dim=H, n_layer=2), seed=0)
    model.eval()
    base, source = _embeds(5, batch=3), _embeds(6, batch=3)
    for layer in (0, 1):
        im = pv.IntervenableModel({"layer": layer, "component": component, "unit": "t"}, model)
        with torch.no_grad():
            _, got = im({"inputs_embeds": base}, [{"inputs_embeds": source}],
                        {"sources->base": ([[[4]] * 3], [[[2]] * 3])})
        expected = _interchange_by_hand(model, layer, component, base, source, 4, 2)
        torch.testing.assert_close(got.logits, expected, atol=1e-6, rtol=0)
        assert (expected - model(inputs_embeds=base).logits).abs().max() > 1e-6


def test_lm_time_step_on_a_gate_part_matches_hand_hooks():
    """The language model's table is the same (pyvene's drops the reset/update/new split for
    its LM, interchanging all of x2h; ours keeps the third)."""
    _, _, lm = pv.create_gru_lm(config=pv.GRUConfig(h_dim=H, n_layer=2, vocab_size=11), seed=0)
    base, source = _embeds(7, batch=2), _embeds(8, batch=2)
    im = pv.IntervenableModel({"layer": 1, "component": "reset_x2h_output", "unit": "t"}, lm)
    with torch.no_grad():
        _, got = im({"inputs_embeds": base}, [{"inputs_embeds": source}], {"sources->base": (3, 1)})
    expected = _interchange_by_hand(lm, 1, "reset_x2h_output", base, source, 3, 1)
    torch.testing.assert_close(got.logits, expected, atol=1e-6, rtol=0)


def test_gru_components_need_unit_t():
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=H, n_layer=1))
    with pytest.raises(ValueError, match="'x2h_output' is indexed by time: unit must be 't'"):
        pv.IntervenableModel({"component": "x2h_output", "unit": "pos"}, gru)
    with pytest.raises(ValueError, match="'reset_x2h_out' is not in the das_gru table; allowed: .*reset_x2h_output"):
        pv.IntervenableModel({"component": "reset_x2h_out", "unit": "t"}, gru)
