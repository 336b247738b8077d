"""One regression test per pyvene 0.1.8 defect of the hook core (DESIGN.md section 3).

The others live beside the feature they guard: k+1 forwards and the removal of user hooks in
test_hooks_and_cost.py, loading onto cuda:0 in test_serialization.py, the orthogonal
parametrization and the boundless temperature in test_trainable_interventions.py.
"""

from __future__ import annotations

import torch
from conftest import capture, patched_run

import das_train as pv


def test_location_style_does_not_stick_across_calls(gpt2, base_source):
    """pyvene switched to a 'fast path' after a broadcast int location and kept it."""
    base, source = base_source
    per_example = {"sources->base": ([[[1], [4]]], [[[2], [5]]])}
    fresh = pv.IntervenableModel({"layer": 0}, gpt2)
    _, expected = fresh(base, [source], per_example)
    used = pv.IntervenableModel({"layer": 0}, gpt2)
    used(base, [source], {"sources->base": 3})
    _, again = used(base, [source], per_example)
    torch.testing.assert_close(again.logits, expected.logits, atol=0, rtol=0)
    module = gpt2.transformer.h[0]
    src = capture(gpt2, module, "output", source)

    def edit(x):
        x[0, 2] = src[0, 1]
        x[1, 5] = src[1, 4]
        return x

    torch.testing.assert_close(again.logits, patched_run(gpt2, module, "output", base, edit).logits, atol=1e-5, rtol=0)


def test_grouped_query_attention_widths(llama, base_source):
    """pyvene sized key/value components as hidden_size; with GQA they are kv_heads * head_dim."""
    base, source = base_source
    im = pv.IntervenableModel(
        [
            {"layer": 1, "component": "key_output"},
            {"layer": 1, "component": "head_value_output", "unit": "h.pos"},
            {"layer": 1, "component": "query_output"},
        ],
        llama,
    )
    widths = [im.interventions[k].embed_dim for k in im.sorted_keys]
    assert widths == [8, 4, 16]  # 2 kv heads x 4, one head, 4 query heads x 4
    _, out = im(
        base,
        [source, source, source],
        {"sources->base": ([[[3]], ([[1]], [[2]]), [[0]]], [[[3]], ([[1]], [[2]]), [[0]]])},
    )
    attn = llama.model.layers[1].self_attn
    k_src = capture(llama, attn.k_proj, "output", source)
    v_src = capture(llama, attn.v_proj, "output", source)
    q_src = capture(llama, attn.q_proj, "output", source)
    handles = []

    def set_k(m, a, o):
        o = o.clone()
        o[:, 3] = k_src[:, 3]
        return o

    def set_v(m, a, o):
        o = o.clone()
        o[:, 2, 4:8] = v_src[:, 2, 4:8]  # kv head 1 at position 2
        return o

    def set_q(m, a, o):
        o = o.clone()
        o[:, 0] = q_src[:, 0]
        return o

    handles += [attn.k_proj.register_forward_hook(set_k), attn.v_proj.register_forward_hook(set_v),
                attn.q_proj.register_forward_hook(set_q)]
    try:
        with torch.no_grad():
            expected = llama(**base)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


def _step_by_hand(gru, embeds, step, replace_at, new_value_for):
    """Unrolls the GRU cell, replacing h_t at ``replace_at[b]`` for each example b."""
    cell = gru.gru.cells[0]
    h = torch.zeros(embeds.shape[0], gru.config.h_dim)
    for t in range(embeds.shape[1]):
        h = cell(embeds[:, t], h)
        for b in range(embeds.shape[0]):
            if replace_at[b] == t:
                h = h.clone()
                h[b] = new_value_for(b)
    return gru.score(h)


def test_gru_time_step_interchange_with_batch_of_three():
    """pyvene's recurrent time-step interventions failed for batch > 1."""
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=8, n_layer=1), seed=0)
    gru.eval()
    torch.manual_seed(3)
    base, source = torch.rand(3, 7, 8), torch.rand(3, 7, 8)
    src_steps, base_steps = [2, 6, 0], [3, 1, 6]
    im = pv.IntervenableModel({"component": "cell_output", "unit": "t"}, gru)
    with torch.no_grad():
        _, out = im(
            {"inputs_embeds": base},
            [{"inputs_embeds": source}],
            {"sources->base": ([[[s] for s in src_steps]], [[[t] for t in base_steps]])},
        )
        # source hidden states at every step, by hand
        cell, h, src_h = gru.gru.cells[0], torch.zeros(3, 8), []
        for t in range(7):
            h = cell(source[:, t], h)
            src_h.append(h)
        expected = _step_by_hand(gru, base, None, base_steps, lambda b: src_h[src_steps[b]][b])
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)


def test_noise_takes_any_number_of_positions(gpt2):
    """pyvene's NoiseIntervention worked for exactly four positions."""
    base = {"input_ids": torch.arange(1, 9).repeat(2, 1)}
    module = gpt2.transformer.h[0]
    for positions in ([0], [0, 1, 2], [0, 1, 2, 3, 4, 5, 6]):
        im = pv.IntervenableModel(
            {"layer": 0, "component": "block_input", "intervention": pv.NoiseIntervention(scale=0.5, seed=7)},
            gpt2,
        )
        _, out = im(base, unit_locations={"base": positions})
        noise = torch.randn(2, len(positions), 16, generator=torch.Generator().manual_seed(7)) * 0.5

        def edit(x, positions=positions, noise=noise):
            x[:, positions] = x[:, positions] + noise
            return x

        expected = patched_run(gpt2, module, "input", base, edit)
        torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
