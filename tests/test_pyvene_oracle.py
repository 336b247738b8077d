"""pyvene 0.1.8 as a second oracle: the same calls on the same model instance, atol 1e-5.

Both libraries wrap one tiny model built from a config (initializer_range=0.2, so that every
component, queries and keys included, moves the logits well above the tolerance). Each call
builds fresh IntervenableModels, since pyvene keeps state across calls (its location "fast
path" sticks) and extends the `sources` list it is given in place; each library gets its own
deep copy of the call.

Where pyvene 0.1.8 is wrong, the test says why and asserts against a plain-hook computation
instead:

- a two-element flat list ``{"base": [1, 3]}`` is read by pyvene as a (source, base) pair, so
  only position 3 is touched;
- per-example subspaces that differ between examples are mixed across the batch;
- a collect over several positions per example returns the first position's vector cut into
  pieces (shape (batch, units, width / units));
- GPT-NeoX's query/key/value components are missing from its table (the fused projection is
  laid out per head, (heads, 3, head_dim));
- grouped-query attention: Llama's key/value widths are sized as hidden_size, not
  num_key_value_heads * head_dim. A positional swap hides that (pyvene slices ``[..., :16]``
  of an 8-wide tensor), so those components are left out here; test_pyvene_regressions.py
  checks them by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from conftest import capture, patched_run

import das_train as pv

pytestmark = pytest.mark.pyvene
pyvene = pytest.importorskip("pyvene")

VOCAB = 64
ATOL = 1e-5


def _build(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=2, n_embd=16, n_head=4, n_positions=32,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common))
    elif kind == "gpt_neox":
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32,
            max_position_embeddings=32, **common))
    else:  # grouped-query attention: 4 query heads share 2 key/value heads
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=32, max_position_embeddings=32, pad_token_id=0, **common))
    return model.eval()


_MODELS: dict[str, torch.nn.Module] = {}


def model_for(kind: str):
    if kind not in _MODELS:
        _MODELS[kind] = _build(kind)
    return _MODELS[kind]


def _ids(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, VOCAB, (2, 6), generator=g)}


BASE, SRC, SRC2 = _ids(1), _ids(2), _ids(3)
PER_EXAMPLE = {"sources->base": ([[[1], [4]]], [[[2], [5]]])}
MULTI_UNIT = {"sources->base": ([[[1, 3], [4, 0]]], [[[2, 5], [5, 1]]])}


def run_both(model, make_config, **call):
    """The same call through das_train and pyvene, each with fresh objects."""
    with torch.no_grad():
        ours = pv.IntervenableModel(make_config(pv), model)(**copy.deepcopy(call))
        theirs = pyvene.IntervenableModel(make_config(pyvene), model)(**copy.deepcopy(call))
    return ours, theirs


def plain_logits(model, inputs=BASE):
    with torch.no_grad():
        return model(**inputs).logits


def assert_agree(model, make_config, min_effect=1e-2, **call):
    ours, theirs = run_both(model, make_config, **call)
    torch.testing.assert_close(ours[1].logits, theirs[1].logits, atol=ATOL, rtol=0)
    effect = (ours[1].logits - plain_logits(model, call["base"])).abs().max().item()
    assert effect > min_effect, f"the intervention barely moved the logits ({effect:.1e})"
    return ours, theirs


def one(component, intervention="VanillaIntervention", layer=1, **extra):
    """A config factory: the same dict for both libraries, with each one's class."""
    return lambda lib: {"layer": layer, "component": component,
                        "intervention_type": getattr(lib, intervention), **extra}


# -- GPT-2: every component --------------------------------------------------------------------

GPT2_COMPONENTS = [
    "block_input", "block_output", "mlp_input", "mlp_output", "mlp_activation",
    "attention_input", "attention_output", "attention_value_output",
    "query_output", "key_output", "value_output",
]
HEAD_COMPONENTS = [
    "head_attention_value_output", "head_query_output", "head_key_output", "head_value_output",
]


@pytest.mark.parametrize("component", GPT2_COMPONENTS)
def test_gpt2_component_per_example_positions(component):
    model = model_for("gpt2")
    for locations in (PER_EXAMPLE, MULTI_UNIT, {"sources->base": 3}):
        assert_agree(model, one(component, layer=0), base=BASE, sources=[SRC],
                     unit_locations=locations)


@pytest.mark.parametrize("component", HEAD_COMPONENTS)
def test_gpt2_head_components(component):
    model = model_for("gpt2")
    # unit h.pos: per intervention a pair ([batch][heads], [batch][positions])
    side = [([[1], [0]], [[3], [2]])]
    assert_agree(model, one(component, unit="h.pos"), base=BASE, sources=[SRC],
                 unit_locations={"sources->base": (side, side)})
    # several heads and positions, different on the two sides
    src_side = [([[1, 2], [0, 3]], [[3, 1], [2, 5]])]
    base_side = [([[0, 2], [1, 3]], [[4, 1], [2, 0]])]
    assert_agree(model, one(component, unit="h.pos"), base=BASE, sources=[SRC],
                 unit_locations={"sources->base": (src_side, base_side)})
    # unit h: whole heads at every position
    assert_agree(model, one(component, unit="h"), base=BASE, sources=[SRC],
                 unit_locations={"sources->base": ([[[1], [2]]], [[[1], [3]]])})


# -- intervention types, positions, subspaces --------------------------------------------------


@pytest.mark.parametrize(
    "intervention", ["VanillaIntervention", "AdditionIntervention", "SubtractionIntervention"]
)
def test_source_interventions(intervention):
    model = model_for("gpt2")
    config = one("mlp_output", intervention)
    assert_agree(model, config, base=BASE, sources=[SRC], unit_locations=PER_EXAMPLE)
    assert_agree(model, config, base=BASE, sources=[SRC], unit_locations=MULTI_UNIT)
    # a constant source at an int location
    vec = torch.linspace(-2, 2, 16)
    assert_agree(model, config, base=BASE, unit_locations={"base": 3},
                 source_representations=vec)
    assert_agree(model, config, base=BASE, unit_locations={"base": [0, 2, 4]},
                 source_representations=vec)
    # subspaces: a flat list, and the same per-example lists
    assert_agree(model, config, base=BASE, sources=[SRC], unit_locations=PER_EXAMPLE,
                 subspaces=[1, 3, 5])
    assert_agree(model, config, base=BASE, sources=[SRC], unit_locations=PER_EXAMPLE,
                 subspaces=[[[1, 3, 5], [1, 3, 5]]])
    # no locations: whole activations
    assert_agree(model, one("block_output", intervention, layer=0), base=BASE, sources=[SRC])


def test_zero_intervention():
    model = model_for("gpt2")
    config = one("mlp_output", "ZeroIntervention")
    assert_agree(model, config, base=BASE, unit_locations={"base": 3})
    assert_agree(model, config, base=BASE, unit_locations={"base": 3}, subspaces=[2, 7])
    assert_agree(model, config, base=BASE,
                 unit_locations={"sources->base": (None, [[[2], [5]]])})


def test_collect_intervention():
    model = model_for("gpt2")
    config = one("mlp_output", "CollectIntervention")
    hidden = capture(model, model.transformer.h[1].mlp, "output", BASE)
    for call, expected in (
        ({"unit_locations": {"base": 3}}, hidden[:, [3]]),
        ({"unit_locations": {"base": 3}, "subspaces": [2, 7]}, hidden[:, [3]][..., [2, 7]]),
        ({"unit_locations": {"sources->base": (None, [[[2], [5]]])}},
         torch.stack([hidden[0, [2]], hidden[1, [5]]])),
    ):
        ours, theirs = run_both(model, config, base=BASE, **call)
        (_, ours_acts), (_, their_acts) = ours[0], theirs[0]
        assert len(ours_acts) == len(their_acts) == 1
        torch.testing.assert_close(ours_acts[0], their_acts[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(ours_acts[0], expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(ours[1].logits, plain_logits(model), atol=0, rtol=0)


def test_original_output_is_the_plain_run():
    model = model_for("gpt2")
    ours, theirs = run_both(model, one("block_output", layer=0), base=BASE, sources=[SRC],
                            unit_locations=PER_EXAMPLE, output_original_output=True)
    torch.testing.assert_close(ours[0].logits, theirs[0].logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[0].logits, plain_logits(model), atol=0, rtol=0)


# -- where pyvene 0.1.8 is wrong: plain hooks decide -------------------------------------------


def test_two_position_base_list_pyvene_reads_as_a_pair():
    """pyvene reads ``{"base": [1, 3]}`` as the pair (source 1, base 3) and touches only
    position 3; a base-only key has no source side, so both positions are meant."""
    model = model_for("gpt2")
    vec = torch.linspace(-2, 2, 16)
    ours, theirs = run_both(model, one("mlp_output"), base=BASE,
                            unit_locations={"base": [1, 3]}, source_representations=vec)

    def edit(x):
        x[:, [1, 3]] = vec
        return x

    expected = patched_run(model, model.transformer.h[1].mlp, "output", BASE, edit).logits
    torch.testing.assert_close(ours[1].logits, expected, atol=ATOL, rtol=0)
    assert (theirs[1].logits - expected).abs().max() > 1e-2  # pyvene: position 3 only


def test_per_example_subspaces_pyvene_mixes_examples():
    model = model_for("gpt2")
    subspaces = [[[1, 3, 5], [0, 2, 4]]]  # [intervention][example][dims]
    ours, theirs = run_both(model, one("mlp_output"), base=BASE, sources=[SRC],
                            unit_locations=PER_EXAMPLE, subspaces=subspaces)
    mlp = model.transformer.h[1].mlp
    src = capture(model, mlp, "output", SRC)

    def edit(x):
        x[0, 2, [1, 3, 5]] = src[0, 1, [1, 3, 5]]
        x[1, 5, [0, 2, 4]] = src[1, 4, [0, 2, 4]]
        return x

    expected = patched_run(model, mlp, "output", BASE, edit).logits
    torch.testing.assert_close(ours[1].logits, expected, atol=ATOL, rtol=0)
    assert (theirs[1].logits - expected).abs().max() > 1e-2  # pyvene: wrong dims swapped


def test_collect_several_positions_pyvene_cuts_the_first():
    model = model_for("gpt2")
    locations = {"sources->base": (None, [[[2, 3], [5, 0]]])}
    ours, theirs = run_both(model, one("mlp_output", "CollectIntervention"), base=BASE,
                            unit_locations=locations)
    hidden = capture(model, model.transformer.h[1].mlp, "output", BASE)
    expected = torch.stack([hidden[0, [2, 3]], hidden[1, [5, 0]]])  # (batch, units, width)
    torch.testing.assert_close(ours[0][1][0], expected, atol=ATOL, rtol=0)
    assert theirs[0][1][0].shape == (2, 2, 8)  # pyvene: position 2's vector in two halves


@pytest.mark.parametrize("which", [0, 1, 2])
def test_neox_fused_qkv_by_hand(which):
    """pyvene 0.1.8 has no query/key/value rows for GPT-NeoX. Its fused projection's output
    is laid out (heads, 3, head_dim): head h's query is columns [12h, 12h + 4)."""
    model = model_for("gpt_neox")
    component = ["query_output", "key_output", "value_output"][which]
    im = pv.IntervenableModel({"layer": 1, "component": component}, model)
    with torch.no_grad():
        _, ours = im(BASE, [SRC], PER_EXAMPLE)
        _, ours_head = pv.IntervenableModel(
            {"layer": 1, "component": "head_" + component, "unit": "h.pos"}, model
        )(BASE, [SRC], {"sources->base": ([([[1], [0]], [[1], [4]])], [([[1], [0]], [[2], [5]])])})
    qkv = model.gpt_neox.layers[1].attention.query_key_value
    src = capture(model, qkv, "output", SRC)
    cols = torch.cat([torch.arange(12 * h + 4 * which, 12 * h + 4 * which + 4) for h in range(4)])

    def edit(x):
        x[0, 2, cols] = src[0, 1, cols]
        x[1, 5, cols] = src[1, 4, cols]
        return x

    expected = patched_run(model, qkv, "output", BASE, edit).logits
    torch.testing.assert_close(ours.logits, expected, atol=ATOL, rtol=0)
    assert (ours.logits - plain_logits(model)).abs().max() > 1e-2
    head1 = torch.arange(12 + 4 * which, 12 + 4 * which + 4)
    head0 = torch.arange(4 * which, 4 * which + 4)

    def edit_heads(x):
        x[0, 2, head1] = src[0, 1, head1]
        x[1, 5, head0] = src[1, 4, head0]
        return x

    expected = patched_run(model, qkv, "output", BASE, edit_heads).logits
    torch.testing.assert_close(ours_head.logits, expected, atol=ATOL, rtol=0)


# -- multi-source: parallel and serial ---------------------------------------------------------


def _two_sites(mode, first=("block_output", 0), second=("mlp_output", 1)):
    return lambda lib: lib.IntervenableConfig(
        [{"layer": first[1], "component": first[0]},
         {"layer": second[1], "component": second[0]}], mode=mode)


def test_parallel_multi_source():
    model = model_for("gpt2")
    locations = {"sources->base": ([[[1], [4]], [[3], [0]]], [[[2], [5]], [[3], [1]]])}
    assert_agree(model, _two_sites("parallel"), base=BASE, sources=[SRC, SRC2],
                 unit_locations=locations)
    # one source for both
    assert_agree(model, _two_sites("parallel"), base=BASE, sources=[SRC],
                 unit_locations=locations)
    # two sources into the same site, as in the paper's section 2.7
    same = _two_sites("parallel", ("block_output", 1), ("block_output", 1))
    assert_agree(model, same, base=BASE, sources=[SRC, SRC2],
                 unit_locations={"sources->base": ([[[1], [4]], [[3], [0]]],
                                                   [[[1], [4]], [[3], [0]]])})
    # two head sites
    heads = lambda lib: lib.IntervenableConfig([  # noqa: E731
        {"layer": 1, "component": "head_attention_value_output", "unit": "h.pos"},
        {"layer": 0, "component": "head_value_output", "unit": "h.pos"}])
    side = [([[1], [0]], [[3], [2]]), ([[2, 3], [0, 1]], [[1], [4]])]
    assert_agree(model, heads, base=BASE, sources=[SRC, SRC2],
                 unit_locations={"sources->base": (side, side)})


def test_serial_multi_source():
    model = model_for("gpt2")
    assert_agree(model, _two_sites("serial"), base=BASE, sources=[SRC, SRC2],
                 unit_locations={"source_0->source_1": ([[[1], [4]]], [[[2], [5]]]),
                                 "source_1->base": ([[[3], [0]]], [[[3], [1]]])})
    assert_agree(model, _two_sites("serial", ("block_output", 0), ("block_output", 1)),
                 base=BASE, sources=[SRC, SRC2],
                 unit_locations={"source_0->source_1": 1, "source_1->base": 4})


# -- GPT-NeoX and Llama, on the components pyvene's tables get right ---------------------------

SHARED_COMPONENTS = [
    "block_input", "block_output", "mlp_input", "mlp_output", "mlp_activation",
    "attention_input", "attention_output", "attention_value_output",
]


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
@pytest.mark.parametrize("component", SHARED_COMPONENTS)
def test_neox_and_llama_components(kind, component):
    model = model_for(kind)
    for layer in (0, 1):
        assert_agree(model, one(component, layer=layer), base=BASE, sources=[SRC],
                     unit_locations=PER_EXAMPLE)
    assert_agree(model, one(component, "AdditionIntervention"), base=BASE, sources=[SRC],
                 unit_locations=MULTI_UNIT, subspaces=[0, 5, 9])


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_neox_and_llama_head_attention_value_output(kind):
    model = model_for(kind)
    side = [([[1], [3]], [[3], [2]])]
    assert_agree(model, one("head_attention_value_output", unit="h.pos"), base=BASE,
                 sources=[SRC], unit_locations={"sources->base": (side, side)})


def test_llama_query_components():
    """Queries have num_attention_heads heads, so GQA does not touch them."""
    model = model_for("llama")
    assert_agree(model, one("query_output"), base=BASE, sources=[SRC],
                 unit_locations=PER_EXAMPLE)
    side = [([[1, 2], [0, 3]], [[3, 1], [2, 5]])]
    assert_agree(model, one("head_query_output", unit="h.pos"), base=BASE, sources=[SRC],
                 unit_locations={"sources->base": (side, side)})
