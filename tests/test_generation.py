"""``IntervenableModel.generate`` against greedy decoding written out by hand.

The hand oracle re-runs the whole sequence at every step (no KV cache) with plain PyTorch
forward hooks that edit the intervened positions, and takes the argmax of the last position.
Generation with and without the cache must give exactly its sequences.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import hook_count

import das_train as pv

N_NEW = 8
PROMPT = torch.tensor([[5, 9, 17, 33, 2, 40]])
SOURCE = torch.tensor([[12, 44, 7, 30, 61, 3]])


def _gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=4, vocab_size=64, n_positions=32, initializer_range=0.3,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
        pad_token_id=0)).eval()


def _llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, vocab_size=64, max_position_embeddings=32, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None, pad_token_id=0)).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama}


@pytest.fixture(params=sorted(MODELS), scope="module")
def lm(request):
    return MODELS[request.param]()


def blocks(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def mlp(model, layer):
    return blocks(model)[layer].mlp


def inputs(ids):
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def hand_greedy(model, ids, n_new, edits):
    """Greedy decoding, re-running everything each step; ``edits`` is ``[(module, fn)]`` with
    ``fn(x, prompt_len) -> x`` editing the module's output in place."""
    prompt_len = ids.shape[1]
    seq = ids
    for _ in range(n_new):
        handles = [
            m.register_forward_hook(lambda mod, a, out, f=f: f(out.clone(), prompt_len))
            for m, f in edits
        ]
        try:
            with torch.no_grad():
                logits = model(input_ids=seq).logits[:, -1]
        finally:
            for h in handles:
                h.remove()
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


def captured(model, module, ids):
    seen = {}
    handle = module.register_forward_hook(lambda mod, a, out: seen.setdefault("x", out.detach().clone()))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen["x"]


def plain(model, ids, n_new=N_NEW):
    return model.generate(**inputs(ids), max_new_tokens=n_new, do_sample=False)


def steering_vector(model, seed=3, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.config.hidden_size, generator=g)


def steering_model(model, vector):
    """The paper's Figure 1: a constant added to every layer's MLP output."""
    n = len(blocks(model))
    config = pv.IntervenableConfig(
        representations=[{"layer": layer, "component": "mlp_output", "source_representation": vector}
                         for layer in range(n)],
        intervention_types=pv.AdditionIntervention,
    )
    return pv.IntervenableModel(config, model)


# -- prompt interventions ----------------------------------------------------------------------
@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_interchange_matches_hand_decoding(lm, use_cache):
    block = blocks(lm)[0]
    src = captured(lm, block, SOURCE)  # (1, 6, width)

    def edit(x, prompt_len):
        x[:, 5] = src[:, 1]
        return x

    expected = hand_greedy(lm, PROMPT, N_NEW, [(block, edit)])
    assert not torch.equal(expected, plain(lm, PROMPT)), "the intervention should change the output"
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type=pv.VanillaIntervention), lm)
    original, out = pv_model.generate(
        inputs(PROMPT), sources=[inputs(SOURCE)], unit_locations={"sources->base": (1, 5)},
        max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache, intervene_on_prompt=True)
    assert original is None
    assert torch.equal(out, expected)


def test_whole_prompt_interchange_as_in_the_seed_snippet():
    lm = _gpt2()
    block = blocks(lm)[1]
    src = captured(lm, block, SOURCE)
    expected = hand_greedy(lm, PROMPT, N_NEW, [(block, lambda x, p: torch.cat([src, x[:, p:]], 1))])
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(1, "block_output", intervention_type=pv.VanillaIntervention), lm)
    for use_cache in (True, False):
        _, out = pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], max_new_tokens=N_NEW,
                                   do_sample=False, use_cache=use_cache, intervene_on_prompt=True)
        assert torch.equal(out, expected)


# -- decoding-step interventions ---------------------------------------------------------------
def _steer_edit(vector, steps):
    """Adds ``vector`` at the position of each chosen decoding step (step s is at P + s)."""
    def edit(x, prompt_len):
        for s in range(x.shape[1] - prompt_len):
            if steps(s):
                x[:, prompt_len + s] += vector
        return x
    return edit


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("selector", [None, [0, 2, 3], "odd"])
def test_decoding_step_steering_matches_hand_decoding(lm, use_cache, selector):
    vector = steering_vector(lm)
    if selector is None:
        chosen = lambda s: True  # noqa: E731
        timestep_selector = None
    elif selector == "odd":
        chosen = lambda s: s % 2 == 1  # noqa: E731
        timestep_selector = chosen
    else:
        chosen = lambda s: s in selector  # noqa: E731
        timestep_selector = selector
    edits = [(mlp(lm, layer), _steer_edit(vector, chosen)) for layer in range(len(blocks(lm)))]
    expected = hand_greedy(lm, PROMPT, N_NEW, edits)
    base_out = plain(lm, PROMPT)
    assert not torch.equal(expected, base_out)
    # the first new token comes from the prompt pass: decoding steps cannot change it
    assert expected[0, PROMPT.shape[1]] == base_out[0, PROMPT.shape[1]]
    pv_model = steering_model(lm, vector)
    _, out = pv_model.generate(inputs(PROMPT), intervene_on_prompt=False, timestep_selector=timestep_selector,
                               max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_and_decoding_steps_together(lm, use_cache):
    vector = steering_vector(lm, seed=5)
    chosen = lambda s: s % 2 == 0  # noqa: E731
    steer = _steer_edit(vector, chosen)

    def edit(x, prompt_len):
        x[:, prompt_len - 1] += vector  # the last prompt position, in the prompt pass
        return steer(x, prompt_len)

    expected = hand_greedy(lm, PROMPT, N_NEW, [(mlp(lm, layer), edit) for layer in range(len(blocks(lm)))])
    pv_model = steering_model(lm, vector)
    _, out = pv_model.generate(inputs(PROMPT), unit_locations={"base": -1}, intervene_on_prompt=True,
                               timestep_selector=chosen, max_new_tokens=N_NEW, do_sample=False,
                               use_cache=use_cache)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("use_cache", [True, False])
def test_decoding_steps_take_the_source_at_its_location(lm, use_cache):
    block = blocks(lm)[0]
    src = captured(lm, block, SOURCE)

    def edit(x, prompt_len):
        x[:, prompt_len:] = src[:, 2]
        return x

    expected = hand_greedy(lm, PROMPT, N_NEW, [(block, edit)])
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type=pv.VanillaIntervention), lm)
    _, out = pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], unit_locations={"sources->base": (2, 0)},
                               intervene_on_prompt=False, max_new_tokens=N_NEW, do_sample=False,
                               use_cache=use_cache)
    assert torch.equal(out, expected)
    # no location: the source's last position

    def edit_last(x, prompt_len):
        x[:, prompt_len:] = src[:, -1]
        return x

    last = hand_greedy(lm, PROMPT, N_NEW, [(block, edit_last)])
    assert not torch.equal(last, expected)
    _, out = pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], intervene_on_prompt=False,
                               max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache)
    assert torch.equal(out, last)


# -- batches -----------------------------------------------------------------------------------
SHORT = torch.tensor([[7, 21, 3, 11]])
PADS = PROMPT.shape[1] - SHORT.shape[1]


def padded_batch():
    batch_ids = torch.cat([PROMPT, torch.cat([torch.zeros(1, PADS, dtype=torch.long), SHORT], 1)])
    mask = torch.ones_like(batch_ids)
    mask[1, :PADS] = 0
    return {"input_ids": batch_ids, "attention_mask": mask}


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_matches_each_prompt_alone(lm, use_cache):
    """Locations index the padded base; each row equals its prompt decoded alone."""
    sources = torch.cat([SOURCE, SOURCE.flip(1)])
    block = blocks(lm)[0]
    padded_pos = [[5], [4]]  # per example, in the padded base
    expected = []
    for row, ids in enumerate([PROMPT, SHORT]):
        src = captured(lm, block, sources[row:row + 1])
        base_pos = padded_pos[row][0] - (PADS if row else 0)

        def edit(x, prompt_len, src=src, base_pos=base_pos):
            x[:, base_pos] = src[:, 1]
            x[:, prompt_len + 1:] = src[:, 1]  # decoding steps 1, 2, ...
            return x

        expected.append(hand_greedy(lm, ids, N_NEW, [(block, edit)])[0])
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type=pv.VanillaIntervention), lm)
    _, out = pv_model.generate(
        padded_batch(), sources=[{"input_ids": sources}], unit_locations={"sources->base": (1, padded_pos)},
        timestep_selector=lambda s: s >= 1, max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache, intervene_on_prompt=True)
    assert torch.equal(out[0], expected[0])
    assert torch.equal(out[1, PADS:], expected[1])
    assert not torch.equal(out, lm.generate(**padded_batch(), max_new_tokens=N_NEW, do_sample=False))


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_steering(lm, use_cache):
    vector = steering_vector(lm, seed=11)
    edits = [(mlp(lm, layer), _steer_edit(vector, lambda s: True)) for layer in range(len(blocks(lm)))]
    expected = [hand_greedy(lm, ids, N_NEW, edits)[0] for ids in (PROMPT, SHORT)]
    _, out = steering_model(lm, vector).generate(
        padded_batch(), intervene_on_prompt=False, max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache)
    assert torch.equal(out[0], expected[0])
    assert torch.equal(out[1, PADS:], expected[1])


def test_a_selector_per_intervention(lm):
    vector = steering_vector(lm, seed=2)
    pv_model = steering_model(lm, vector)
    first, second = pv_model.sorted_keys
    edits = [(mlp(lm, 0), _steer_edit(vector, lambda s: s in (0, 1))),
             (mlp(lm, 1), _steer_edit(vector, lambda s: s > 2))]
    expected = hand_greedy(lm, PROMPT, N_NEW, edits)
    for use_cache in (True, False):
        _, out = pv_model.generate(inputs(PROMPT), intervene_on_prompt=False,
                                   timestep_selector={first: [0, 1], 1: lambda s: s > 2},
                                   max_new_tokens=N_NEW, do_sample=False, use_cache=use_cache)
        assert torch.equal(out, expected)


def test_beam_search_expands_the_interventions(lm):
    """num_beams repeats each example; per-example locations and sources follow."""
    sources = {"input_ids": torch.cat([SOURCE, SOURCE.flip(1)])}
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type=pv.VanillaIntervention), lm)
    kwargs = dict(sources=[sources], unit_locations={"sources->base": (1, [[5], [4]])}, intervene_on_prompt=True,
                  max_new_tokens=4, do_sample=False)
    _, beams = pv_model.generate(padded_batch(), num_beams=3, num_return_sequences=3, **kwargs)
    assert beams.shape == (6, PROMPT.shape[1] + 4)
    for row, (ids, pos, pads) in enumerate([(PROMPT, 5, 0), (SHORT, 4 - PADS, PADS)]):
        _, alone = pv_model.generate(inputs(ids), sources=[{"input_ids": sources["input_ids"][row:row + 1]}],
                                     unit_locations={"sources->base": (1, pos)}, max_new_tokens=4,
                                     do_sample=False, num_beams=3, num_return_sequences=3, intervene_on_prompt=True)
        assert torch.equal(beams[3 * row:3 * row + 3, pads:], alone)
    # a beam search of width 1 is greedy decoding
    _, greedy = pv_model.generate(padded_batch(), **kwargs)
    _, width_one = pv_model.generate(padded_batch(), num_beams=1, **kwargs)
    assert torch.equal(greedy, width_one)


def test_collect_during_generation(lm):
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(1, "block_output", intervention_type=pv.CollectIntervention), lm)
    (original, activations), out = pv_model.generate(
        inputs(PROMPT), unit_locations={"base": -1}, timestep_selector=[0, 1],
        max_new_tokens=4, do_sample=False, intervene_on_prompt=True)
    assert original is None
    assert torch.equal(out, plain(lm, PROMPT, 4))
    assert len(activations) == 3  # the prompt's last position, then steps 0 and 1
    full = captured(lm, blocks(lm)[1], out[:, :-1])
    for got, position in zip(activations, [5, 6, 7]):
        torch.testing.assert_close(got.reshape(-1), full[0, position], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("component,unit,loc", [
    ("block_input", "pos", {"base": -1}),
    ("head_attention_value_output", "h.pos", {"base": ([[0, 2]], [[5]])}),
    ("key_output", "pos", {"base": 3}),
])
def test_cache_and_no_cache_agree_on_other_sites(component, unit, loc):
    """Input-side hooks, head units and the KV projections: re-runs without the cache
    re-apply what the cache keeps."""
    lm = _llama()
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(1, component, unit=unit, intervention_type=pv.AdditionIntervention), lm)
    vector = 3 * torch.randn(pv_model.wiring.entries[0].site.width, generator=torch.Generator().manual_seed(1))
    outs = [pv_model.generate(inputs(PROMPT), unit_locations=loc, source_representations=vector,
                              timestep_selector=[0, 2, 3], max_new_tokens=6, do_sample=False,
                              use_cache=use_cache, intervene_on_prompt=True)[1] for use_cache in (True, False)]
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], plain(lm, PROMPT, 6))


def test_serial_mode_prompt_matches_forward(lm):
    config = pv.IntervenableConfig(
        [pv.RepresentationConfig(0, "block_output", group_key=0), pv.RepresentationConfig(1, "block_output", group_key=1)],
        intervention_types=pv.VanillaIntervention, mode="serial")
    pv_model = pv.IntervenableModel(config, lm)
    call = dict(sources=[inputs(SOURCE), inputs(SOURCE.flip(1))],
                unit_locations={"source_0->source_1": (1, 2), "source_1->base": (2, 5)})
    _, out = pv_model.generate(inputs(PROMPT), max_new_tokens=3, do_sample=False, intervene_on_prompt=True, **call)
    _, forward = pv_model(inputs(PROMPT), **call)
    assert out[0, PROMPT.shape[1]] == forward.logits[0, -1].argmax()


# -- sampling, returns, hook hygiene -----------------------------------------------------------
def test_sampling_with_a_seed_is_reproducible(lm):
    pv_model = steering_model(lm, steering_vector(lm))
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        _, out = pv_model.generate(inputs(PROMPT), intervene_on_prompt=False, max_new_tokens=N_NEW,
                                   do_sample=True, top_k=0, temperature=1.0)
        runs.append(out)
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (1, PROMPT.shape[1] + N_NEW)


def test_output_original_output_gives_the_unintervened_sequences(lm):
    pv_model = steering_model(lm, steering_vector(lm))
    original, out = pv_model.generate(inputs(PROMPT), intervene_on_prompt=False, output_original_output=True,
                                      max_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(original, plain(lm, PROMPT))
    assert not torch.equal(original, out)
    none, _ = pv_model.generate(inputs(PROMPT), max_new_tokens=2, do_sample=False, intervene_on_prompt=True)
    assert none is None


def test_no_hook_left_after_generate_or_an_exception(lm):
    calls = []
    user = blocks(lm)[0].register_forward_hook(lambda mod, a, out: calls.append(1))
    try:
        before = hook_count(lm)
        pv_model = steering_model(lm, steering_vector(lm))
        pv_model.generate(inputs(PROMPT), intervene_on_prompt=False, max_new_tokens=3, do_sample=False)
        assert hook_count(lm) == before

        class Boom(pv.SourcelessIntervention):
            def forward(self, base, source=None, subspaces=None):
                if base.shape[1] == 1:
                    raise RuntimeError("boom at a decoding step")
                return base

        failing = pv.IntervenableModel(pv.RepresentationConfig(1, "mlp_output", intervention=Boom()), lm)
        with pytest.raises(RuntimeError, match="boom"):
            failing.generate(inputs(PROMPT), intervene_on_prompt=False, max_new_tokens=3, do_sample=False)
        assert hook_count(lm) == before
        calls.clear()
        lm(input_ids=PROMPT)
        assert calls == [1], "the user's own hook must still fire"
    finally:
        user.remove()


def test_bad_calls_are_reported_before_generating(lm):
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(0, "block_output", intervention_type=pv.VanillaIntervention), lm)
    with pytest.raises(pv.LocationError, match="one source position"):
        pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], timestep_selector=[0], max_new_tokens=2, intervene_on_prompt=True)
    with pytest.raises(pv.LocationError, match="out of range"):
        pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], unit_locations={"sources->base": 9},
                          max_new_tokens=2, intervene_on_prompt=True)
    with pytest.raises(ValueError, match="timestep_selector"):
        pv_model.generate(inputs(PROMPT), sources=[inputs(SOURCE)], unit_locations={"sources->base": 1},
                          timestep_selector=[-1], max_new_tokens=2, intervene_on_prompt=True)
    assert hook_count(lm) == 0


def test_default_intervenes_on_every_decoding_step_as_pyvene(lm):
    """pyvene 0.1.8's default (intervene_on_prompt=False): steering at every decoding step."""
    vector = torch.full((lm.config.hidden_size,), 3.0)
    pv_model = steering_model(lm, vector)
    _, default = pv_model.generate(inputs(PROMPT), max_new_tokens=N_NEW, do_sample=False)
    _, explicit = pv_model.generate(inputs(PROMPT), intervene_on_prompt=False, max_new_tokens=N_NEW, do_sample=False)
    assert torch.equal(default, explicit)
