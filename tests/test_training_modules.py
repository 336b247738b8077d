"""The Lightning pieces of the training framework, on a tiny GPT-NeoX and hand-made pairs.

Pairs are random token ids with random labels built here (no task module, no tokenizer): these
tests check the machinery (what is trained, what is saved, what the schedule sets, how counts
merge, what is collected), not that DAS finds anything; the planted-direction tests in
``test_das_planted.py`` do that.
"""

from __future__ import annotations

import copy

import lightning
import pytest
import torch
import transformers
from conftest import random_pair_rows
from torch.utils.data import DataLoader

import das_train as pv
from das_train.training.callbacks import TemperatureAnnealing
from das_train.training.das_loop import boundless_temperature, counterfactual_loss
from das_train.training.das_module import DASModule
from das_train.training.metrics import CountingAccuracy, InterchangeInterventionAccuracy
from das_train.training.probe import collect_activations, fit_probe
from das_train.training.probe_results import probe_with_control

pytestmark = [
    # Tiny in-memory datasets: worker processes would only add start-up time.
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    # Fits here train only; validation is tested on its own.
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
    # Raised inside lightning's own _pytree shim under torch >= 2.13; nothing of ours.
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
]

VOCAB, LENGTH, HIDDEN = 48, 5, 32
POSITION = 2


def tiny_neox() -> transformers.GPTNeoXForCausalLM:
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=HIDDEN, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
    )
    return transformers.GPTNeoXForCausalLM(config).eval()


def pair_rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    return random_pair_rows(n, seed, VOCAB, LENGTH)


def loader(n: int = 64, seed: int = 0, batch_size: int = 16) -> DataLoader:
    return DataLoader(pair_rows(n, seed), batch_size=batch_size, shuffle=False)


def trainer(max_steps: int, callbacks: list[lightning.Callback] | None = None) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=callbacks or [],
    )


class LossRecorder(lightning.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def make_module(model, seed: int = 0, **options) -> DASModule:
    torch.manual_seed(seed)  # the intervention's orthogonal init draws from the global RNG
    # Layer 0, not the last layer: a block output at a middle position reaches the last
    # position's logits only through a later layer's attention.
    return DASModule(model, layer=0, position=POSITION, **options)


# -- DASModule ------------------------------------------------------------------------------------

# Recorded on CPU with torch 2.13. To regenerate after an intended change, run this test with
# `print(recorder.losses)` before the assert and paste the printed list here.
GOLDEN_LOSSES = [3.862377, 3.920559, 3.877522, 3.849901, 3.861427]


def test_five_das_steps_reproduce_the_recorded_losses():
    module = make_module(tiny_neox(), lr=1e-2)
    recorder = LossRecorder()
    trainer(max_steps=5, callbacks=[recorder]).fit(module, loader())
    assert recorder.losses == pytest.approx(GOLDEN_LOSSES, abs=1e-4)


def test_a_training_forward_computes_the_last_positions_logits_only():
    from das_train.core.builtin_models import MLPClassifier, MLPConfig
    from das_train.training.das_module import prediction_only_options

    model = tiny_neox()
    module = make_module(model)
    assert module.call_options == {"logits_to_keep": 1}
    head_rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, args, out: head_rows.append(args[0].shape[1]))
    batch = next(iter(loader()))
    with torch.no_grad():
        kept = module(batch)
        module.call_options = {}
        whole = module(batch)  # every position's logits, the last one read
    handle.remove()
    assert head_rows == [1, batch["base_input_ids"].shape[1]]
    torch.testing.assert_close(kept, whole, rtol=0, atol=1e-6)
    # A model whose forward has no such option is called as it is.
    assert prediction_only_options(MLPClassifier(MLPConfig(input_dim=4, h_dim=8, n_layer=1))) == {}


def test_das_leaves_the_model_unchanged_and_iit_trains_it():
    model = tiny_neox().train()
    before = copy.deepcopy(model.state_dict())
    module = make_module(model, lr=1e-1)
    start = copy.deepcopy(module.state_dict())
    trainer(max_steps=3).fit(module, loader())
    assert any(not torch.equal(start[k], v) for k, v in module.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training  # DAS runs the frozen model without dropout

    iit_model = tiny_neox().train()  # IIT trains the model, in the mode its owner chose
    iit = make_module(iit_model, lr=1e-2, iit=True)
    optimized = {id(p) for p in iit.configure_optimizers().param_groups[0]["params"]}
    assert {id(p) for p in iit_model.parameters()} <= optimized
    trainer(max_steps=3).fit(iit, loader())
    changed = [k for k, v in iit_model.state_dict().items() if not torch.equal(before[k], v)]
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in changed


def test_checkpoint_holds_the_intervention_alone_in_das_mode(tmp_path):
    module = make_module(tiny_neox())
    run = trainer(max_steps=1)
    run.fit(module, loader(n=16))
    path = tmp_path / "das.ckpt"
    run.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)  # tensors and plain values only
    keys = list(checkpoint["state_dict"])
    assert keys and all(k.startswith("intervenable.interventions.") for k in keys), keys
    assert "model" not in checkpoint["hyper_parameters"]
    assert checkpoint["hyper_parameters"]["layer"] == 0
    stored = sum(t.numel() for t in checkpoint["state_dict"].values())
    assert stored < sum(p.numel() for p in module.model.parameters()) / 10

    restored = DASModule.load_from_checkpoint(path, model=tiny_neox(), weights_only=True)
    for name, tensor in module.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor), name

    iit = make_module(tiny_neox().train(), iit=True)
    run = trainer(max_steps=1)
    run.fit(iit, loader(n=16))
    run.save_checkpoint(tmp_path / "iit.ckpt")
    iit_keys = torch.load(tmp_path / "iit.ckpt", weights_only=True)["state_dict"]
    assert "model.gpt_neox.embed_in.weight" in iit_keys


def test_module_moves_the_frozen_model_with_it():
    module = make_module(tiny_neox())
    module.to(torch.float64)
    assert module.model.gpt_neox.embed_in.weight.dtype == torch.float64
    assert module.intervention.rotate_layer.parametrizations.weight.original.dtype == torch.float64


def test_a_trainer_places_the_frozen_model_once_and_teardown_leaves_it(monkeypatch):
    """Lightning moves a module to its device at every fit/test and to the CPU at teardown;
    a sweep's shared frozen model must not follow (on a GPU, a 7B model over PCIe four times a
    site). Spy: the frozen model's ``_apply``, which every ``.to``/``.cpu`` goes through."""
    model = tiny_neox()
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    moves: list[object] = []
    original = model._apply
    monkeypatch.setattr(model, "_apply", lambda fn, recurse=True: moves.append(fn) or original(fn, recurse))
    for seed in range(2):  # two sites of a sweep sharing the model
        module = make_module(model, seed=seed)
        run = trainer(max_steps=2)
        run.fit(module, loader(n=32))
        (tested,) = run.test(module, loader(n=24), verbose=False)
        assert tested["test/pairs"] == 24
    assert moves == []
    assert pointers == {name: p.data_ptr() for name, p in model.named_parameters()}

    module.to(torch.float64)  # outside a Trainer (this one has finished) it follows as before
    assert len(moves) == 1 and model.gpt_neox.embed_in.weight.dtype == torch.float64


def test_a_trainer_start_puts_the_frozen_model_on_the_module_device(monkeypatch):
    """The placement a Trainer's start makes, shown with `meta` standing in for a GPU."""
    module = make_module(tiny_neox())
    monkeypatch.setattr(DASModule, "device", property(lambda self: torch.device("meta")))
    module.on_fit_start()
    assert {p.device.type for p in module.model.parameters()} == {"meta"}


def test_validation_logs_the_same_iia_as_the_helper():
    module = make_module(tiny_neox())
    pairs = loader(n=40, batch_size=16)  # a short last batch: counts, not batch means
    (result,) = trainer(max_steps=1).validate(module, pairs, verbose=False)
    assert result["val/iia"] == pytest.approx(module.iia(pairs))
    with torch.no_grad():
        right = sum(int((module(b).argmax(-1) == b["counterfactual_label"]).sum()) for b in pairs)
    assert module.iia(pairs) == pytest.approx(right / 40)


def test_vector_task_intervenes_on_the_whole_activation():
    _, _, mlp = pv.create_mlp_classifier(pv.MLPConfig(h_dim=8, input_dim=8, num_classes=3), seed=0)
    module = DASModule(mlp, layer=0, position=None, is_language_model_task=False)
    gen = torch.Generator().manual_seed(0)
    batch = {"base_inputs_embeds": torch.randn(4, 8, generator=gen),
             "source_inputs_embeds": torch.randn(4, 8, generator=gen),
             "counterfactual_label": torch.tensor([0, 1, 2, 0])}
    assert module(batch).shape == (4, 3)
    counterfactual_loss(module(batch), batch["counterfactual_label"]).backward()
    assert module.intervention.rotate_layer.parametrizations.weight.original.grad is not None


def test_unknown_or_untrainable_interventions_are_refused_up_front():
    with pytest.raises(ValueError, match="unknown intervention"):
        DASModule(tiny_neox(), layer=0, intervention="NoSuchIntervention")
    with pytest.raises(ValueError, match="iit=True"):
        DASModule(tiny_neox(), layer=0, intervention="VanillaIntervention")


# -- temperature annealing --------------------------------------------------------------------------


class TemperatureRecorder(lightning.Callback):
    """Reads the buffer after TemperatureAnnealing (callbacks run in list order)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(float(pl_module.intervention.temperature))


def test_temperature_follows_the_schedule_and_is_never_optimized():
    module = make_module(tiny_neox(), intervention="BoundlessRotatedSpaceIntervention",
                         boundary_penalty=0.1, lr=1e-2)
    recorder = TemperatureRecorder()
    run = trainer(max_steps=4, callbacks=[TemperatureAnnealing(start=10.0, end=0.5), recorder])
    run.fit(module, loader())
    assert recorder.seen == pytest.approx([boundless_temperature(s, 4, 10.0, 0.5) for s in range(4)])
    assert recorder.seen[0] == pytest.approx(10.0) and recorder.seen[-1] == pytest.approx(0.5)
    temperature = module.intervention.temperature
    assert float(temperature) == pytest.approx(0.5)  # nothing but the schedule moved it
    optimized = [p for group in run.optimizers[0].param_groups for p in group["params"]]
    assert all(p is not temperature for p in optimized)
    assert "temperature" in dict(module.intervention.named_buffers())
    assert run.callback_metrics["train/temperature"] == pytest.approx(0.5)
    assert "train/intervention_size" in run.callback_metrics


# -- metrics -------------------------------------------------------------------------------------


def test_iia_metric_merges_counts_across_ranks():
    """Two ranks with unequal shares: the merged IIA is 4/10, not the mean of 3/4 and 1/6."""
    rank0, rank1 = InterchangeInterventionAccuracy(), InterchangeInterventionAccuracy()
    rank0.update(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 0]))
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 1, 1]), 2).float()
    rank1.update(logits, torch.tensor([0, 0, 0, 0, 0, 0]))  # scores are argmax-ed
    assert float(rank0.compute()) == pytest.approx(0.75)
    assert float(rank1.compute()) == pytest.approx(1 / 6)

    # What a DDP all-gather does: each state reduced with its dist_reduce_fx.
    gathered = {name: rank0._reductions[name](torch.stack([getattr(rank0, name), getattr(rank1, name)]))
                for name in ("correct", "total")}
    assert gathered == {"correct": torch.tensor(4), "total": torch.tensor(10)}
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(0.4)
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(CountingAccuracy().compute()) == 0.0  # nothing counted yet


# -- probes ----------------------------------------------------------------------------------------


def test_probe_finds_a_planted_variable_and_control_stays_at_chance():
    gen = torch.Generator().manual_seed(3)
    direction = torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    variables = torch.randint(0, 2, (400,), generator=gen)
    # Noise, plus +-3 along one direction by the variable's value: separable with a margin,
    # and off-centre and wide so the probe's standardization matters.
    noise = torch.randn(400, 16, generator=gen)
    noise = noise - (noise @ direction)[:, None] * direction  # nothing along `direction` but the signal
    activations = 5 * noise + 2 + (variables[:, None] * 2 - 1) * 3 * direction  # (N, D)
    controls = torch.randint(0, 2, (400,), generator=gen)  # a label no feature predicts
    # Full-batch steps: 20 optimizer steps per fit keep Lightning's per-step overhead small.
    options = {"max_epochs": 20, "batch_size": 512, "lr": 0.05, "seed": 0}
    result = probe_with_control(activations, variables, controls, n_classes=2, **options)
    assert result.accuracy >= 0.95
    assert result.control_accuracy <= 0.65
    assert result.selectivity >= 0.3
    again = fit_probe(activations, variables, 2, **options)
    assert again == result.accuracy  # deterministic for a seed


def test_collect_activations_match_a_plain_forward_hook():
    model = tiny_neox()
    pairs = loader(n=20, batch_size=8)
    activations, variables, controls = collect_activations(
        model, layer=1, component="block_output", position=3, dataloader=pairs)
    assert activations.shape == (20, HIDDEN) and activations.dtype == torch.float32
    assert all(p.requires_grad for p in model.parameters())  # collecting froze nothing

    seen: list[torch.Tensor] = []

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # (batch, seq, hidden)
        seen.append(hidden[:, 3].detach().clone())

    handle = model.gpt_neox.layers[1].register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in pairs:
                model(input_ids=batch["base_input_ids"], attention_mask=batch["base_attention_mask"])
    finally:
        handle.remove()
    assert torch.equal(activations, torch.cat(seen))
    rows = pair_rows(20, 0)
    assert torch.equal(variables, torch.stack([r["base_variable"] for r in rows]))
    assert torch.equal(controls, torch.stack([r["base_control"] for r in rows]))


def test_device_mapped_models_stay_where_accelerate_put_them():
    """A model spread by device_map is not moved when the module moves (a dtype change stands
    in for a device move here; the cross-device path itself needs two devices)."""
    from das_train.training.das_module import DASModule

    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)).eval()
    model.hf_device_map = {"": "cpu"}
    module = DASModule(model, layer=0, position=1)
    module.to(torch.float64)
    assert next(model.parameters()).dtype == torch.float32  # not moved along
    assert next(module.intervention.parameters()).dtype == torch.float64
