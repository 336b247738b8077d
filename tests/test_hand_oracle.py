"""Every static intervention x component x unit form against a computation written by hand.

The oracle never touches das_train's indexing code: it captures the whole hooked tensor of a
source run with a plain hook (``conftest.capture``), then edits the base run's hooked tensor in
a plain hook (``conftest.patched_run``) with explicit loops over examples, units and
dimensions. The module paths and head layouts of each family are written out below, by hand:

- GPT-2: ``transformer.h[L].attn.c_attn`` outputs ``[q | k | v]``, each ``n_embd`` wide, heads
  contiguous within each; ``attn.c_proj``'s input is the heads' outputs side by side.
- GPT-NeoX: ``gpt_neox.layers[L].attention.query_key_value`` outputs ``(batch, seq, heads,
  3 * head_dim)``; q, k and v are the three ``head_dim`` chunks of each head.
- Llama: ``q_proj`` (4 heads), ``k_proj`` and ``v_proj`` (grouped-query: 2 heads), head_dim 4.

Unit layouts the intervention sees (``core/hooks.py``): ``pos`` -> ``(batch, units, width)``;
``h`` -> ``(batch, heads, seq, head_dim)``; ``h.pos`` -> ``(batch, heads, positions,
head_dim)``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import capture, hook_count, make_bert, make_gpt_neo, patched_run

import das_train as pv

ATOL = 1e-5
SEQ = 6
SEED, SCALE = 7, 0.5

# -- hand-written layouts ------------------------------------------------------------------------
# Each view returns a *view* of the hooked tensor shaped (batch, seq, groups, dim): a head
# component's groups are its heads; flattening (groups, dim) gives the component's own columns.


def _whole(x):
    return x.unsqueeze(2)


def _heads(n, d):
    return lambda x: x.view(x.shape[0], x.shape[1], n, d)


def _gpt2_qkv(i):
    # c_attn output (b, s, 48) = [q | k | v], 16 columns each, 4 heads of 4 inside each.
    return lambda x: x[..., 16 * i:16 * (i + 1)].view(x.shape[0], x.shape[1], 4, 4)


def _neox_qkv(i):
    # query_key_value output (b, s, 48) = per head [q_h | k_h | v_h], 4 columns each.
    return lambda x: x.view(x.shape[0], x.shape[1], 4, 12)[..., 4 * i:4 * (i + 1)]


def _gpt2(model, layer):
    blk = model.transformer.h[layer]
    return {
        "block_input": (blk, "input", _whole),
        "block_output": (blk, "output", _whole),
        "mlp_input": (blk.mlp, "input", _whole),
        "mlp_output": (blk.mlp, "output", _whole),
        "mlp_activation": (blk.mlp.act, "output", _whole),
        "attention_input": (blk.attn, "input", _whole),
        "attention_output": (blk.attn, "output", _whole),
        "attention_value_output": (blk.attn.c_proj, "input", _heads(4, 4)),
        "head_attention_value_output": (blk.attn.c_proj, "input", _heads(4, 4)),
        "query_output": (blk.attn.c_attn, "output", _gpt2_qkv(0)),
        "key_output": (blk.attn.c_attn, "output", _gpt2_qkv(1)),
        "value_output": (blk.attn.c_attn, "output", _gpt2_qkv(2)),
        "head_query_output": (blk.attn.c_attn, "output", _gpt2_qkv(0)),
        "head_key_output": (blk.attn.c_attn, "output", _gpt2_qkv(1)),
        "head_value_output": (blk.attn.c_attn, "output", _gpt2_qkv(2)),
    }


def _neox(model, layer):
    blk = model.gpt_neox.layers[layer]
    return {
        "block_input": (blk, "input", _whole),
        "block_output": (blk, "output", _whole),
        "mlp_input": (blk.mlp, "input", _whole),
        "mlp_output": (blk.mlp, "output", _whole),
        "mlp_activation": (blk.mlp.act, "output", _whole),
        "attention_input": (blk.attention, "input", _whole),
        "attention_output": (blk.attention, "output", _whole),
        "attention_value_output": (blk.attention.dense, "input", _heads(4, 4)),
        "head_attention_value_output": (blk.attention.dense, "input", _heads(4, 4)),
        "query_output": (blk.attention.query_key_value, "output", _neox_qkv(0)),
        "key_output": (blk.attention.query_key_value, "output", _neox_qkv(1)),
        "value_output": (blk.attention.query_key_value, "output", _neox_qkv(2)),
        "head_query_output": (blk.attention.query_key_value, "output", _neox_qkv(0)),
        "head_key_output": (blk.attention.query_key_value, "output", _neox_qkv(1)),
        "head_value_output": (blk.attention.query_key_value, "output", _neox_qkv(2)),
    }


def _llama(model, layer):
    blk = model.model.layers[layer]
    att = blk.self_attn
    return {
        "block_input": (blk, "input", _whole),
        "block_output": (blk, "output", _whole),
        "mlp_input": (blk.mlp, "input", _whole),
        "mlp_output": (blk.mlp, "output", _whole),
        "mlp_activation": (blk.mlp.act_fn, "output", _whole),
        "attention_input": (att, "input", _whole),
        "attention_output": (att, "output", _whole),
        "attention_value_output": (att.o_proj, "input", _heads(4, 4)),
        "head_attention_value_output": (att.o_proj, "input", _heads(4, 4)),
        "query_output": (att.q_proj, "output", _heads(4, 4)),
        "key_output": (att.k_proj, "output", _heads(2, 4)),
        "value_output": (att.v_proj, "output", _heads(2, 4)),
        "head_query_output": (att.q_proj, "output", _heads(4, 4)),
        "head_key_output": (att.k_proj, "output", _heads(2, 4)),
        "head_value_output": (att.v_proj, "output", _heads(2, 4)),
    }


def _gpt_neo(model, layer):
    blk = model.transformer.h[layer]
    return {
        "block_output": (blk, "output", _whole),
        "mlp_activation": (blk.mlp.act, "output", _whole),
        "attention_output": (blk.attn, "output", _whole),
        "head_value_output": (blk.attn.attention.v_proj, "output", _heads(4, 4)),
    }


def _bert(model, layer):
    lay = model.encoder.layer[layer]
    return {
        "block_output": (lay, "output", _whole),
        "mlp_activation": (lay.intermediate, "output", _whole),
        "attention_output": (lay.attention.output.dense, "output", _whole),
        "head_value_output": (lay.attention.self.value, "output", _heads(4, 4)),
    }


HAND = {"gpt2": _gpt2, "gpt_neox": _neox, "llama": _llama, "gpt_neo": _gpt_neo, "bert": _bert}
FAMILIES = ["gpt2", "gpt_neox", "llama"]
POS_COMPONENTS = [
    "block_input", "block_output", "mlp_input", "mlp_output", "mlp_activation",
    "attention_input", "attention_output", "attention_value_output",
    "query_output", "key_output", "value_output",
]
HEAD_COMPONENTS = [
    "head_query_output", "head_key_output", "head_value_output", "head_attention_value_output",
]
ALL_COMPONENTS = POS_COMPONENTS + HEAD_COMPONENTS
LAYER = {c: (i + 1) % 2 for i, c in enumerate(ALL_COMPONENTS)}  # both layers, by hand


@pytest.fixture(scope="module")
def models(request):
    return {
        "gpt2": request.getfixturevalue("gpt2"),
        "gpt_neox": request.getfixturevalue("neox"),
        "llama": request.getfixturevalue("llama"),
        "gpt_neo": make_gpt_neo(),
        "bert": make_bert(),
    }


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    base = {"input_ids": torch.randint(1, 64, (2, SEQ), generator=g)}
    source = {"input_ids": torch.randint(1, 64, (2, SEQ), generator=g)}
    assert not torch.equal(base["input_ids"][0], base["input_ids"][1])
    return base, source


def groups_of(model, family, component, layer):
    """Number of heads (or 1) of a component, read from the hand view of a captured tensor."""
    module, side, view = HAND[family](model, layer)[component]
    x = capture(model, module, side, {"input_ids": torch.ones(1, 2, dtype=torch.long)})
    return view(x).shape[2], view(x).shape[3]


# -- hand gather / scatter / operations ----------------------------------------------------------


def hand_gather(v, unit, where):
    """Units of a (b, s, g, d) view: pos -> (b, n, g*d); h / h.pos -> (b, heads, n, d)."""
    b, s, g, d = v.shape
    if unit == "pos":
        if where is None:
            return torch.stack([torch.stack([v[i, p].reshape(g * d) for p in range(s)]) for i in range(b)])
        return torch.stack([torch.stack([v[i, p].reshape(g * d) for p in where["pos"][i]]) for i in range(b)])
    heads = where["heads"] if where and where.get("heads") is not None else [list(range(g))] * b
    pos = where["pos"] if where and where.get("pos") is not None else [list(range(s))] * b
    return torch.stack([
        torch.stack([torch.stack([v[i, p, h] for p in pos[i]]) for h in heads[i]]) for i in range(b)
    ])


def hand_scatter(v, unit, where, new):
    b, s, g, d = v.shape
    if unit == "pos":
        positions = [list(range(s))] * b if where is None else where["pos"]
        for i in range(b):
            for j, p in enumerate(positions[i]):
                v[i, p] = new[i, j].view(g, d)
        return
    heads = where["heads"] if where and where.get("heads") is not None else [list(range(g))] * b
    pos = where["pos"] if where and where.get("pos") is not None else [list(range(s))] * b
    for i in range(b):
        for hi, h in enumerate(heads[i]):
            for pj, p in enumerate(pos[i]):
                v[i, p, h] = new[i, hi, pj]


def hand_op(kind, base_u, src_u, dims, noise=None):
    new = base_u.clone()
    for i in range(new.shape[0]):
        cols = range(new.shape[-1]) if dims is None else dims[i]
        for c in cols:
            if kind == "vanilla" or kind == "skip":
                new[i, ..., c] = src_u[i, ..., c]
            elif kind == "add":
                new[i, ..., c] = base_u[i, ..., c] + src_u[i, ..., c]
            elif kind == "sub":
                new[i, ..., c] = base_u[i, ..., c] - src_u[i, ..., c]
            elif kind == "zero":
                new[i, ..., c] = 0.0
            elif kind == "noise":
                new[i, ..., c] = base_u[i, ..., c] + noise[i, ..., c]
            else:
                raise AssertionError(kind)
    return new


def const_units(const, shape):
    """A constant source spread over the units by hand: one (width,) row, or one per example."""
    out = torch.empty(shape)
    for i in range(shape[0]):
        out[i] = const if const.dim() == 1 else const[i]
    return out


def hand_noise(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(SEED)) * SCALE


def out_of(o):
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def run_library(model, rep, base, **call):
    before = hook_count(model)
    im = pv.IntervenableModel(rep, model)
    result = im(base, **call)
    assert hook_count(model) == before, "a hook was left on the model"
    return result


def hand_run(model, spec, base, unit, where_base, make_new):
    """The base run with the hooked tensor's units replaced by ``make_new(base_units)``."""
    module, side, view = spec

    def edit(x):
        v = view(x)
        units = hand_gather(v, unit, where_base)
        hand_scatter(v, unit, where_base, make_new(units))
        return x

    return out_of(patched_run(model, module, side, base, edit))


def assert_matches(lib, hand, clean):
    """Equal to atol 1e-5, and also relative to the edit's effect on the output.

    With these tiny seeded models (weights ~ N(0, 0.02)) attention is almost uniform, so an
    edit of queries or keys moves the logits by only ~1e-5: an absolute tolerance alone would
    not see a wrong head. Library and oracle apply the same float operations to the same
    values, so they agree far closer than any real effect.
    """
    torch.testing.assert_close(lib, hand, atol=ATOL, rtol=0)
    effect = float((hand - clean).abs().max())
    err = float((lib - hand).abs().max())
    assert effect > 0, "the hand edit had no effect at all"
    assert err <= 1e-3 * effect, (
        f"library differs from the hand oracle by {err:.3g}; the edit itself moves the output by {effect:.3g}"
    )


def clean_run(model, base):
    with torch.no_grad():
        return out_of(model(**base))


# -- the location cases, with their hand meaning written out -------------------------------------
# Each returns (unit_locations for the library, hand source where, hand base where); g is the
# component's head count (to name the last head). Sequences are 6 long.


def pos_cases():
    return {
        "single": ({"sources->base": 3}, {"pos": [[3], [3]]}, {"pos": [[3], [3]]}),
        "several": ({"sources->base": [1, 3, 4]}, {"pos": [[1, 3, 4]] * 2}, {"pos": [[1, 3, 4]] * 2}),
        "per_example": ({"sources->base": [[0, 2], [3, 5]]}, {"pos": [[0, 2], [3, 5]]},
                        {"pos": [[0, 2], [3, 5]]}),
        "negative": ({"sources->base": [-1, -3]}, {"pos": [[5, 3]] * 2}, {"pos": [[5, 3]] * 2}),
        "none": (None, None, None),
        "source_vs_base": ({"sources->base": ([[1, 2], [0, 5]], [[4, 0], [2, 3]])},
                           {"pos": [[1, 2], [0, 5]]}, {"pos": [[4, 0], [2, 3]]}),
    }


def h_cases(g):
    last = g - 1
    several = [last, 0] if g == 2 else [last, 0, 2]
    return {
        "h_single": ({"sources->base": 1}, {"heads": [[1], [1]]}, {"heads": [[1], [1]]}),
        "h_several": ({"sources->base": several}, {"heads": [several] * 2}, {"heads": [several] * 2}),
        "h_per_example": ({"sources->base": [[0], [1]]}, {"heads": [[0], [1]]}, {"heads": [[0], [1]]}),
        "h_negative": ({"sources->base": -1}, {"heads": [[last]] * 2}, {"heads": [[last]] * 2}),
        "h_none": (None, None, None),
        "h_source_vs_base": ({"sources->base": ([[1], [0]], [[0], [1]])},
                             {"heads": [[1], [0]]}, {"heads": [[0], [1]]}),
    }


def hpos_cases(g):
    last = g - 1
    return {
        "hpos_single": ({"sources->base": ((1, 3), (1, 3))},
                        {"heads": [[1]] * 2, "pos": [[3]] * 2}, {"heads": [[1]] * 2, "pos": [[3]] * 2}),
        "hpos_several": ({"sources->base": (([last, 0], [2, 5, 1]), ([last, 0], [2, 5, 1]))},
                         {"heads": [[last, 0]] * 2, "pos": [[2, 5, 1]] * 2},
                         {"heads": [[last, 0]] * 2, "pos": [[2, 5, 1]] * 2}),
        "hpos_per_example": ({"sources->base": (([[0, 1], [1, 0]], [[1, 4], [5, 0]]),
                                                ([[0, 1], [1, 0]], [[1, 4], [5, 0]]))},
                             {"heads": [[0, 1], [1, 0]], "pos": [[1, 4], [5, 0]]},
                             {"heads": [[0, 1], [1, 0]], "pos": [[1, 4], [5, 0]]}),
        "hpos_negative": ({"sources->base": (([-1], [-2]), ([-1], [-2]))},
                          {"heads": [[last]] * 2, "pos": [[4]] * 2}, {"heads": [[last]] * 2, "pos": [[4]] * 2}),
        "hpos_all_heads": ({"sources->base": ((None, [2, 3]), (None, [2, 3]))},
                           {"pos": [[2, 3]] * 2}, {"pos": [[2, 3]] * 2}),
        "hpos_source_vs_base": ({"sources->base": (([[1], [0]], [[2], [3]]), ([[0], [1]], [[4], [1]]))},
                                {"heads": [[1], [0]], "pos": [[2], [3]]},
                                {"heads": [[0], [1]], "pos": [[4], [1]]}),
    }


# -- 1. every intervention on every component --------------------------------------------------

INTERVENTIONS = {
    # name: (hand kind, library class, where the source comes from)
    "vanilla": ("vanilla", pv.VanillaIntervention, "run"),
    "vanilla_const": ("vanilla", pv.VanillaIntervention, "const"),
    "add": ("add", pv.AdditionIntervention, "run"),
    "add_const": ("add", pv.AdditionIntervention, "const"),
    "add_const_rows": ("add", pv.AdditionIntervention, "const_rows"),
    "sub": ("sub", pv.SubtractionIntervention, "run"),
    "sub_const": ("sub", pv.SubtractionIntervention, "const"),
    "zero": ("zero", pv.ZeroIntervention, None),
    "noise": ("noise", pv.NoiseIntervention, None),
    "collect": ("collect", pv.CollectIntervention, None),
}

# Main-test locations: per-example, different on the source and the base side.
MAIN_WHERE = {
    "pos": ([[1, 4], [0, 5]], [[2, 4], [5, 1]]),
    "h": ([[1, 0], [0, 1]], [[0, 1], [1, 0]]),
    "h.pos": (([[1, 0], [0, 1]], [[3, 1], [0, 5]]), ([[0, 1], [1, 0]], [[2, 4], [4, 0]])),
}


def main_locations(unit, with_source):
    src, base = MAIN_WHERE[unit]
    if unit == "pos":
        hs, hb = {"pos": src}, {"pos": base}
    elif unit == "h":
        hs, hb = {"heads": src}, {"heads": base}
    else:
        hs, hb = {"heads": src[0], "pos": src[1]}, {"heads": base[0], "pos": base[1]}
    lib = {"sources->base": (src, base)} if with_source else {"base": base}
    return lib, hs, hb


def make_rep(component, unit, cls, subspace_partition=None, layer=None):
    rep = {"layer": LAYER[component] if layer is None else layer, "component": component, "unit": unit}
    if cls is pv.NoiseIntervention:
        rep["intervention"] = pv.NoiseIntervention(seed=SEED, scale=SCALE)
    else:
        rep["intervention_type"] = cls
    if subspace_partition is not None:
        rep["subspace_partition"] = subspace_partition
    return rep


def check_by_hand(model, family, component, unit, name, base, source, loc, hand_src, hand_base,
                  subspaces=None, dims=None, partition=None, layer=None):
    """Runs the library and the hand oracle for one case and compares the outputs."""
    kind, cls, source_from = INTERVENTIONS[name]
    layer = LAYER[component] if layer is None else layer
    spec = HAND[family](model, layer)[component]
    module, side, view = spec
    base_x = capture(model, module, side, base)
    base_units = hand_gather(view(base_x), unit, hand_base)
    call = {"unit_locations": loc}
    if subspaces is not None:
        call["subspaces"] = subspaces
    const = None
    if source_from == "run":
        call["sources"] = [source]
        src_units = hand_gather(view(capture(model, module, side, source)), unit, hand_src)
    elif source_from in ("const", "const_rows"):
        width = base_units.shape[-1]
        g = torch.Generator().manual_seed(5)
        const = torch.randn(width if source_from == "const" else (2, width), generator=g)
        call["source_representations"] = const
        src_units = const_units(const, base_units.shape)
    else:
        src_units = None
    rep = make_rep(component, unit, cls, partition, layer)

    if kind == "collect":
        (original, activations), out = run_library(model, rep, base, **call)
        assert original is None and len(activations) == 1
        expected = base_units if dims is None else base_units[..., dims[0]]
        torch.testing.assert_close(activations[0], expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(out_of(out), clean_run(model, base), atol=ATOL, rtol=0)
        return

    noise = hand_noise(base_units.shape) if kind == "noise" else None
    expected = hand_run(model, spec, base, unit, hand_base,
                        lambda b: hand_op(kind, b, src_units, dims, noise))
    _, out = run_library(model, rep, base, **call)
    assert_matches(out_of(out), expected, clean_run(model, base))


MAIN_SITES = [(c, "pos") for c in POS_COMPONENTS] + [
    (c, u) for c in HEAD_COMPONENTS for u in ("h", "h.pos")
]


@pytest.mark.parametrize("name", list(INTERVENTIONS))
@pytest.mark.parametrize("component,unit", MAIN_SITES, ids=[f"{c}-{u}" for c, u in MAIN_SITES])
@pytest.mark.parametrize("family", FAMILIES)
def test_intervention_by_hand(models, inputs, family, component, unit, name):
    base, source = inputs
    with_source = INTERVENTIONS[name][2] == "run"
    loc, hs, hb = main_locations(unit, with_source)
    check_by_hand(models[family], family, component, unit, name, base, source, loc, hs, hb)


# -- 2. every unit form on every component (interchange) ---------------------------------------

UNIT_SITES = (
    [(c, "pos", k) for c in POS_COMPONENTS for k in pos_cases()]
    + [(c, "h", k) for c in HEAD_COMPONENTS for k in h_cases(4)]
    + [(c, "h.pos", k) for c in HEAD_COMPONENTS for k in hpos_cases(4)]
)


@pytest.mark.parametrize("component,unit,case", UNIT_SITES, ids=[f"{c}-{k}" for c, _, k in UNIT_SITES])
@pytest.mark.parametrize("family", FAMILIES)
def test_unit_forms_by_hand(models, inputs, family, component, unit, case):
    base, source = inputs
    model = models[family]
    g, _ = groups_of(model, family, component, LAYER[component])
    cases = {"pos": pos_cases, "h": lambda: h_cases(g), "h.pos": lambda: hpos_cases(g)}[unit]()
    loc, hs, hb = cases[case]
    check_by_hand(model, family, component, unit, "vanilla", base, source, loc, hs, hb)


# -- 3. subspaces --------------------------------------------------------------------------------


def subspace_case(case, width):
    """(subspaces, subspace_partition, per-example dims by hand) for a unit ``width`` wide."""
    q = width // 4
    partition = [[0, q], [q, width // 2], [width // 2, width]]
    return {
        "shared": ([1, 3], None, [[1, 3], [1, 3]]),
        "per_example": ([[0, 1], [2]], None, [[0, 1], [2]]),
        "partition": ([0, 2], partition,
                      [list(range(0, q)) + list(range(width // 2, width))] * 2),
        "partition_per_example": ([[0], [1, 2]], partition,
                                  [list(range(0, q)), list(range(q, width))]),
    }[case]


SUBSPACE_SITES = [("block_output", "pos"), ("mlp_activation", "pos"), ("key_output", "pos"),
                  ("head_value_output", "h"), ("head_query_output", "h.pos")]


@pytest.mark.parametrize("name", ["vanilla", "add", "add_const", "sub_const", "zero", "noise", "collect"])
@pytest.mark.parametrize("case", ["shared", "per_example", "partition", "partition_per_example"])
@pytest.mark.parametrize("component,unit", SUBSPACE_SITES, ids=[c for c, _ in SUBSPACE_SITES])
@pytest.mark.parametrize("family", FAMILIES)
def test_subspaces_by_hand(models, inputs, family, component, unit, case, name):
    base, source = inputs
    model = models[family]
    g, d = groups_of(model, family, component, LAYER[component])
    width = g * d if unit == "pos" else d
    subspaces, partition, dims = subspace_case(case, width)
    loc, hs, hb = main_locations(unit, INTERVENTIONS[name][2] == "run")
    if name == "collect" and len(dims[0]) != len(dims[1]):
        # Documented: collected activations must be rectangular.
        before = hook_count(model)
        im = pv.IntervenableModel(make_rep(component, unit, pv.CollectIntervention, partition), model)
        with pytest.raises(ValueError, match="rectangular"):
            im(base, unit_locations=loc, subspaces=subspaces)
        assert hook_count(model) == before
        return
    check_by_hand(model, family, component, unit, name, base, source, loc, hs, hb,
                  subspaces=subspaces, dims=dims, partition=partition)


# -- 4. noise at any number of positions (pyvene 0.1.8 needed exactly 4) ------------------------


@pytest.mark.parametrize("n", [1, 3, 5])
@pytest.mark.parametrize("component,unit", [("block_output", "pos"), ("value_output", "pos"),
                                            ("head_key_output", "h.pos")])
@pytest.mark.parametrize("family", FAMILIES)
def test_noise_any_number_of_positions(models, inputs, family, component, unit, n):
    base, source = inputs
    positions = [5, 0, 3, 1, 2][:n]
    if unit == "pos":
        loc, hb = {"base": positions}, {"pos": [positions] * 2}
    else:
        loc, hb = {"base": ([1], positions)}, {"heads": [[1]] * 2, "pos": [positions] * 2}
    check_by_hand(models[family], family, component, unit, "noise", base, source, loc, None, hb)


def test_noise_is_fresh_per_unit_and_example():
    """The hand noise differs across examples and positions, so the oracle is not degenerate."""
    noise = hand_noise((2, 3, 16))
    assert not torch.allclose(noise[0], noise[1]) and not torch.allclose(noise[:, 0], noise[:, 1])


# -- 5. skip: the module's output becomes its input ---------------------------------------------

SKIP_LOCS = {
    "single": ({"base": 3}, {"pos": [[3], [3]]}),
    "several": ({"base": [0, 2, 5]}, {"pos": [[0, 2, 5]] * 2}),
    "per_example": ({"base": [[1], [4]]}, {"pos": [[1], [4]]}),
    "negative": ({"base": -1}, {"pos": [[5], [5]]}),
    "none": (None, None),
}


@pytest.mark.parametrize("case", list(SKIP_LOCS))
@pytest.mark.parametrize("component", ["mlp_output", "attention_output", "block_output"])
@pytest.mark.parametrize("family", FAMILIES)
def test_skip_by_hand(models, inputs, family, component, case):
    base, _ = inputs
    model = models[family]
    spec = HAND[family](model, LAYER[component])[component]
    module = spec[0]
    loc, hb = SKIP_LOCS[case]
    module_in = hand_gather(_whole(capture(model, module, "input", base)), "pos", hb)
    expected = hand_run(model, spec, base, "pos", hb, lambda b: hand_op("skip", b, module_in, None))
    _, out = run_library(model, make_rep(component, "pos", pv.SkipIntervention), base, unit_locations=loc)
    assert_matches(out_of(out), expected, clean_run(model, base))


# -- 6. grouped-query attention: Llama's key/value components have 2 heads ----------------------


@pytest.mark.parametrize("component", ["head_key_output", "head_value_output"])
@pytest.mark.parametrize("unit,loc", [("h", {"sources->base": 2}), ("h", {"sources->base": [[1], [2]]}),
                                      ("h.pos", {"sources->base": ((2, 1), (2, 1))}),
                                      ("h", {"sources->base": -3})])
def test_gqa_kv_head_out_of_range_raises(models, inputs, component, unit, loc):
    base, source = inputs
    model = models["llama"]
    before = hook_count(model)
    im = pv.IntervenableModel(make_rep(component, unit, pv.VanillaIntervention), model)
    with pytest.raises(ValueError, match="out of range"):
        im(base, [source], loc)
    assert hook_count(model) == before


@pytest.mark.parametrize("component,width", [("key_output", 8), ("value_output", 8), ("query_output", 16),
                                             ("head_key_output", 4), ("head_query_output", 4)])
def test_gqa_widths(models, component, width):
    unit = "h" if component.startswith("head_") else "pos"
    im = pv.IntervenableModel(make_rep(component, unit, pv.VanillaIntervention), models["llama"])
    assert next(iter(im.interventions.values())).embed_dim == width


def test_gqa_query_head_three_is_valid(models, inputs):
    base, source = inputs
    hs = hb = {"heads": [[3], [3]]}
    check_by_hand(models["llama"], "llama", "head_query_output", "h", "vanilla", base, source,
                  {"sources->base": 3}, hs, hb)


# -- 7. GPT-Neo and BERT -------------------------------------------------------------------------

OTHER_SITES = [("block_output", "pos"), ("mlp_activation", "pos"), ("attention_output", "pos"),
               ("head_value_output", "h"), ("head_value_output", "h.pos")]


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("component,unit", OTHER_SITES, ids=[f"{c}-{u}" for c, u in OTHER_SITES])
@pytest.mark.parametrize("family", ["gpt_neo", "bert"])
def test_gpt_neo_and_bert_by_hand(models, inputs, family, component, unit, layer):
    base, source = inputs
    loc, hs, hb = main_locations(unit, True)
    check_by_hand(models[family], family, component, unit, "vanilla", base, source, loc, hs, hb,
                  layer=layer)
