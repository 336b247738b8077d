"""Inputs the wrapped model cannot take are reported before any forward, naming the input
(base, sources[i]), all at once, as LocationError like the location problems: float or
out-of-vocabulary token ids, empty or too-long sequences, a mismatched attention mask, NaN or
inf in inputs_embeds or in a vector model's inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import ForwardCounter

import das_train as pv
from das_train.core.input_checks import InputChecks, position_limit, vocabulary_size

VOCAB, POSITIONS = 64, 32  # tests/conftest.py's tiny models


@pytest.fixture
def counted(gpt2):
    counter = ForwardCounter(gpt2)
    yield gpt2, counter
    counter.remove()


def block_output(model, layer=0):
    return pv.IntervenableModel({"layer": layer, "component": "block_output"}, model)


def good_ids(length=6):
    return torch.randint(1, VOCAB, (2, length))


def refused(im, base, sources, **kwargs) -> str:
    with pytest.raises(pv.LocationError) as err:
        im(base, sources, **kwargs)
    return str(err.value)


def test_every_bad_input_is_named_at_once_before_any_forward(counted):
    model, counter = counted
    im = block_output(model)
    base = {"input_ids": good_ids().float()}
    source = {"input_ids": torch.tensor([[1, 2, VOCAB, 3, -1, 5]] * 2), "attention_mask": torch.ones(2, 5)}
    message = refused(im, base, [source], unit_locations={"sources->base": 1})
    assert "base input_ids are torch.float32; token ids must be an integer tensor" in message
    assert f"sources[0] input_ids hold ids [-1, {VOCAB}] outside the model's vocabulary; allowed 0..{VOCAB - 1}" in message
    assert "sources[0] attention_mask has shape (2, 5) but input_ids (2, 6); it must be (2, 6)" in message
    assert counter.calls == 0


def test_empty_and_too_long_sequences(counted):
    model, counter = counted
    im = block_output(model)
    empty = {"input_ids": torch.zeros(2, 0, dtype=torch.long)}
    long = {"input_ids": torch.ones(2, POSITIONS + 1, dtype=torch.long)}
    message = refused(im, empty, [long])
    assert "base input_ids is an empty sequence (shape (2, 0))" in message
    assert f"sources[0] input_ids is {POSITIONS + 1} tokens long; the model takes at most {POSITIONS} (config.n_positions)" in message
    assert counter.calls == 0


def test_a_sequence_of_exactly_the_model_positions_runs(gpt2):
    im = block_output(gpt2)
    full = {"input_ids": torch.ones(2, POSITIONS, dtype=torch.long)}
    im(full, [full])


def test_nan_and_inf_in_inputs_embeds(neox):
    counter = ForwardCounter(neox)
    try:
        im = block_output(neox)
        embeds = torch.randn(2, 4, 16)
        bad = embeds.clone()
        bad[0, 1, 2] = float("nan")
        bad[1, 0, 0] = float("inf")
        message = refused(im, {"inputs_embeds": embeds}, [{"inputs_embeds": bad}])
        assert "sources[0] inputs_embeds hold nan and inf values; inputs must be finite" in message
        assert "base inputs_embeds" not in message
        assert counter.calls == 0
    finally:
        counter.remove()


def test_a_vector_model_input_with_nan_is_refused():
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=8, n_layer=2, input_dim=8), seed=0)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, mlp)
    base = torch.randn(3, 8)
    source = base.clone()
    source[2, 3] = float("-inf")
    message = refused(im, {"inputs_embeds": base}, [{"inputs_embeds": source}])
    assert "sources[0] inputs_embeds hold inf values" in message
    message = refused(im, source, [base])
    assert "base hold inf values; inputs must be finite" in message


def test_each_source_is_named_and_a_shared_one_checked_once(gpt2):
    im = pv.IntervenableModel([{"layer": 0, "component": "block_output"},
                               {"layer": 1, "component": "block_output"}], gpt2)
    bad = {"input_ids": torch.full((2, 6), VOCAB + 3)}
    message = refused(im, {"input_ids": good_ids()}, [{"input_ids": good_ids()}, bad])
    assert "sources[1] input_ids hold ids [67]" in message and "sources[0]" not in message
    message = refused(im, {"input_ids": good_ids()}, [bad, bad])
    assert message.count("hold ids [67]") == 1


def test_generate_checks_the_prompt(gpt2):
    im = block_output(gpt2)
    with pytest.raises(pv.LocationError, match="base input_ids are torch.float32"):
        im.generate({"input_ids": good_ids().float()}, max_new_tokens=2)


def test_a_bare_tensor_of_token_ids_is_checked(gpt2):
    im = block_output(gpt2)
    message = refused(im, torch.full((2, 6), -2), [good_ids()])
    assert "base (input_ids) hold ids [-2]" in message


def test_limits_are_read_from_the_model(gpt2, neox):
    assert vocabulary_size(gpt2) == VOCAB and position_limit(gpt2) == (POSITIONS, "n_positions")
    assert position_limit(neox) == (POSITIONS, "max_position_embeddings")
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=8, n_layer=2), seed=0)
    assert vocabulary_size(mlp) is None and position_limit(mlp) is None


def test_value_checks_are_read_back_together(gpt2, monkeypatch):
    """One stack and one read-back per device for all of a call's value checks."""
    stacked = []
    real_stack = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        stacked.append(len(tensors))
        return real_stack(tensors, *args, **kwargs)

    checks = InputChecks(gpt2)
    checks.add({"input_ids": good_ids()}, "base")
    checks.add({"input_ids": good_ids(), "inputs_embeds": None}, "sources[0]")
    monkeypatch.setattr(torch, "stack", counting_stack)
    assert checks.problems() == []
    assert stacked == [2]
