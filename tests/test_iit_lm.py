"""Interchange intervention training of a tiny language model (job=iit on a text task): the
loss at a token position against a computation with plain forward hooks, the site's keys
refused before any work, and recipe=iit_gender_tiny's claim (the gender where IIT put it, and
not there after ordinary training)."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import assert_refused_before_any_work
from torch import nn
from transformers import GPTNeoXForCausalLM

from das_train import cli
from das_train.data.tiny_lm import tiny_lm_config
from das_train.tasks.gender import GenderTask
from das_train.training import run as run_module
from das_train.training.iit_data import variable_rows
from das_train.training.iit_lm import TinyLM
from das_train.training.iit_module import IITModule
from das_train.training.schema import ConfigError

LAST, BLOCK, LAYER = 3, (2, 6), 1


def tiny_neox(tokenizer) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(tiny_lm_config(tokenizer, n_layer=2, hidden=16, heads=2, length=4))


def gender_batch(n: int = 6) -> tuple[TinyLM, dict[str, torch.Tensor]]:
    task = GenderTask()
    tokenizer = task.build_tokenizer()
    subject = TinyLM(task, tokenizer, task.spec(tokenizer))
    rows = variable_rows({"gender": subject.pairs(n, seed=3)})
    return subject, {key: value for key, value in rows.columns.items()}


def hand_iit_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run the source, keep dimensions 2-5 of layer 1's output at the last token, write them
    into the base's at the same token, and take the next-token cross-entropy at the last
    position against the counterfactual label."""
    layer, (start, stop) = model.gpt_neox.layers[LAYER], BLOCK
    kept = {}

    def keep(module, inputs, out):
        hidden = out[0] if isinstance(out, tuple) else out
        kept["source"] = hidden[:, LAST, start:stop]

    def patch(module, inputs, out):
        hidden = (out[0] if isinstance(out, tuple) else out).clone()
        hidden[:, LAST, start:stop] = kept["source"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = layer.register_forward_hook(keep)
    model(input_ids=batch["gender.source_input_ids"], attention_mask=batch["gender.source_attention_mask"])
    handle.remove()
    handle = layer.register_forward_hook(patch)
    logits = model(input_ids=batch["gender.base_input_ids"], attention_mask=batch["gender.base_attention_mask"]).logits
    handle.remove()
    return nn.functional.cross_entropy(logits[:, -1], batch["gender.counterfactual_label"])


def test_the_iit_loss_at_a_token_position_matches_plain_hooks_and_trains_every_weight():
    subject, batch = gender_batch()
    hand_model, model = tiny_neox(subject.tokenizer), tiny_neox(subject.tokenizer)
    module = IITModule(model, {"gender": list(BLOCK)}, layer=LAYER, position=LAST, is_language_model_task=True)
    loss, expected = module.iit_loss(batch), hand_iit_loss(hand_model, batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    reached = 0
    for (name, p), q in zip(module.model.named_parameters(), hand_model.parameters(), strict=True):
        if q.grad is None:  # the hand computation's unused weights (none expected) must be unused here too
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, msg=name)
        reached += bool(q.grad.any())
    assert reached > len(list(hand_model.parameters())) // 2
    # The interchange changed something: the loss differs from the plain model's on the bases.
    plain = nn.functional.cross_entropy(tiny_neox(subject.tokenizer)(input_ids=batch["gender.base_input_ids"]).logits[:, -1],
                                        batch["gender.counterfactual_label"])
    assert not torch.isclose(expected, plain)


def test_the_task_loss_reads_the_next_token_at_the_last_position():
    subject, batch = gender_batch()
    module = IITModule(tiny_neox(subject.tokenizer), {"gender": list(BLOCK)}, layer=LAYER, position=LAST,
                       is_language_model_task=True)
    logits = tiny_neox(subject.tokenizer)(input_ids=batch["gender.base_input_ids"]).logits[:, -1]
    torch.testing.assert_close(module.task_loss(batch), nn.functional.cross_entropy(logits, batch["gender.base_label"]))


BAD = {
    "unknown position": (["iit.position=end"], ["'iit.position' = 'end' is not a position of the task; allowed: "
                                                "['bos', 'name', 'verb', 'last']"]),
    "no position": (["iit.position=null"], ["'iit.position' is missing: a language model's site needs a token position"]),
    "layer out of range": (["iit.layer=4"], ["'iit.layer' = 4 is not a layer of the model; allowed: 0..3"]),
    "reference out of range": (["iit.reference_layer=9", "iit.reference_position=first"],
                               ["'iit.reference_layer' = 9 is not a layer of the model; allowed: 0..3",
                                "'iit.reference_position' = 'first' is not a position of the task"]),
    "block outside": (["iit.blocks={gender:[60,70]}"], ["'iit.blocks.gender' = [60, 70] is outside the layer's 64 units"]),
    "variable without a block": (["iit.blocks={}"], ["variable 'gender' has no block: set 'iit.blocks.gender'"]),
    "unknown variable": (["iit.variables=[WX]", "iit.blocks={WX:[0,8]}"],
                         ["'iit.variables' holds unknown variable 'WX'; allowed: ['gender']"]),
    "rank too wide": (["iit.das_rank=65"], ["'iit.das_rank' = 65 is wider than the layer's 64 units"]),
    "hub model": (["model=gpt2"], ["'model.kind' = 'hub': job=iit trains a model from scratch"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_site_is_refused_before_any_work_naming_the_key(case, tmp_path):
    overrides, expected = BAD[case]
    assert_refused_before_any_work("iit_gender_tiny", overrides, expected, tmp_path / "run")


def test_the_mlp_takes_no_position():
    with pytest.raises(ConfigError, match="'iit.position' = 'last': the MLP's layers have no token positions"):
        run_module.run(cli.compose("iit_hierarchical_equality", ["iit.position=last"]))


@pytest.mark.slow
def test_recipe_iit_gender_tiny_puts_the_gender_where_it_was_asked(tmp_path):
    """The recipe as shipped (about a minute on 2 CPU cores): after IIT, the gender is at L0
    last for the fixed interchange of its block and for rank-1 DAS; after ordinary training it
    is not there, though DAS finds it at L2 last in both models."""
    run_dir = run_module.run(cli.check("iit_gender_tiny", [f"run_dir={tmp_path}/run", "progress=false", "logger=none"]))
    with (run_dir / "iit.csv").open() as handle:
        rows = {row["training"]: {k: float(v) for k, v in row.items() if k != "training"} for row in csv.DictReader(handle)}
    with_iit, without = rows["iit"], rows["no_iit"]
    assert with_iit["task_accuracy"] == without["task_accuracy"] == 1.0
    assert with_iit["neuron_iia_gender"] >= 0.95 and with_iit["das_iia_gender"] >= 0.9
    assert without["neuron_iia_gender"] <= 0.7 and without["das_iia_gender"] <= 0.7
    assert with_iit["das_iia_gender_reference"] >= 0.9 and without["das_iia_gender_reference"] >= 0.9
    model = GPTNeoXForCausalLM.from_pretrained(run_dir / "models" / "iit")
    assert model.config.num_hidden_layers == 4
    for version in ("das-iit-gender", "das-no_iit-gender", "das-iit-gender-reference", "das-no_iit-gender-reference"):
        assert (run_dir / "interventions" / version / "config.json").is_file()
    assert (run_dir / "iit_curve.png").read_bytes()[:4] == b"\x89PNG"
