"""Hook lifetime (nothing left behind, the user's hooks untouched) and the cost rule."""

from __future__ import annotations

import pytest
import torch
from conftest import capture, hook_count, patched_run

import das_train as pv


def test_no_hook_left_after_call_or_exception(gpt2, base_source):
    base, source = base_source
    before = hook_count(gpt2)
    im = pv.IntervenableModel(
        [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "mlp_output"}], gpt2
    )
    im(base, [source, source], {"sources->base": 2})
    assert hook_count(gpt2) == before

    def explode(base_units, source_units):
        raise RuntimeError("boom")

    failing = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": explode}, gpt2)
    with pytest.raises(RuntimeError, match="boom"):
        failing(base, [source], {"sources->base": 2})
    assert hook_count(gpt2) == before


def test_user_hooks_survive_and_still_fire(gpt2, base_source):
    base, source = base_source
    seen = []
    handle = gpt2.transformer.h[0].register_forward_hook(lambda m, a, o: seen.append(1))
    try:
        im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
        im(base, [source], {"sources->base": 2})
        assert gpt2.transformer.h[0]._forward_hooks, "the user's hook was removed"
        assert len(seen) == 2  # the source run and the base run
        gpt2(**base)
        assert len(seen) == 3
    finally:
        handle.remove()


class CallCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


@pytest.mark.parametrize("k", [1, 6, 12])
def test_k_sites_sharing_one_source_cost_one_source_forward(gpt2, base_source, k):
    """pyvene 0.1.8 ran k+1 forwards here; the rule is one per distinct source plus the base."""
    base, source = base_source
    reps = [{"layer": i % 2, "component": comp} for i, comp in zip(range(k), ["block_output", "mlp_output", "attention_output"] * 4)]
    im = pv.IntervenableModel(reps, gpt2)
    top = CallCounter(gpt2)
    try:
        im(base, [source] * k, {"sources->base": 3})  # the same object k times
        assert top.calls == 2
        top.calls = 0
        copies = [{"input_ids": source["input_ids"].clone()} for _ in range(k)]  # equal copies
        im(base, copies, {"sources->base": 3})
        assert top.calls == 2
    finally:
        top.handle.remove()


def test_source_run_stops_after_the_last_getter(gpt2, base_source):
    """A source run only needs the layers up to the deepest site it reads."""
    base, source = base_source
    last_block = CallCounter(gpt2.transformer.h[1])
    try:
        im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, gpt2)
        im(base, [source], {"sources->base": 3})
        assert last_block.calls == 1  # the base run only
    finally:
        last_block.handle.remove()


def test_distinct_sources_each_run_once(gpt2, base_source):
    base, source = base_source
    other = {"input_ids": source["input_ids"].flip(1)}
    im = pv.IntervenableModel([{"layer": 0}, {"layer": 1}, {"layer": 1, "component": "mlp_output"}], gpt2)
    top = CallCounter(gpt2)
    try:
        im(base, [source, other, source], {"sources->base": 1})
        assert top.calls == 3  # two distinct sources and the base
    finally:
        top.handle.remove()


def test_state_dict_holds_only_interventions(gpt2):
    im = pv.IntervenableModel({"layer": 0, "intervention_type": pv.AdditionIntervention,
                               "source_representation": torch.ones(16)}, gpt2)
    keys = list(im.state_dict())
    assert keys == ["interventions.layer_0_comp_block_output_unit_pos_nunit_1#0.source_representation"]
    assert im.count_parameters() == 0
    assert im.count_parameters(include_model=True) == sum(p.numel() for p in gpt2.parameters())


def test_gradients_off_by_default_and_iit_switch(gpt2, base_source):
    base, source = base_source
    im = pv.IntervenableModel({"layer": 0}, gpt2)
    assert not any(p.requires_grad for p in gpt2.parameters())
    assert im.get_trainable_parameters() == []
    im.enable_model_gradients()
    try:
        _, out = im(base, [source], {"sources->base": 1})
        out.logits.sum().backward()
        assert gpt2.transformer.h[1].mlp.c_fc.weight.grad is not None
        assert len(im.get_trainable_parameters()) == len(list(gpt2.parameters()))
    finally:
        im.disable_model_gradients()
        gpt2.zero_grad(set_to_none=True)


def test_train_and_eval_reach_the_model(gpt2):
    im = pv.IntervenableModel({"layer": 0}, gpt2)
    im.train()
    assert gpt2.training and im.interventions.training
    im.eval()
    assert not gpt2.training and not im.interventions.training


def test_interventions_never_touch_the_callers_tensors(family):
    """Llama's block 0 reads ``inputs_embeds`` itself: an in-place write would leak into it."""
    _, model = family
    embeds = torch.randn(2, 5, 16)
    kept = embeds.clone()
    im = pv.IntervenableModel({"layer": 0, "component": "block_input", "intervention_type": pv.ZeroIntervention}, model)
    _, out = im({"inputs_embeds": embeds}, unit_locations={"base": 2})
    assert torch.equal(embeds, kept)
    assert not torch.allclose(out.logits, model(inputs_embeds=embeds).logits)


def test_gru_inputs_are_not_modified():
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=8), seed=0)
    embeds = torch.rand(2, 5, 8)
    kept = embeds.clone()
    im = pv.IntervenableModel({"component": "cell_input", "unit": "t", "intervention_type": pv.ZeroIntervention}, gru)
    _, out = im({"inputs_embeds": embeds}, unit_locations={"base": 2})
    assert torch.equal(embeds, kept)
    assert not torch.allclose(out.logits, gru(inputs_embeds=embeds).logits)


def test_same_site_twice_in_one_call(gpt2, base_source):
    """Two interventions on one module from two sources apply in order."""
    base, source = base_source
    other = {"input_ids": source["input_ids"].flip(1)}
    module = gpt2.transformer.h[0]
    im = pv.IntervenableModel([{"layer": 0}, {"layer": 0}], gpt2)
    _, out = im(base, [source, other], {"sources->base": ([[[1]], [[4]]], [[[1]], [[4]]])})
    s1, s2 = capture(gpt2, module, "output", source), capture(gpt2, module, "output", other)

    def edit(x):
        x[:, 1] = s1[:, 1]
        x[:, 4] = s2[:, 4]
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
