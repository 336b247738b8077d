"""pyvene's ``keep_last_dim=False``: several units reach a distributed intervention concatenated.

Judged by plain hooks on the tiny GPT-2 (a rotation of the two positions' concatenation, or of
two heads' concatenation at every position), with pyvene 0.1.8 as a second oracle on the same
rotation; and the forms pyvene cannot compute are refused with the reason.
"""

from __future__ import annotations

import pytest
import torch
from conftest import capture, patched_run

import das_train as pv
from das_train.interventions.calling import call_intervention, concatenates_units

D, HEADS = 16, 4
HEAD_DIM = D // HEADS


def _rotation(dim, **keywords):
    torch.manual_seed(0)
    return pv.RotatedSpaceIntervention(embed_dim=dim, **keywords)


@pytest.mark.parametrize("keep_last_dim", [False, None])
def test_two_positions_concatenated(gpt2, base_source, keep_last_dim):
    base, source = base_source
    rot = _rotation(2 * D, keep_last_dim=keep_last_dim)
    im = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": rot, "max_number_of_units": 2},
        gpt2)
    _, out = im(base, [source], {"sources->base": [1, 4]}, subspaces=[0, 3, 20, 31])
    r = rot.rotate_layer.weight.detach()  # (2d, 2d)
    module = gpt2.transformer.h[1]
    src = capture(gpt2, module, "output", source)

    def edit(x):
        rb, rs = x[:, [1, 4]].reshape(2, 2 * D) @ r, src[:, [1, 4]].reshape(2, 2 * D) @ r
        rb[:, [0, 3, 20, 31]] = rs[:, [0, 3, 20, 31]]
        x[:, [1, 4]] = (rb @ r.T).reshape(2, 2, D)
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


def test_two_heads_concatenated_per_position(gpt2, base_source):
    base, source = base_source
    rot = _rotation(2 * HEAD_DIM)
    im = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output",
                               "unit": "h", "intervention": rot, "max_number_of_units": 2}, gpt2)
    _, out = im(base, [source], {"sources->base": [1, 3]}, subspaces=[0, 5])
    r = rot.rotate_layer.weight.detach()
    module = gpt2.transformer.h[0].attn.c_proj
    src = capture(gpt2, module, "input", source)
    cols = torch.cat([torch.arange(h * HEAD_DIM, (h + 1) * HEAD_DIM) for h in (1, 3)])

    def edit(x):
        rb, rs = x[..., cols] @ r, src[..., cols] @ r  # (batch, seq, 2 * head_dim)
        rb[..., [0, 5]] = rs[..., [0, 5]]
        x[..., cols] = rb @ r.T
        return x

    expected = patched_run(gpt2, module, "input", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


def test_keep_last_dim_true_rotates_each_position(gpt2, base_source):
    base, source = base_source
    rot = _rotation(D, keep_last_dim=True)
    im = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": rot}, gpt2)
    _, out = im(base, [source], {"sources->base": [1, 4]}, subspaces=[0, 3])
    r = rot.rotate_layer.weight.detach()
    module = gpt2.transformer.h[1]
    src = capture(gpt2, module, "output", source)

    def edit(x):
        rb, rs = x[:, [1, 4]] @ r, src[:, [1, 4]] @ r
        rb[..., [0, 3]] = rs[..., [0, 3]]
        x[:, [1, 4]] = rb @ r.T
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


def test_concatenation_that_does_not_fit_is_refused(gpt2, base_source):
    base, source = base_source
    # pyvene would fail in a matmul: a d-wide rotation given two positions concatenated.
    narrow = pv.IntervenableModel({"layer": 1, "component": "block_output",
                                   "intervention": _rotation(D, keep_last_dim=False)}, gpt2)
    with pytest.raises(ValueError, match="keep_last_dim=False.*embed_dim=32"):
        narrow(base, [source], {"sources->base": [1, 4]})
    wide = pv.IntervenableModel({"layer": 1, "component": "block_output",
                                 "intervention": _rotation(3 * D)}, gpt2)
    with pytest.raises(ValueError, match="fits neither one unit"):
        wide(base, [source], {"sources->base": [1, 4]})
    with pytest.raises(ValueError, match="embed_dim=32 but the site"):
        pv.IntervenableModel({"layer": 1, "component": "block_output",
                              "intervention": _rotation(2 * D, keep_last_dim=True)}, gpt2)


def test_localist_interventions_never_concatenate():
    vanilla = pv.VanillaIntervention(embed_dim=D, keep_last_dim=False)
    base, source = torch.randn(2, 3, D), torch.randn(2, 3, D)
    assert not concatenates_units(vanilla, base)
    torch.testing.assert_close(call_intervention(vanilla, base, source, [1]),
                               torch.where(torch.arange(D) == 1, source, base))


@pytest.mark.pyvene
def test_concatenation_matches_pyvene(gpt2, base_source):
    pyvene = pytest.importorskip("pyvene")
    base, source = base_source
    ours = _rotation(2 * D)
    theirs = pyvene.RotatedSpaceIntervention(embed_dim=2 * D)
    ours.rotate_layer.load_state_dict(theirs.rotate_layer.state_dict())
    torch.testing.assert_close(ours.rotate_layer.weight, theirs.rotate_layer.weight)
    rep = {"layer": 1, "component": "block_output", "max_number_of_units": 2}
    im_ours = pv.IntervenableModel({**rep, "intervention": ours}, gpt2)
    im_theirs = pyvene.IntervenableModel({**rep, "intervention": theirs}, gpt2)
    locations = [[1, 4], [1, 4]]
    with torch.no_grad():
        _, a = im_ours(base, [source], {"sources->base": [1, 4]}, subspaces=[0, 3, 20])
        _, b = im_theirs(base, [source], {"sources->base": ([locations], [locations])},
                         subspaces=[[[0, 3, 20]] * 2])
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
