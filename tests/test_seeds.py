"""Every static code snippet of the seeds, run after ``import das_train as pv``.

The snippets are copied with their call shapes intact (dict configs, ``{"base": 3}``,
``{"sources->base": 3}``, a single BatchEncoding as ``sources``, the parallel
``[[[1]],[[3]]]`` form, the serial ``source_0->source_1`` keys, the GRU ``(6, 3)`` pair, the
causal-tracing loop, ...). Only the Hugging Face Hub is replaced: ``create_gpt2`` below builds
a tiny GPT-2 from a config (12 layers, so the seeds' layer numbers 3, 8 and 10 exist) and a
word-level tokenizer over the seeds' words. Where a seed has a plain bug of its own, the fix is
marked ``# seed bug:``. Each test then checks the result against plain torch hooks, so it
fails if the library puts an intervention in the wrong place or computes it wrongly.

The trainable-intervention snippets (RotatedSpace, LowRankRotatedSpace, LoRA, generate) are
covered elsewhere.
"""

from __future__ import annotations

import copy
import math

import huggingface_hub
import pytest
import tokenizers
import torch
import transformers
from tokenizers import models, pre_tokenizers

import das_train as pv

N_LAYER = 12  # GPT-2 small's depth: the seeds intervene at layers 3, 8 and 10
N_EMBD = 32
SEATTLE = 7312  # the seeds' token id of " Seattle" in GPT-2's vocabulary

# The seeds' words. "Needle" is left out so that it splits into "Need" + "le", and
# "########" into "######" + "##", as GPT-2's BPE splits them: "The Space Needle is in
# downtown" is 7 tokens, the subject is positions 0-3, and the corrupted prompt of the API
# reference has the clean prompt's length.
_WORDS = (
    "[UNK] The capital of Spain is Italy language Space Need le in downtown Rome "
    "##### ###### ## When John and Mary went to the store, gave a bottle"
).split()


def make_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(_WORDS)}
    vocab["Seattle"] = SEATTLE
    tok = tokenizers.Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", model_input_names=["input_ids", "attention_mask"]
    )


def _gpt2_config(n_layer: int = N_LAYER) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        n_layer=n_layer, n_embd=N_EMBD, n_head=4, vocab_size=SEATTLE + 1, n_positions=32,
        initializer_range=0.1, bos_token_id=0, eos_token_id=0,
    )


def create_gpt2(name: str = "gpt2"):
    """Stands in for ``pv.create_gpt2(name)``: (config, tokenizer, a tiny GPT2Model)."""
    torch.manual_seed(0)
    model = transformers.GPT2Model(_gpt2_config()).eval()
    return model.config, make_tokenizer(), model


def create_gpt2_lm():
    """Stands in for ``AutoModelForCausalLM.from_pretrained("gpt2")``."""
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(_gpt2_config()).eval()


# -- plain-hook reference computations ---------------------------------------------------------


def plain_run(model, inputs, edits=(), captures=(), grad=False):
    """Runs ``model(**inputs)`` with plain torch hooks.

    ``edits``: ``(module, side, fn)``, ``fn(x) -> x'`` replaces the module's first input
    (``side="input"``) or first output. ``captures``: ``(module, side)``, recorded after the
    edits on the same module. Returns ``(outputs, [captured tensors])``.
    """
    seen: list = [None] * len(captures)

    def pre(fn):
        def hook(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        return hook

    def post(fn):
        def hook(mod, args, out):
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        return hook

    def recorder(j):
        def fn(x):
            seen[j] = x if grad else x.detach().clone()
            return x

        return fn

    hooks = list(edits) + [(m, side, recorder(j)) for j, (m, side) in enumerate(captures)]
    handles = []
    try:
        for module, side, fn in hooks:
            if side == "input":
                handles.append(module.register_forward_pre_hook(pre(fn), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(post(fn)))
        with torch.set_grad_enabled(grad):
            out = model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return out, seen


def put(positions, values):
    """An edit that writes ``values`` (batch, len(positions), width) at ``positions``."""

    def fn(x):
        x = x.clone()
        x[:, positions] = values
        return x

    return fn


def put_at(position, values, dims=None):
    """An edit that writes ``values`` (batch, [k]) at one position (and ``dims``)."""

    def fn(x):
        x = x.clone()
        if dims is None:
            x[:, position] = values
        else:
            x[:, position, dims] = values
        return x

    return fn


def assert_close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def assert_differs(a, b, at_least=1e-3):
    assert (a - b).abs().max().item() > at_least, "the intervention changed nothing"


# -- section 2: the zero-out example, and saving -----------------------------------------------


def test_zero_out_mlp_dims_10_to_12_at_token_3():
    # built-in helper to get a HuggingFace model
    _, tokenizer, gpt2 = create_gpt2()
    # create with dict-based config
    pv_config = pv.IntervenableConfig({
        "layer": 0,
        "component": "mlp_output",
        "intervention_type": pv.VanillaIntervention})
    # initialize model
    pv_gpt2 = pv.IntervenableModel(
        pv_config, model=gpt2)
    # run an intervened forward pass
    intervened_outputs = pv_gpt2(
        # the base input
        base=tokenizer(
            "The capital of Spain is",
            return_tensors="pt"),
        # the location to intervene at (3rd token)
        unit_locations={"base": 3},
        # the individual dimensions targetted
        subspaces=[10, 11, 12],
        # the intervention values
        source_representations=torch.zeros(
            gpt2.config.n_embd)
    )

    original, intervened = intervened_outputs
    assert original is None
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    mlp = gpt2.h[0].mlp
    expected, _ = plain_run(gpt2, base, [(mlp, "output", put_at(3, 0.0, [10, 11, 12]))])
    assert_close(intervened.last_hidden_state, expected.last_hidden_state)
    plain, _ = plain_run(gpt2, base)
    assert_differs(intervened.last_hidden_state, plain.last_hidden_state)
    # Causal attention: positions before 3 are untouched; a wrong position would show here.
    assert_close(intervened.last_hidden_state[:, :3], plain.last_hidden_state[:, :3], atol=0)
    # Zeroing other dims (or the whole vector) gives a different result.
    wider, _ = plain_run(gpt2, base, [(mlp, "output", put_at(3, 0.0))])
    assert_differs(intervened.last_hidden_state, wider.last_hidden_state)


class _FakeHfApi:
    """Records what a save would push to the Hub (there is no network here)."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, *args, **kwargs):
        _FakeHfApi.calls.append(("create_repo", args, kwargs))

    def upload_folder(self, *args, **kwargs):
        _FakeHfApi.calls.append(("upload_folder", args, kwargs))

    def upload_file(self, *args, **kwargs):
        _FakeHfApi.calls.append(("upload_file", args, kwargs))


def test_zero_out_sharing_line_saves_and_pushes(tmp_path, monkeypatch):
    """``pv_gpt2.save("./tmp/", save_to_hf_hub=True)`` as written: no repo name is given
    (pyvene 0.1.8 defaults it to "my-awesome-model"). The Hub is faked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeHfApi)
    _FakeHfApi.calls = []
    _, tokenizer, gpt2 = create_gpt2()
    pv_config = pv.IntervenableConfig({
        "layer": 0,
        "component": "mlp_output",
        "intervention_type": pv.VanillaIntervention})
    pv_gpt2 = pv.IntervenableModel(pv_config, model=gpt2)
    # sharing
    pv_gpt2.save("./tmp/", save_to_hf_hub=True)

    assert (tmp_path / "tmp" / "config.json").is_file()
    assert any(name.startswith("upload") for name, _, _ in _FakeHfApi.calls)


def test_zero_out_save_and_load_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, tokenizer, gpt2 = create_gpt2()
    pv_config = pv.IntervenableConfig({
        "layer": 0,
        "component": "mlp_output",
        "intervention_type": pv.VanillaIntervention})
    pv_gpt2 = pv.IntervenableModel(pv_config, model=gpt2)
    call = {
        "base": tokenizer("The capital of Spain is", return_tensors="pt"),
        "unit_locations": {"base": 3},
        "subspaces": [10, 11, 12],
        "source_representations": torch.zeros(gpt2.config.n_embd),
    }
    _, before = pv_gpt2(**call)
    pv_gpt2.save("./tmp/")
    loaded = pv.IntervenableModel.load("./tmp/", model=gpt2)
    assert loaded.config.representations[0].component == "mlp_output"
    _, after = loaded(**call)
    assert_close(after.last_hidden_state, before.last_hidden_state, atol=0)


# -- 2.1 interchange ---------------------------------------------------------------------------


def test_interchange_intervention():
    _, tokenizer, gpt2 = create_gpt2()
    pv_gpt2 = pv.IntervenableModel(
        pv.IntervenableConfig({
            "layer": 0,
            "component": "mlp_output",
            "intervention_type": pv.VanillaIntervention}),
        model=gpt2)
    # run an interchange intervention
    intervened_outputs = pv_gpt2(
        # the base input
        base=tokenizer(
            "The capital of Spain is",
            return_tensors="pt"),
        # the source input
        sources=tokenizer(
            "The capital of Italy is",
            return_tensors="pt"),
        # the location to intervene at (3rd token)
        unit_locations={"sources->base": 3},
        # the individual dimensions targeted
        subspaces=[10, 11, 12]
    )

    _, intervened = intervened_outputs
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    source = tokenizer("The capital of Italy is", return_tensors="pt")
    mlp = gpt2.h[0].mlp
    _, (src_mlp,) = plain_run(gpt2, source, captures=[(mlp, "output")])
    expected, _ = plain_run(
        gpt2, base, [(mlp, "output", put_at(3, src_mlp[:, 3, 10:13], [10, 11, 12]))]
    )
    assert_close(intervened.last_hidden_state, expected.last_hidden_state)
    plain, _ = plain_run(gpt2, base)
    assert_differs(intervened.last_hidden_state, plain.last_hidden_state)
    assert_close(intervened.last_hidden_state[:, :3], plain.last_hidden_state[:, :3], atol=0)


# -- 2.2 addition ------------------------------------------------------------------------------


def test_addition_noising_first_four_tokens():
    _, tokenizer, gpt2 = create_gpt2()
    torch.manual_seed(3)
    noising_config = pv.IntervenableConfig({
        "layer": 0,
        "component": "block_input",
        "intervention_type": pv.AdditionIntervention})

    noising_gpt2 = pv.IntervenableModel(
        noising_config, model=gpt2)  # seed bug: the seed passes `config`, an undefined name

    source = torch.rand(gpt2.config.n_embd, requires_grad=False)
    intervened_outputs = noising_gpt2(
        base=tokenizer(
            "The Space Needle is in downtown",
            return_tensors="pt"),
        # target the first four tokens for intervention
        unit_locations={"base": [0, 1, 2, 3]},
        source_representations=source)  # the seed inlines torch.rand(...) here

    _, intervened = intervened_outputs
    base = tokenizer("The Space Needle is in downtown", return_tensors="pt")
    block = gpt2.h[0]
    _, (embedding,) = plain_run(gpt2, base, captures=[(block, "input")])
    expected, _ = plain_run(
        gpt2, base, [(block, "input", put([0, 1, 2, 3], embedding[:, :4] + source))]
    )
    assert_close(intervened.last_hidden_state, expected.last_hidden_state)
    # What layer 0 actually received: the embedding plus the vector at positions 0-3 only.
    _, (seen,) = _run_capturing(noising_gpt2, gpt2.h[0].ln_1, dict(
        base=base, unit_locations={"base": [0, 1, 2, 3]}, source_representations=source))
    assert_close(seen[:, :4], embedding[:, :4] + source)
    assert_close(seen[:, 4:], embedding[:, 4:], atol=0)


def test_addition_source_representation_gets_gradients():
    """"pyvene allows Autograd on the static representations"."""
    _, tokenizer, gpt2 = create_gpt2()
    noising_gpt2 = pv.IntervenableModel(
        {"layer": 0, "component": "block_input", "intervention_type": pv.AdditionIntervention},
        model=gpt2)
    base = tokenizer("The Space Needle is in downtown", return_tensors="pt")
    torch.manual_seed(4)
    source = torch.rand(gpt2.config.n_embd, requires_grad=True)
    _, out = noising_gpt2(base=base, unit_locations={"base": [0, 1, 2, 3]},
                          source_representations=source)
    out.last_hidden_state[:, -1].pow(2).sum().backward()
    assert source.grad is not None

    ref = source.detach().clone().requires_grad_(True)
    expected, _ = plain_run(
        gpt2, base, [(gpt2.h[0], "input", lambda x: torch.cat([x[:, :4] + ref, x[:, 4:]], 1))],
        grad=True,
    )
    expected.last_hidden_state[:, -1].pow(2).sum().backward()
    assert_close(source.grad, ref.grad)


def _run_capturing(intervenable, module, call):
    """Runs an IntervenableModel call with a plain hook recording ``module``'s input."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            out = intervenable(**call)
    finally:
        handle.remove()
    return out, seen[-1:]


# -- 2.3 activation collection -----------------------------------------------------------------


def _probe_config():
    # set up a upstream intervention
    probe_config = pv.IntervenableConfig({
        "layer": 8,
        "component": "block_output",
        "intervention_type": pv.VanillaIntervention})
    # add downstream collector
    probe_config = probe_config.add_intervention({
        "layer": 10,
        "component": "block_output",
        "intervention_type": pv.CollectIntervention})
    return probe_config


def test_collect_as_written_returns_layer_10_token_3():
    _, tokenizer, gpt2 = create_gpt2()
    probe_config = _probe_config()

    probe_gpt2 = pv.IntervenableModel(
        probe_config, model=gpt2)

    # return the activations for 3rd token
    collected_activations = probe_gpt2(
        base=tokenizer(
            "The capital of Spain is",
            return_tensors="pt"),
        unit_locations={"sources->base": 3})

    # As written the snippet passes no `sources`, so the layer-8 interchange has nothing to
    # swap in and is skipped: the collected vector is the clean one.
    (original, activations), outputs = collected_activations
    assert original is None
    assert len(activations) == 1
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    plain, (h10,) = plain_run(gpt2, base, captures=[(gpt2.h[10], "output")])
    assert activations[0].shape == (1, 1, N_EMBD)
    assert_close(activations[0], h10[:, [3]])
    assert_close(outputs.last_hidden_state, plain.last_hidden_state, atol=0)


def test_collect_after_an_interchange_at_layer_8():
    """The text's intent: interchange at layer 8, then collect at layer 10."""
    _, tokenizer, gpt2 = create_gpt2()
    probe_gpt2 = pv.IntervenableModel(_probe_config(), model=gpt2)
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    source = tokenizer("The capital of Italy is", return_tensors="pt")
    (_, activations), outputs = probe_gpt2(
        base=base, sources=[source, None], unit_locations={"sources->base": 3}
    )
    _, (src8,) = plain_run(gpt2, source, captures=[(gpt2.h[8], "output")])
    expected, (h10,) = plain_run(
        gpt2, base, [(gpt2.h[8], "output", put_at(3, src8[:, 3]))],
        captures=[(gpt2.h[10], "output")],
    )
    assert_close(activations[0], h10[:, [3]])
    assert_close(outputs.last_hidden_state, expected.last_hidden_state)
    _, (clean10,) = plain_run(gpt2, base, captures=[(gpt2.h[10], "output")])
    assert_differs(activations[0], clean10[:, [3]])


# -- 2.4 custom interventions ------------------------------------------------------------------


# multiply base with a constant
class MultInt(pv.ConstantSourceIntervention):

    def __init__(self, **kwargs):
        super().__init__()

    def forward(self, base, source=None,
                subspaces=None):
        return base * 0.3


def test_custom_multiplying_intervention():
    _, tokenizer, gpt2 = create_gpt2()
    mult_gpt2 = pv.IntervenableModel({
        "intervention_type": MultInt},
        model=gpt2)

    base = tokenizer("The capital of Spain is", return_tensors="pt")
    _, everywhere = mult_gpt2(base)
    expected, _ = plain_run(gpt2, base, [(gpt2.h[0], "output", lambda x: x * 0.3)])
    assert_close(everywhere.last_hidden_state, expected.last_hidden_state)
    plain, _ = plain_run(gpt2, base)
    assert_differs(everywhere.last_hidden_state, plain.last_hidden_state)

    _, at_3 = mult_gpt2(base, unit_locations={"base": 3})
    _, (h0,) = plain_run(gpt2, base, captures=[(gpt2.h[0], "output")])
    expected, _ = plain_run(gpt2, base, [(gpt2.h[0], "output", put_at(3, h0[:, 3] * 0.3))])
    assert_close(at_3.last_hidden_state, expected.last_hidden_state)


# -- 2.6 training with interventions (IIT) -----------------------------------------------------


def test_enable_model_gradients_trains_through_the_interchange():
    _, tokenizer, gpt2 = create_gpt2()
    reference = copy.deepcopy(gpt2)
    pv_gpt2 = pv.IntervenableModel({
        "layer": 8},
        model=gpt2)
    assert not any(p.requires_grad for p in gpt2.parameters())

    # enable gradients on the model
    pv_gpt2.enable_model_gradients()
    # run counterfactual forward as usual
    assert all(p.requires_grad for p in gpt2.parameters())
    # As in pyvene, enabling gradients switches on train mode (dropout); turn dropout off so
    # the run can be compared with the hand computation below.
    assert gpt2.training
    gpt2.eval()
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    source = tokenizer("The capital of Italy is", return_tensors="pt")
    _, out = pv_gpt2(base, [source], {"sources->base": 3})
    out.last_hidden_state[:, -1].pow(2).sum().backward()

    # The same loss by hand: the source's layer-8 output at token 3 (with its graph) patched
    # into the base run.
    for p in reference.parameters():
        p.requires_grad_(True)
    _, (src8,) = plain_run(reference, source, captures=[(reference.h[8], "output")], grad=True)
    expected, _ = plain_run(
        reference, base,
        [(reference.h[8], "output", lambda x: torch.cat([x[:, :3], src8[:, 3:4], x[:, 4:]], 1))],
        grad=True,
    )
    expected.last_hidden_state[:, -1].pow(2).sum().backward()
    assert_close(out.last_hidden_state, expected.last_hidden_state)
    for (name, p), q in zip(gpt2.named_parameters(), reference.parameters()):
        assert p.grad is not None, name
        assert_close(p.grad, q.grad)
    # the source run contributes: layer 0 gets gradient through token 3 of the source
    assert gpt2.h[0].mlp.c_fc.weight.grad.abs().sum() > 0


# -- 2.7 parallel and 2.8 serial multi-source interventions ------------------------------------


def test_parallel_multi_source_interchange():
    _, tokenizer, gpt2 = create_gpt2()
    parallel_config = pv.IntervenableConfig([
        {"layer": 3, "component": "block_output"},
        {"layer": 3, "component": "block_output"}],
        # intervene on base at the same time
        mode="parallel")

    parallel_gpt2 = pv.IntervenableModel(
        parallel_config, model=gpt2)

    base = tokenizer(
        "The capital of Spain is",
        return_tensors="pt")

    sources = [
        tokenizer("The language of Spain is",
                  return_tensors="pt"),
        tokenizer("The capital of Italy is",
                  return_tensors="pt")]

    intervened_outputs = parallel_gpt2(
        base, sources,
        {"sources->base": (
            # each list has a dimensionality of
            # [num_intervention, batch, num_unit]
            [[[1]], [[3]]], [[[1]], [[3]]])}
    )

    _, intervened = intervened_outputs
    h3 = gpt2.h[3]
    _, (s0,) = plain_run(gpt2, sources[0], captures=[(h3, "output")])
    _, (s1,) = plain_run(gpt2, sources[1], captures=[(h3, "output")])

    def edit(x):
        x = x.clone()
        x[:, 1] = s0[:, 1]  # "language" from the first source
        x[:, 3] = s1[:, 3]  # "Italy" from the second
        return x

    expected, _ = plain_run(gpt2, base, [(h3, "output", edit)])
    assert_close(intervened.last_hidden_state, expected.last_hidden_state)
    # Each source matters.
    only_first, _ = plain_run(gpt2, base, [(h3, "output", put_at(1, s0[:, 1]))])
    assert_differs(intervened.last_hidden_state, only_first.last_hidden_state)
    plain, _ = plain_run(gpt2, base)
    assert_close(intervened.last_hidden_state[:, :1], plain.last_hidden_state[:, :1], atol=0)


def test_serial_multi_source_interchange():
    _, tokenizer, gpt2 = create_gpt2()
    base = tokenizer("The capital of Spain is", return_tensors="pt")
    sources = [
        tokenizer("The language of Spain is", return_tensors="pt"),
        tokenizer("The capital of Italy is", return_tensors="pt")]

    serial_config = pv.IntervenableConfig([
        {"layer": 3, "component": "block_output"},
        {"layer": 10, "component": "block_output"}],
        # intervene on base one after another
        mode="serial")

    serial_gpt2 = pv.IntervenableModel(
        serial_config, model=gpt2)

    intervened_outputs = serial_gpt2(
        base, sources,
        # src_0 intervenes on src_1 position 1
        # src_1 intervenes on base position 4
        {"source_0->source_1": 1,
         "source_1->base": 4}
    )

    _, intervened = intervened_outputs
    h3, h10 = gpt2.h[3], gpt2.h[10]
    _, (s0_h3,) = plain_run(gpt2, sources[0], captures=[(h3, "output")])
    _, (s1_h10,) = plain_run(
        gpt2, sources[1], [(h3, "output", put_at(1, s0_h3[:, 1]))], captures=[(h10, "output")]
    )
    expected, _ = plain_run(gpt2, base, [(h10, "output", put_at(4, s1_h10[:, 4]))])
    assert_close(intervened.last_hidden_state, expected.last_hidden_state)
    # The first step matters: without it, source 1's own layer-10 state would be used.
    _, (clean_s1_h10,) = plain_run(gpt2, sources[1], captures=[(h10, "output")])
    assert_differs(s1_h10[:, 4], clean_s1_h10[:, 4])
    unchained, _ = plain_run(gpt2, base, [(h10, "output", put_at(4, clean_s1_h10[:, 4]))])
    assert_differs(intervened.last_hidden_state, unchained.last_hidden_state)


# -- 2.9 recurrent model -----------------------------------------------------------------------


def _gru_by_hand(gru, x, edit_step=None, value=None):
    """Steps the GRU's cells by hand; at ``edit_step`` layer 0's state becomes ``value``.
    Returns the logits and layer 0's states."""
    cells = gru.gru.cells
    states = [x.new_zeros(x.shape[0], gru.config.h_dim) for _ in cells]
    layer0 = []
    for t in range(x.shape[1]):
        inp = x[:, t]
        for layer, cell in enumerate(cells):
            h = cell(inp, states[layer])
            if layer == 0 and t == edit_step:
                h = value(h) if callable(value) else value
            states[layer] = inp = h
        layer0.append(states[0])
    return gru.score(states[-1]), layer0


def test_gru_zero_intervention_at_a_time_step():
    torch.manual_seed(0)
    # built-in helper to get a GRU
    _, _, gru = pv.create_gru_classifier(
        pv.GRUConfig(h_dim=32))
    # wrap it with config
    pv_gru = pv.IntervenableModel({
        "component": "cell_output",
        # intervening on time
        "unit": "t",
        "intervention_type": pv.ZeroIntervention},
        model=gru)

    # run an intervened forward pass
    rand_b = torch.rand(1, 10, gru.config.h_dim)
    rand_s = torch.rand(1, 10, gru.config.h_dim)
    intervened_outputs = pv_gru(
        base={"inputs_embeds": rand_b},
        sources=[{"inputs_embeds": rand_s}],
        # intervening time step
        unit_locations={"sources->base": (6, 3)})

    _, intervened = intervened_outputs
    with torch.no_grad():
        expected, _ = _gru_by_hand(gru, rand_b, 3, torch.zeros(1, 32))
        plain, _ = _gru_by_hand(gru, rand_b)
    assert_close(intervened.logits, expected)
    assert_differs(intervened.logits, plain, at_least=1e-4)


def test_gru_interchange_between_time_steps():
    """The same call shape with an interchange: source step 6 into base step 3."""
    torch.manual_seed(0)
    _, _, gru = pv.create_gru_classifier(pv.GRUConfig(h_dim=32))
    pv_gru = pv.IntervenableModel(
        {"component": "cell_output", "unit": "t", "intervention_type": pv.VanillaIntervention},
        model=gru)
    rand_b = torch.rand(1, 10, gru.config.h_dim)
    rand_s = torch.rand(1, 10, gru.config.h_dim)
    _, intervened = pv_gru(
        base={"inputs_embeds": rand_b},
        sources=[{"inputs_embeds": rand_s}],
        unit_locations={"sources->base": (6, 3)})
    with torch.no_grad():
        _, source_states = _gru_by_hand(gru, rand_s)
        expected, _ = _gru_by_hand(gru, rand_b, 3, source_states[6])
        wrong_step, _ = _gru_by_hand(gru, rand_b, 3, source_states[3])
    assert_close(intervened.logits, expected)
    assert_differs(intervened.logits, wrong_step, at_least=1e-4)


# -- section 3: causal tracing -----------------------------------------------------------------


def tracing_config(
        l, c="mlp_activation", w=10, tl=N_LAYER):  # seed: tl=48, GPT2-XL's depth  # noqa: E741
    s = max(0, l - w // 2)
    e = min(tl, l - (-w // 2))
    config = pv.IntervenableConfig(  # seed bug: a bare `IntervenableConfig`, never imported
        [{"component": "block_input"}] +
        [{"layer": l, "component": c}
         for l in range(s, e)],  # noqa: E741
        [pv.NoiseIntervention] +
        [pv.VanillaIntervention] * (e - s))

    return config, e - s  # seed bug: returns `config` alone, but the caller unpacks two values


def _site(gpt, stream, layer):
    block = gpt.h[layer]
    return {"block_output": block, "mlp_activation": block.mlp.act,
            "attention_output": block.attn}[stream]


def test_causal_tracing_loop():
    torch.manual_seed(0)
    _, tokenizer, gpt = create_gpt2("gpt2-xl")  # the seed's `pv.create_gpt2("gpt2-xl")`
    # A plain hook on layer 0's first LayerNorm sees the (noised) embedding each run.
    embeddings_seen = []
    watch = gpt.h[0].ln_1.register_forward_pre_hook(
        lambda m, args: embeddings_seen.append(args[0].detach().clone()))
    checks = []
    try:
        trace_results = []
        base = tokenizer(
            "The Space Needle is in downtown",
            return_tensors="pt")

        for s in ["block_output", "mlp_activation",
                  "attention_output"]:
            for l in range(gpt.config.n_layer):  # noqa: E741
                for p in range(7):
                    w = 1 if s == "block_output" else 10
                    t_config, n_r = tracing_config(l, s, w)
                    t_gpt = pv.IntervenableModel(t_config, gpt)
                    _, outs = t_gpt(base, [None] + [base] * n_r,
                                    {"sources->base": ([None] + [[[p]]] * n_r,
                                     [[[0, 1, 2, 3]]] + [[[p]]] * n_r)})
                    dist = pv.embed_to_distrib(gpt,
                                               outs.last_hidden_state, logits=False)
                    trace_results.append(
                        {"stream": s, "layer": l, "pos": p,
                         "prob": dist[0][-1][7312]})
                    # (not in the seed) what this run needs checking against
                    checks.append((s, l, p, embeddings_seen[-1], outs.last_hidden_state))
    finally:
        watch.remove()

    assert len(trace_results) == 3 * N_LAYER * 7
    # embed_to_distrib on a base GPT-2: softmax over the tied embedding matrix.
    outs_last = checks[-1][4]
    assert_close(
        pv.embed_to_distrib(gpt, outs_last, logits=False),
        torch.softmax(outs_last @ gpt.wte.weight.t(), dim=-1),
    )

    # The clean run's embedding and restored sites.
    streams = ["block_output", "mlp_activation", "attention_output"]
    captures = [(gpt.h[0], "input")] + [
        (_site(gpt, s, layer), "output") for s in streams for layer in range(N_LAYER)
    ]
    clean, seen = plain_run(gpt, base, captures=captures)
    clean_embedding = seen[0]
    clean_sites = {
        (s, layer): seen[1 + i * N_LAYER + layer]
        for i, s in enumerate(streams) for layer in range(N_LAYER)
    }
    clean_prob = torch.softmax(clean.last_hidden_state @ gpt.wte.weight.t(), -1)[0, -1, SEATTLE]

    noise = torch.stack([emb - clean_embedding for *_, emb, _ in checks])
    # Noise hits exactly positions 0-3 of the embedding, afresh each run.
    assert torch.equal(noise[:, :, 4:], torch.zeros_like(noise[:, :, 4:]))
    assert bool((noise[:, :, :4] != 0).all())
    assert not torch.allclose(noise[0], noise[1])
    scale = 3 * 0.13462  # Meng et al.'s noise level, pyvene's default
    assert math.isclose(noise[:, :, :4].std().item(), scale, rel_tol=0.05)

    # Every run equals the same restoration done by hand on the same noised embedding
    # (checked at the first, a subject and the last position, every stream and layer).
    for (s, layer, p, emb, last_hidden), result in zip(checks, trace_results):
        if p not in (0, 3, 6):
            continue
        w = 1 if s == "block_output" else 10
        lo, hi = max(0, layer - w // 2), min(N_LAYER, layer - (-w // 2))
        edits = [(gpt.h[0], "input", lambda x, emb=emb: emb)] + [
            (_site(gpt, s, j), "output", put_at(p, clean_sites[(s, j)][:, p]))
            for j in range(lo, hi)
        ]
        expected, _ = plain_run(gpt, base, edits)
        assert_close(last_hidden, expected.last_hidden_state)
        prob = torch.softmax(expected.last_hidden_state @ gpt.wte.weight.t(), -1)[0, -1, SEATTLE]
        assert_close(result["prob"], prob)

    # Restoring the last block's output at the last token restores the clean prediction.
    last = next(r for r in trace_results
                if (r["stream"], r["layer"], r["pos"]) == ("block_output", N_LAYER - 1, 6))
    assert_close(last["prob"], clean_prob)
    noised_first = next(r for r in trace_results
                        if (r["stream"], r["layer"], r["pos"]) == ("block_output", 0, 5))
    assert not math.isclose(noised_first["prob"].item(), clean_prob.item(), rel_tol=1e-4)


# -- API reference (001/004): workflows, configs, save/load -------------------------------------


def test_workflow_1_causal_trace_sweep():
    model = create_gpt2_lm()  # seed: AutoModelForCausalLM.from_pretrained("gpt2-xl")
    tokenizer = make_tokenizer()  # seed: AutoTokenizer.from_pretrained("gpt2-xl")

    # 1. Define clean and corrupted inputs
    clean_prompt = "The Space Needle is in downtown"
    corrupted_prompt = "The ##### ###### ## ## ########"  # Noise

    clean_tokens = tokenizer(clean_prompt, return_tensors="pt")
    corrupted_tokens = tokenizer(corrupted_prompt, return_tensors="pt")

    # 2. Get clean activations (source)
    with torch.no_grad():
        clean_outputs = model(**clean_tokens, output_hidden_states=True)
        clean_states = clean_outputs.hidden_states

    # 3. Define restoration intervention
    def run_causal_trace(layer, position):
        """Restore clean activation at specific layer and position."""
        config = pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=layer,
                    component="block_output",
                    intervention_type=pv.VanillaIntervention,
                    unit="pos",
                    max_number_of_units=1,
                )
            ]
        )

        intervenable = pv.IntervenableModel(config, model)

        # Run with intervention
        _, patched_outputs = intervenable(
            base=corrupted_tokens,
            sources=[clean_tokens],
            unit_locations={"sources->base": ([[[position]]], [[[position]]])},
            output_original_output=True,
        )

        # Return probability of correct token
        probs = torch.softmax(patched_outputs.logits[0, -1], dim=-1)
        seattle_token = tokenizer.encode(" Seattle")[0]
        return probs[seattle_token].item()

    # 4. Sweep over layers and positions
    n_layers = model.config.n_layer
    seq_len = clean_tokens["input_ids"].shape[1]

    results = torch.zeros(n_layers, seq_len)
    for layer in range(n_layers):
        for pos in range(seq_len):
            results[layer, pos] = run_causal_trace(layer, pos)

    assert tokenizer.encode(" Seattle")[0] == SEATTLE
    assert corrupted_tokens["input_ids"].shape == clean_tokens["input_ids"].shape == (1, 7)
    # hidden_states[i + 1] is block i's output: the clean values patched in by hand.
    blocks = model.transformer.h
    for layer in range(n_layers):
        for pos in range(seq_len):
            patched, _ = plain_run(
                model, corrupted_tokens,
                [(blocks[layer], "output", put_at(pos, clean_states[layer + 1][:, pos]))],
            )
            prob = torch.softmax(patched.logits[0, -1], -1)[SEATTLE].item()
            assert math.isclose(results[layer, pos].item(), prob, rel_tol=1e-4, abs_tol=1e-7)
    clean_prob = torch.softmax(clean_outputs.logits[0, -1], -1)[SEATTLE].item()
    assert math.isclose(results[-1, -1].item(), clean_prob, rel_tol=1e-4)
    corrupted_prob = torch.softmax(model(**corrupted_tokens).logits[0, -1], -1)[SEATTLE].item()
    assert not math.isclose(corrupted_prob, clean_prob, rel_tol=1e-3)

    # output_original_output=True: the first output is the corrupted run, unpatched.
    intervenable = pv.IntervenableModel(pv.RepresentationConfig(
        layer=2, component="block_output", intervention_type=pv.VanillaIntervention,
        unit="pos", max_number_of_units=1), model)
    original, patched = intervenable(
        base=corrupted_tokens, sources=[clean_tokens],
        unit_locations={"sources->base": ([[[3]]], [[[3]]])}, output_original_output=True)
    with torch.no_grad():
        assert_close(original.logits, model(**corrupted_tokens).logits, atol=0)
    assert_differs(patched.logits, original.logits)


def test_workflow_2_attention_patching():
    model = create_gpt2_lm()  # seed: AutoModelForCausalLM.from_pretrained("gpt2")
    tokenizer = make_tokenizer()  # seed: AutoTokenizer.from_pretrained("gpt2")

    # IOI task setup
    clean_prompt = "When John and Mary went to the store, Mary gave a bottle to"
    corrupted_prompt = "When John and Mary went to the store, John gave a bottle to"

    clean_tokens = tokenizer(clean_prompt, return_tensors="pt")
    corrupted_tokens = tokenizer(corrupted_prompt, return_tensors="pt")

    john_token = tokenizer.encode(" John")[0]
    mary_token = tokenizer.encode(" Mary")[0]

    def logit_diff(logits):
        """IO - S logit difference."""
        return logits[0, -1, john_token] - logits[0, -1, mary_token]

    # Patch attention output at each layer
    def patch_attention(layer):
        config = pv.IntervenableConfig(
            representations=[
                pv.RepresentationConfig(
                    layer=layer,
                    component="attention_output",
                    intervention_type=pv.VanillaIntervention,
                )
            ]
        )

        intervenable = pv.IntervenableModel(config, model)

        _, patched_outputs = intervenable(
            base=corrupted_tokens,
            sources=[clean_tokens],
        )

        return logit_diff(patched_outputs.logits).item()

    # Find which layers matter
    results = []
    for layer in range(model.config.n_layer):
        diff = patch_attention(layer)
        results.append(diff)

    blocks = model.transformer.h
    _, clean_attn = plain_run(
        model, clean_tokens, captures=[(b.attn, "output") for b in blocks]
    )
    corrupted_diff = logit_diff(model(**corrupted_tokens).logits).item()
    for layer, diff in enumerate(results):
        patched, _ = plain_run(
            model, corrupted_tokens, [(blocks[layer].attn, "output", lambda x, a=clean_attn[layer]: a)]
        )
        assert math.isclose(diff, logit_diff(patched.logits).item(), rel_tol=1e-4, abs_tol=1e-5)
    assert any(abs(d - corrupted_diff) > 1e-4 for d in results)


def test_api_reference_configs():
    """Position-specific, multiple-site and subspace-partition configs of the API reference."""
    _, tokenizer, gpt2 = create_gpt2()
    base_tokens = tokenizer("The ##### ###### ## ## ########", return_tensors="pt")
    source_tokens = tokenizer("The Space Needle is in downtown", return_tensors="pt")

    # Issue: Dimension mismatch -- position-specific interventions
    config = pv.RepresentationConfig(
        unit="pos",
        max_number_of_units=1,  # Intervene on single position
    )
    intervenable = pv.IntervenableModel(pv.IntervenableConfig(representations=[config]), gpt2)
    _, out = intervenable(
        base=base_tokens,
        sources=[source_tokens],
        unit_locations={"sources->base": ([[[5]]], [[[5]]])},  # Position 5
    )
    _, (src0,) = plain_run(gpt2, source_tokens, captures=[(gpt2.h[0], "output")])
    expected, _ = plain_run(gpt2, base_tokens, [(gpt2.h[0], "output", put_at(5, src0[:, 5]))])
    assert_close(out.last_hidden_state, expected.last_hidden_state)

    # Multiple Interventions: three sites, one source broadcast to all of them
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=3, component="block_output"),
            pv.RepresentationConfig(layer=5, component="mlp_output"),
            pv.RepresentationConfig(layer=7, component="attention_output"),
        ]
    )
    intervenable = pv.IntervenableModel(config, gpt2)
    # (a call of ours: one position per site, since swapping layer 3's whole output would
    # make every later site equal to the source's anyway)
    _, out = intervenable(base=base_tokens, sources=[source_tokens],
                          unit_locations={"sources->base": [[[1]], [[3]], [[5]]]})
    sites = [(gpt2.h[3], "output"), (gpt2.h[5].mlp, "output"), (gpt2.h[7].attn, "output")]
    _, src = plain_run(gpt2, source_tokens, captures=sites)
    edits = [(m, side, put_at(pos, v[:, pos])) for (m, side), v, pos in zip(sites, src, [1, 3, 5])]
    expected, _ = plain_run(gpt2, base_tokens, edits)
    assert_close(out.last_hidden_state, expected.last_hidden_state)
    for dropped in range(3):  # every site matters
        partial, _ = plain_run(gpt2, base_tokens, edits[:dropped] + edits[dropped + 1:])
        assert_differs(out.last_hidden_state, partial.last_hidden_state)

    # Subspace intervention; the seed's [[0, 256], [256, 512]] scaled to the tiny width
    config = pv.RepresentationConfig(
        layer=5,
        component="block_output",
        intervention_type=pv.VanillaIntervention,
        subspace_partition=[[0, N_EMBD // 2], [N_EMBD // 2, N_EMBD]],
    )
    intervenable = pv.IntervenableModel(pv.IntervenableConfig(representations=[config]), gpt2)
    _, out = intervenable(base=base_tokens, sources=[source_tokens],
                          unit_locations={"sources->base": 2}, subspaces=[1])
    _, (src5,) = plain_run(gpt2, source_tokens, captures=[(gpt2.h[5], "output")])
    upper = list(range(N_EMBD // 2, N_EMBD))
    expected, _ = plain_run(
        gpt2, base_tokens, [(gpt2.h[5], "output", put_at(2, src5[:, 2, upper], upper))]
    )
    assert_close(out.last_hidden_state, expected.last_hidden_state)
    whole, _ = plain_run(gpt2, base_tokens, [(gpt2.h[5], "output", put_at(2, src5[:, 2]))])
    assert_differs(out.last_hidden_state, whole.last_hidden_state)


def test_save_and_load_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, tokenizer, model = create_gpt2()
    base_inputs = tokenizer("The capital of Spain is", return_tensors="pt")
    source_inputs = tokenizer("The capital of Italy is", return_tensors="pt")
    config = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=5,
                component="block_output",
                intervention_type=pv.VanillaIntervention,
            ),
            pv.RepresentationConfig(
                layer=6,
                component="mlp_output",
                intervention_type=pv.AdditionIntervention,
                source_representation=torch.linspace(-1, 1, N_EMBD),
            ),
        ]
    )
    intervenable = pv.IntervenableModel(config, model)
    call = {"base": base_inputs, "sources": [source_inputs, None],
            "unit_locations": {"sources->base": ([[[3]], None], [[[3]], [[4]]])}}
    _, before = intervenable(**call)

    # Save locally
    intervenable.save("./my_intervention")

    # Load from local
    intervenable = pv.IntervenableModel.load(
        "./my_intervention",
        model=model,
    )
    _, after = intervenable(**call)
    assert_close(after.last_hidden_state, before.last_hidden_state, atol=0)
    plain, _ = plain_run(model, base_inputs)
    assert_differs(after.last_hidden_state, plain.last_hidden_state)


def test_save_intervention_as_in_the_api_reference(tmp_path, monkeypatch):
    """``intervenable.save_intervention("username/my-intervention")``, then ``load``. In
    pyvene 0.1.8 ``save_intervention(save_directory)`` writes to a local directory (the API
    reference presents it as a Hub push); run in a temporary directory."""
    monkeypatch.chdir(tmp_path)
    _, tokenizer, model = create_gpt2()
    intervenable = pv.IntervenableModel(
        pv.RepresentationConfig(layer=6, component="mlp_output",
                                intervention_type=pv.AdditionIntervention,
                                source_representation=torch.linspace(-1, 1, N_EMBD)),
        model,
    )
    base_inputs = tokenizer("The capital of Spain is", return_tensors="pt")
    _, before = intervenable(base=base_inputs, unit_locations={"base": 4})

    # Share on HuggingFace
    intervenable.save_intervention("username/my-intervention")

    # Load from HuggingFace
    intervenable = pv.IntervenableModel.load(
        "username/my-intervention",
        model=model,
    )
    _, after = intervenable(base=base_inputs, unit_locations={"base": 4})
    assert_close(after.last_hidden_state, before.last_hidden_state, atol=0)


@pytest.mark.parametrize("stream", ["block_output", "mlp_activation", "attention_output"])
def test_tracing_config_builds_the_seed_windows(stream):
    """tracing_config's windows: one block output, or 10 sites clipped at the edges."""
    _, _, gpt = create_gpt2()
    w = 1 if stream == "block_output" else 10
    for layer, expected in [(0, range(0, 1 if w == 1 else 5)), (N_LAYER - 1, None)]:
        config, n_r = tracing_config(layer, stream, w)
        t_gpt = pv.IntervenableModel(config, gpt)
        layers = [r.layer for r in config.representations[1:]]
        if expected is not None:
            assert layers == list(expected)
        assert n_r == len(layers)
        assert layers[-1] == (layer if w == 1 else min(N_LAYER - 1, layer + 4))
        types = [type(t_gpt.interventions[k]) for k in t_gpt.sorted_keys]
        assert types == [pv.NoiseIntervention] + [pv.VanillaIntervention] * n_r


def test_common_issue_wrong_component_name():
    """API reference, "Issue: Wrong intervention location": "mlp" is not a component."""
    _, _, gpt2 = create_gpt2()
    # WRONG: Incorrect component name
    config = pv.RepresentationConfig(
        component="mlp",  # Not valid!
    )
    with pytest.raises(ValueError, match="'mlp'.*mlp_output"):
        pv.IntervenableModel(pv.IntervenableConfig(representations=[config]), gpt2)

    # RIGHT: Use exact component name
    config = pv.RepresentationConfig(
        component="mlp_output",  # Valid
    )
    im = pv.IntervenableModel(pv.IntervenableConfig(representations=[config]), gpt2)
    assert im.interventions[im.sorted_keys[0]].embed_dim == N_EMBD
