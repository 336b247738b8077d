"""Cases from pyvene 0.1.8's own test suite that das_train failed, each reduced to one check.

scripts/pyvene_suite.py runs pyvene's suite against das_train; every failure it found that was a
das_train fault (not an expected difference) has its regression test here, on a tiny model.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2Model

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


# -- InterventionUtilsTestCase: direct calls with pyvene's per-unit subspace lists -------------
# pyvene calls interventions on a (batch=2, units=3, width=6) tensor with one subspace list per
# unit (three lists for two examples). The judge is a loop over examples and units.

PER_UNIT = [[1, 0], [0, 1], [1, 2]]
PARTITION = [[0, 2], [2, 4], [4, 6]]


def _hand_interchange(base, source, dims_per_unit):
    """Loops: out[b, u, d] = source[b, u, d] for d in dims_per_unit[u], else base."""
    out = base.clone()
    source = source.expand_as(base)
    for b in range(base.shape[0]):
        for u, dims in enumerate(dims_per_unit):
            for d in dims:
                out[b, u, d] = source[b, u, d]
    return out


def _partition_dims(rows):
    return [[d for p in row for d in range(*PARTITION[p])] for row in rows]


def test_per_unit_subspaces_interchange_each_unit_on_its_own_dims():
    base, source = torch.arange(36).view(2, 3, 6), torch.arange(36, 72).view(2, 3, 6)
    out = pv.VanillaIntervention()(base, source, subspaces=PER_UNIT)
    assert torch.equal(out, _hand_interchange(base, source, PER_UNIT))
    assert out[0, 2].tolist() == [12, 49, 50, 15, 16, 17]  # unit 2: dims 1, 2 from the source


def test_per_unit_subspaces_through_a_partition_and_a_broadcast_source():
    base, source = torch.arange(36).view(2, 3, 6), torch.arange(36, 42)
    out = pv.VanillaIntervention(subspace_partition=PARTITION)(base, source, subspaces=PER_UNIT)
    assert torch.equal(out, _hand_interchange(base, source, _partition_dims(PER_UNIT)))


def test_use_fast_applies_only_the_first_subspace_list_and_warns():
    base, source = torch.arange(36).view(2, 3, 6), torch.arange(36, 42)
    fast = pv.VanillaIntervention(subspace_partition=PARTITION, use_fast=True)
    with pytest.warns(UserWarning, match="only the first"):
        out = fast(base, source, subspaces=PER_UNIT)
    first = _partition_dims(PER_UNIT[:1]) * 3
    assert torch.equal(out, _hand_interchange(base, source, first))


def test_as_many_lists_as_examples_stay_per_example_even_when_units_match():
    """batch == units: the rows are examples, the form IntervenableModel hands over."""
    base, source = torch.arange(54).view(3, 3, 6), torch.arange(54, 108).view(3, 3, 6)
    out = pv.VanillaIntervention()(base, source, subspaces=PER_UNIT)
    hand = base.clone()
    for b, dims in enumerate(PER_UNIT):
        hand[b, :, dims] = source[b, :, dims]
    assert torch.equal(out, hand)


def test_collect_per_unit_returns_the_named_columns_in_order():
    base = torch.arange(36).view(2, 3, 6)
    out = pv.CollectIntervention(subspace_partition=PARTITION)(base, None, subspaces=PER_UNIT)
    dims = _partition_dims(PER_UNIT)
    hand = torch.stack([torch.stack([base[b, u, dims[u]] for u in range(3)]) for b in range(2)])
    assert torch.equal(out, hand)
    assert out[0, 0].tolist() == [2, 3, 0, 1]


def test_collect_per_example_lists_of_equal_length():
    base = torch.arange(24).view(2, 2, 6)
    out = pv.CollectIntervention()(base, None, subspaces=[[5, 0], [1, 2]])
    assert torch.equal(out, torch.stack([base[0][:, [5, 0]], base[1][:, [1, 2]]]))
    with pytest.raises(ValueError, match="rectangular"):
        pv.CollectIntervention()(base, None, subspaces=[[5, 0], [1]])


def test_collect_with_a_source_is_refused_as_pyvene_asserts():
    base = torch.arange(36).view(2, 3, 6)
    collect = pv.CollectIntervention(subspace_partition=PARTITION)
    for caught in (AssertionError, ValueError):
        with pytest.raises(caught, match="takes no source"):
            collect(base, torch.arange(6), subspaces=PER_UNIT)


# -- pyvene_101 tutorial cells ---------------------------------------------------------------


def _tiny_gpt2(attn: str = "eager"):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=16, vocab_size=50, n_positions=32)
    return GPT2Model._from_config(config, attn_implementation=attn).eval()


def _attention_probs_by_hand(model, ids, layer):
    """The attention probabilities of ``layer``, recomputed from a plain hook on its input."""
    seen = {}
    attn = model.h[layer].attn
    handle = attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(x=args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True,
    )
    try:
        model(ids)
    finally:
        handle.remove()
    q, k, _ = attn.c_attn(seen["x"]).split(16, dim=-1)
    q, k = (t.view(1, -1, 4, 4).transpose(1, 2) for t in (q, k))
    scores = q @ k.transpose(-1, -2) / 2.0  # sqrt(head_dim = 4)
    seq = ids.shape[1]
    scores = scores.masked_fill(~torch.ones(seq, seq, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1)


def test_attention_weight_collects_chosen_heads_as_pyvene():
    """pyvene_101 cell 2: unit_locations index dim 1 of (batch, heads, q, k), the heads."""
    model = _tiny_gpt2()
    ids = torch.randint(0, 50, (1, 7))
    pv_model = pv.IntervenableModel(
        {"layer": 1, "component": "attention_weight", "intervention_type": pv.CollectIntervention},
        model=model,
    )
    expected = _attention_probs_by_hand(model, ids, 1)
    every = pv_model(base={"input_ids": ids}, unit_locations={"base": [0, 1, 2, 3]})[0][-1][0]
    assert every.shape == (1, 4, 7, 7)
    torch.testing.assert_close(every, expected)
    chosen = pv_model(base={"input_ids": ids}, unit_locations={"base": [2, 0]})[0][-1][0]
    torch.testing.assert_close(chosen, expected[:, [2, 0]])


def test_attention_weight_refuses_sdpa_and_writes():
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        pv.IntervenableModel(
            {
                "layer": 1,
                "component": "attention_weight",
                "intervention_type": pv.CollectIntervention,
            },
            model=_tiny_gpt2("sdpa"),
        )
    with pytest.raises(ValueError, match="can only be collected"):
        pv.IntervenableModel(
            {
                "layer": 1,
                "component": "attention_weight",
                "intervention_type": pv.VanillaIntervention,
            },
            model=_tiny_gpt2(),
        )


def test_module_never_called_raises_instead_of_collecting_nothing():
    """pyvene_101 cells 3 and 50: transformers 5 applies GPT-2's attention dropout as a function,
    so a hook on ``attn.attn_dropout`` never runs; an empty result would be a silent skip."""
    pv_model = pv.IntervenableModel(
        {"component": "h[1].attn.attn_dropout.input", "intervention": pv.CollectIntervention()},
        model=_tiny_gpt2(),
    )
    with pytest.raises(RuntimeError, match="never called.*attn_dropout"):
        pv_model(base={"input_ids": torch.randint(0, 50, (1, 7))}, unit_locations={"base": [0, 1]})


class _GhostLoRA(pv.ConstantSourceIntervention):
    """pyvene_101 cell 52's adaptor: adds a rank-1 map of the module's input."""

    def __init__(self, **kwargs):
        super().__init__(keep_last_dim=True)
        self.W_A = torch.rand(16, 1)
        self.W_B = torch.rand(1, 16)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base + kwargs["args"] @ self.W_A @ self.W_B


def test_as_adaptor_hands_the_module_input():
    model = _tiny_gpt2()
    ids = torch.randint(0, 50, (2, 7))
    ghost = _GhostLoRA()
    pv_model = pv.IntervenableModel(
        {"component": "h[1].attn.c_proj.output", "intervention": ghost},
        model=model,
        as_adaptor=True,
    )
    out = pv_model(base={"input_ids": ids}, unit_locations=None)[1].last_hidden_state
    handle = model.h[1].attn.c_proj.register_forward_hook(
        lambda mod, args, o: o + args[0] @ ghost.W_A @ ghost.W_B
    )
    try:
        expected = model(ids).last_hidden_state
    finally:
        handle.remove()
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, model(ids).last_hidden_state)


def test_as_adaptor_refuses_an_intervention_without_args():
    with pytest.raises(ValueError, match="VanillaIntervention.forward accepts neither 'args'"):
        pv.IntervenableModel(
            {"layer": 0, "component": "block_output", "intervention_type": pv.VanillaIntervention},
            model=_tiny_gpt2(),
            as_adaptor=True,
        )


def test_function_returning_none_sees_the_base_and_changes_nothing():
    """pyvene_101 cell 4: ``def pv_patcher(b, s): cached["w"] = b`` returns None; pyvene then
    leaves the module's output as it was. The function must still run (no silent skip) and see
    the base units a plain hook sees."""
    model = _tiny_gpt2()
    ids = torch.randint(0, 50, (2, 7))
    seen = {}
    handle = model.h[1].mlp.register_forward_hook(
        lambda mod, args, out: seen.update(hand=out.clone())
    )
    try:
        expected = model(ids).last_hidden_state
    finally:
        handle.remove()
    pv_model = pv.IntervenableModel(
        {"component": "h[1].mlp.output", "intervention": lambda b, s: seen.update(fn=b.clone())},
        model=model,
    )
    out = pv_model(base={"input_ids": ids})[1].last_hidden_state
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(seen["fn"], seen["hand"])


class _ReturnsNothing(pv.ConstantSourceIntervention):
    def forward(self, base, source=None, subspaces=None):
        return None


def test_intervention_class_returning_none_is_an_error():
    """Only a plain function may return None; a class that does is a bug, named as such."""
    pv_model = pv.IntervenableModel(
        {"layer": 1, "component": "mlp_output", "intervention": _ReturnsNothing()},
        model=_tiny_gpt2(),
    )
    with pytest.raises(ValueError, match="_ReturnsNothing.forward returned None"):
        pv_model(base={"input_ids": torch.randint(0, 50, (2, 7))}, unit_locations={"base": 0})
