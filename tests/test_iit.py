"""Interchange intervention training (job=iit): the loss against a computation with plain
forward hooks, gradients into the model, a short run that moves neuron-aligned IIA up where
training without IIT does not, the job end to end, and bad configs refused before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import assert_refused_before_any_work
from safetensors.torch import load_file
from torch import nn

from das_train import cli
from das_train.core.builtin_models import MLPClassifier, MLPConfig, create_mlp_classifier
from das_train.training import run as run_module
from das_train.training.iit_job import iit_subject, train_model
from das_train.training.iit_module import IITModule
from das_train.training.schema import RunConfig

BLOCKS = {"WX": [0, 3], "YZ": [3, 6]}


def tiny_mlp(seed: int = 0) -> nn.Module:
    config = MLPConfig(h_dim=8, n_layer=2, input_dim=4, num_classes=2, activation_function="relu", pdrop=0.0)
    return create_mlp_classifier(config, seed=seed)[2]


def random_batch(n: int = 5) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    batch = {}
    for v in BLOCKS:
        batch[f"{v}.base_inputs_embeds"] = torch.randn(n, 4, generator=gen)
        batch[f"{v}.source_inputs_embeds"] = torch.randn(n, 4, generator=gen)
        batch[f"{v}.base_label"] = torch.randint(0, 2, (n,), generator=gen)
        batch[f"{v}.counterfactual_label"] = torch.randint(0, 2, (n,), generator=gen)
    return batch


def hand_iit_loss(model: nn.Module, batch: dict[str, torch.Tensor], layer: int = 0) -> torch.Tensor:
    """Run the source, keep the block of the layer's output, patch it into the base's, and take
    the cross-entropy against the counterfactual label; mean over the variables."""
    block = model.mlp.h[layer]
    losses = []
    for v, (start, stop) in BLOCKS.items():
        kept = {}
        handle = block.register_forward_hook(lambda m, i, out, kept=kept: kept.setdefault("source", out))
        model(inputs_embeds=batch[f"{v}.source_inputs_embeds"])
        handle.remove()

        def patch(module, inputs, out, start=start, stop=stop, kept=kept):
            out = out.clone()
            out[:, start:stop] = kept["source"][:, start:stop]
            return out

        handle = block.register_forward_hook(patch)
        logits = model(inputs_embeds=batch[f"{v}.base_inputs_embeds"]).logits
        handle.remove()
        losses.append(nn.functional.cross_entropy(logits, batch[f"{v}.counterfactual_label"]))
    return torch.stack(losses).mean()


def test_iit_loss_matches_plain_hooks_and_its_gradients_reach_every_weight():
    batch = random_batch()
    hand_model = tiny_mlp()
    module = IITModule(tiny_mlp(), BLOCKS)
    loss = module.iit_loss(batch)
    expected = hand_iit_loss(hand_model, batch)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    expected.backward()
    for (name, p), q in zip(module.model.named_parameters(), hand_model.parameters(), strict=True):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    # The fixed interchange has nothing to train: the optimizer holds the model's weights alone.
    (intervention,) = module.intervenable.interventions.values()
    assert not list(intervention.parameters())
    assert {id(p) for p in module.configure_optimizers().param_groups[0]["params"]} == {
        id(p) for p in module.model.parameters()}


def test_task_loss_and_the_weights_of_the_two_losses():
    batch = random_batch()
    module = IITModule(tiny_mlp(), BLOCKS, task_weight=0.5, iit_weight=2.0)
    bases = torch.cat([batch["WX.base_inputs_embeds"], batch["YZ.base_inputs_embeds"]])
    labels = torch.cat([batch["WX.base_label"], batch["YZ.base_label"]])
    task = nn.functional.cross_entropy(tiny_mlp()(inputs_embeds=bases).logits, labels)
    torch.testing.assert_close(module.task_loss(batch), task)
    module.log = lambda *a, **k: None  # outside a Trainer
    torch.testing.assert_close(module.training_step(batch, 0), 0.5 * task + 2.0 * hand_iit_loss(tiny_mlp(), batch))
    without = IITModule(tiny_mlp(), BLOCKS, iit_weight=0.0)
    without.log = module.log
    torch.testing.assert_close(without.training_step(batch, 0), task)


def small_config(tmp_path, **iit) -> RunConfig:
    config = RunConfig(job="iit", progress=False, run_dir=str(tmp_path))
    config.task.name = "hierarchical_equality"
    config.model.kind, config.model.hidden = "mlp", 32
    config.logger.kind = "none"
    settings = {"blocks": {"WX": [0, 8], "YZ": [8, 16]}, "steps": 200, "batch_size": 256, "train_pairs": 10_000,
                "eval_pairs": 500, "eval_every": 100, "lr": 0.005} | iit
    config.iit = dataclasses.replace(config.iit, **settings)
    return config


def test_a_short_iit_run_moves_neuron_aligned_iia_up_where_plain_training_does_not(tmp_path):
    config = small_config(tmp_path)
    subject = iit_subject(config)
    data = subject.data(config)
    with_iit, curve = train_model(config, tmp_path, subject, data, "iit")
    without, _ = train_model(config, tmp_path, subject, data, "no_iit")
    after, before = with_iit.neuron_iia(data.test), without.neuron_iia(data.test)
    for v in ("WX", "YZ"):
        assert after[v] >= 0.85 and after[v] > before[v] + 0.2, (after, before)
    assert [step for step, v, _ in curve if v == "WX"] == [0, 100, 200]
    first = {v: iia for step, v, iia in curve if step == 0}
    assert all(after[v] > first[v] + 0.2 for v in first)


def test_the_job_writes_its_table_curve_models_and_interventions(tmp_path):
    run_dir = tmp_path / "run"
    cfg = cli.check("iit_hierarchical_equality", [f"run_dir={run_dir}", "progress=false", "logger=none",
                                                  "iit.steps=20", "iit.train_pairs=2000", "iit.eval_pairs=200",
                                                  "trainer.max_steps=5"])
    run_module.run(cfg)
    lines = (run_dir / "iit.csv").read_text().splitlines()
    assert lines[0].split(",") == ["training", "task_accuracy", "neuron_iia_WX", "neuron_iia_YZ",
                                   "das_iia_WX", "das_iia_YZ"]
    assert [line.split(",")[0] for line in lines[1:]] == ["iit", "no_iit"]
    assert (run_dir / "iit_curve.png").read_bytes()[:4] == b"\x89PNG"
    for training in ("iit", "no_iit"):
        folder = run_dir / "models" / training
        model = MLPClassifier(MLPConfig(**json.loads((folder / "config.json").read_text())))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))  # strict: every weight
        for v in ("WX", "YZ"):
            assert (run_dir / "interventions" / f"das-{training}-{v}" / "config.json").exists()


BAD = {
    "no block": (["iit.variables=[WX,YZ]", "iit.blocks={WX:[0,16]}"],
                 ["variable 'YZ' has no block: set 'iit.blocks.YZ' = [start, stop]"]),
    "overlap": (["iit.blocks={WX:[0,16],YZ:[8,24]}"],
                ["'iit.blocks.WX' = [0, 16] and 'iit.blocks.YZ' = [8, 24] overlap"]),
    "outside": (["iit.blocks={WX:[0,16],YZ:[60,80]}"],
                ["'iit.blocks.YZ' = [60, 80] is outside the layer's 64 units"]),
    "unknown": (["iit.variables=[WX,AB]", "iit.blocks={WX:[0,16],AB:[16,32]}"],
                ["'iit.variables' holds unknown variable 'AB'; allowed: ['WX', 'YZ']",
                 "'iit.blocks.AB': unknown variable 'AB'"]),
    "all at once": (["iit.variables=[WX,YZ,AB]", "iit.blocks={WX:[0,16],AB:[16,32]}", "iit.layer=7"],
                    ["variable 'YZ' has no block", "unknown variable 'AB'", "'iit.layer' = 7 is not a layer of the model; allowed: 0..2"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_iit_config_is_refused_before_any_work_naming_the_key(case, tmp_path):
    overrides, expected = BAD[case]
    assert_refused_before_any_work("iit_hierarchical_equality", overrides, expected, tmp_path / "run")


def test_a_module_built_in_code_refuses_overlapping_blocks():
    with pytest.raises(ValueError, match=r"'IITModule.blocks.WX' = \[0, 4\] and 'IITModule.blocks.YZ' = \[3, 6\] overlap"):
        IITModule(tiny_mlp(), {"WX": [0, 4], "YZ": [3, 6]})
    with pytest.raises(ValueError, match="outside the layer's 8 units"):
        IITModule(tiny_mlp(), {"WX": [0, 9]})
