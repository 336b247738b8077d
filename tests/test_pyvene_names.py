"""The names pyvene 0.1.8 tutorials import from ``pyvene``, and the Boundless DAS tutorial's
training loop, run unchanged after ``import das_train as pv`` on a tiny Llama built offline."""

# The tutorial's loops are kept as written, unused loop variables included.
# ruff: noqa: B007

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import transformers
from torch.nn import CrossEntropyLoss
from transformers import LlamaConfig, get_linear_schedule_with_warmup

import das_train as pv

VOCAB = 64


class CharTokenizer:
    def decode(self, tok):
        return {0: "a b", 1: "c\n", 2: "d"}.get(tok, "?")


def test_utils_agree_with_pyvene():
    pyvene = pytest.importorskip("pyvene")
    streams = []
    for lib in (pv, pyvene):
        lib.set_seed(7)
        streams.append((random.random(), np.random.rand(), torch.rand(3), lib.random_permutation_matrix(5)))
    for ours, theirs in zip(*streams):
        torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(theirs), rtol=0, atol=0)
    x = torch.linspace(-2, 6, 41)
    for name in ("sigmoid_boundary", "harmonic_sigmoid_boundary"):
        torch.testing.assert_close(getattr(pv, name)(x, 1.0, 3.0, 0.5), getattr(pyvene, name)(x, 1.0, 3.0, 0.5))
    rotation = torch.rand(4, 4)
    torch.testing.assert_close(pv.closeness_to_permutation_loss(rotation), pyvene.closeness_to_permutation_loss(rotation))
    dist = torch.tensor([0.1, 0.6, 0.3])
    assert pv.top_vals(CharTokenizer(), dist, n=2, return_results=True) == pyvene.top_vals(
        CharTokenizer(), dist, n=2, return_results=True) == [("c\\n", pytest.approx(0.6)), ("d", pytest.approx(0.3))]
    assert pv.format_token(CharTokenizer(), 0) == pyvene.format_token(CharTokenizer(), 0) == "a_b"
    assert pv.GET_LOC((2, 5), batch_size=3) == pyvene.GET_LOC((2, 5), batch_size=3)
    assert pv.GET_LOC(4, unit="pos", batch_size=2) == [[[4], [4]]]
    nested = [[[1], [2, [3]]]]
    assert pv.get_list_depth(nested) == pyvene.get_list_depth(nested) == 4
    batch = {"input_ids": torch.zeros(6, 2)}
    assert pv.get_batch_size(batch) == pyvene.get_batch_size(batch) == 6
    linear = torch.nn.Linear(3, 2)
    linear.bias.requires_grad_(False)
    assert pv.count_parameters(linear) == pyvene.count_parameters(linear) == 6


def test_build_intervenable_model_is_the_constructor():
    _, llama = _tiny_llama()
    im = pv.build_intervenable_model({"layer": 0, "component": "block_output"}, llama)
    assert isinstance(im, pv.IntervenableModel) and im.model_config is llama.config


def test_loaders_build_from_a_config_offline():
    config = LlamaConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                         vocab_size=VOCAB, max_position_embeddings=32)
    returned, tokenizer, model = pv.create_llama(config=config)
    assert returned is config and tokenizer is None and isinstance(model, transformers.LlamaForCausalLM)
    gpt2_config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=16)
    _, _, gpt2 = pv.create_gpt2_lm("gpt2", gpt2_config)  # pyvene's positional order
    assert isinstance(gpt2, transformers.GPT2LMHeadModel) and not gpt2.training


def _tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=32, vocab_size=VOCAB, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    config, tokenizer, llama = pv.create_llama(config=config)
    return config, llama


def _price_tagging_batches(n_batches=3, batch_size=4, length=6):
    """Stand-in for the tutorial's dataset: labels are -100 except at the last position."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n_batches):
        labels = torch.full((batch_size, length), -100)
        labels[:, -1] = torch.randint(1, VOCAB, (batch_size,), generator=g)
        batches.append({"input_ids": torch.randint(1, VOCAB, (batch_size, length), generator=g),
                        "source_input_ids": torch.randint(1, VOCAB, (batch_size, length), generator=g),
                        "labels": labels})
    return batches


def test_boundless_das_tutorial_loop_runs_unchanged():
    config, llama = _tiny_llama()
    _ = llama.eval()
    frozen = {k: v.clone() for k, v in llama.state_dict().items()}
    device = "cpu"

    # -- from here on, the tutorial's code (device "cuda" -> "cpu", layer 15 -> 1, token 80 -> 4)
    def simple_boundless_das_position_config(model_type, intervention_type, layer):
        config = pv.IntervenableConfig(
            model_type=model_type,
            representations=[pv.RepresentationConfig(layer, intervention_type)],
            intervention_types=pv.BoundlessRotatedSpaceIntervention,
        )
        return config

    config = simple_boundless_das_position_config(type(llama), "block_output", 1)
    intervenable = pv.IntervenableModel(config, llama)
    intervenable.set_device(device)
    intervenable.disable_model_gradients()

    train_dataloader = _price_tagging_batches()
    epochs, gradient_accumulation_steps, total_step = 2, 1, 0
    t_total = int(len(train_dataloader) * epochs)
    warm_up_steps = 0.1 * t_total
    optimizer_params = []
    for k, v in intervenable.interventions.items():
        optimizer_params += [{"params": v.rotate_layer.parameters()}]
        optimizer_params += [{"params": v.intervention_boundaries, "lr": 1e-2}]
    optimizer = torch.optim.Adam(optimizer_params, lr=1e-3)
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=warm_up_steps, num_training_steps=t_total)

    def compute_metrics(eval_preds, eval_labels):
        total_count, correct_count = 0, 0
        for eval_pred, eval_label in zip(eval_preds, eval_labels):
            actual_test_labels = eval_label[:, -1]
            pred_test_labels = torch.argmax(eval_pred[:, -1], dim=-1)
            correct_labels = actual_test_labels == pred_test_labels
            total_count += len(correct_labels)
            correct_count += correct_labels.sum().tolist()
        return {"accuracy": round(correct_count / total_count, 2)}

    def calculate_loss(logits, labels):
        shift_logits = logits[..., :, :].contiguous()
        shift_labels = labels[..., :].contiguous()
        loss_fct = CrossEntropyLoss()
        shift_logits = shift_logits.view(-1, intervenable.model_config.vocab_size)
        shift_labels = shift_labels.view(-1).to(shift_logits.device)
        loss = loss_fct(shift_logits, shift_labels)
        for k, v in intervenable.interventions.items():
            boundary_loss = 1.0 * v.intervention_boundaries.sum()
        loss += boundary_loss
        return loss

    temperature_start, temperature_end = 50.0, 0.1
    temperature_schedule = torch.linspace(temperature_start, temperature_end, t_total).to(torch.bfloat16).to(device)
    intervenable.set_temperature(temperature_schedule[total_step])
    intervenable.model.train()  # train mode
    losses = []
    for epoch in range(epochs):
        for step, inputs in enumerate(train_dataloader):
            for k, v in inputs.items():
                if v is not None and isinstance(v, torch.Tensor):
                    inputs[k] = v.to(device)
            _, counterfactual_outputs = intervenable(
                {"input_ids": inputs["input_ids"]},
                [{"input_ids": inputs["source_input_ids"]}],
                {"sources->base": 4},  # swap the 4th token
            )
            eval_metrics = compute_metrics([counterfactual_outputs.logits], [inputs["labels"]])
            loss = calculate_loss(counterfactual_outputs.logits, inputs["labels"])
            losses.append(loss.item())
            if gradient_accumulation_steps > 1:
                loss = loss / gradient_accumulation_steps
            loss.backward()
            if total_step % gradient_accumulation_steps == 0:
                if not (gradient_accumulation_steps > 1 and total_step == 0):
                    optimizer.step()
                    scheduler.step()
                    intervenable.set_zero_grad()
                    intervenable.set_temperature(temperature_schedule[total_step])
            total_step += 1
    # -- end of the tutorial's code

    assert 0.0 <= eval_metrics["accuracy"] <= 1.0 and all(np.isfinite(losses))
    (intervention,) = intervenable.interventions.values()
    assert intervention.get_temperature().item() == pytest.approx(temperature_schedule[t_total - 1].item(), rel=1e-2)
    assert intervention.intervention_boundaries.grad is None or not intervention.intervention_boundaries.grad.any()
    assert intervention.intervention_boundaries.item() != pytest.approx(0.5, abs=1e-6)  # it trained
    for key, value in llama.state_dict().items():
        torch.testing.assert_close(value, frozen[key], rtol=0, atol=0)
