"""Models larger than one device, on the CPU: accelerate's real dispatch and bf16 autocast.

A 7B model that does not fit one GPU is loaded with ``device_map`` and accelerate puts an
``AlignDevicesHook`` on its modules, keeping offloaded weights on the ``meta`` device until a
forward needs them. Here a tiny model is dispatched the same way with part of it offloaded
to disk (and, separately, wholly offloaded with ``cpu_offload``), so the hook core, the
DASModule and a Lightning fit meet those hooks and ``meta`` weights for real. Every result is
compared with the same model undispatched; the tolerance is exact equality, since the
offloaded weights are loaded back bit for bit and run the same CPU kernels.
"""

from __future__ import annotations

import copy

import lightning
import pytest
import torch
import transformers
from conftest import random_pair_rows

import das_train as pv
from das_train.core.devices import input_device, is_dispatched
from das_train.training.das_module import DASModule

accelerate = pytest.importorskip("accelerate")

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:.*val_dataloader.*"),
]

VOCAB, LENGTH, LAYERS = 48, 5, 4


def neox() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=LAYERS, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16)).eval()


def llama() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=16)).eval()


def offloaded(model: transformers.PreTrainedModel, offload_dir) -> transformers.PreTrainedModel:
    """A copy dispatched by accelerate with a CPU budget of about half the model, so
    ``infer_auto_device_map`` keeps the first layers on the CPU and sends the rest to disk."""
    copied = copy.deepcopy(model)
    size = sum(p.numel() * p.element_size() for p in copied.parameters())
    block = type(copied.base_model.layers[0]).__name__
    device_map = accelerate.infer_auto_device_map(
        copied, max_memory={"cpu": size // 2}, no_split_module_classes=[block])
    assert "disk" in device_map.values() and "cpu" in device_map.values(), device_map
    return accelerate.dispatch_model(copied, device_map=device_map, offload_dir=str(offload_dir))


def offloaded_layers(model) -> list[int]:
    return [i for i, layer in enumerate(model.base_model.layers)
            if any(p.device.type == "meta" for p in layer.parameters())]


def ids(seed: int, batch: int = 6) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, LENGTH), generator=torch.Generator().manual_seed(seed))


def pair_rows(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return random_pair_rows(n, seed, VOCAB, LENGTH)


def loader(n: int = 32) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(pair_rows(n), batch_size=8, shuffle=False)


def fit(module: lightning.LightningModule, steps: int, precision: str = "32-true") -> None:
    lightning.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    ).fit(module, loader())


def intervention_state(module: DASModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- the dispatch is real -------------------------------------------------------------------------


@pytest.mark.parametrize("build", [neox, llama], ids=["gpt_neox", "llama"])
def test_the_dispatched_model_has_accelerate_hooks_and_meta_weights(build, tmp_path):
    model = offloaded(build(), tmp_path)
    late = offloaded_layers(model)
    assert late and late[-1] == LAYERS - 1 and 0 not in late
    hooked = [m for m in model.base_model.layers[late[0]].modules() if hasattr(m, "_hf_hook")]
    assert any(type(m._hf_hook).__name__ == "AlignDevicesHook" for m in hooked)
    assert is_dispatched(model) and not is_dispatched(build())
    assert input_device(model) == torch.device("cpu")


# -- the hook core --------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [neox, llama], ids=["gpt_neox", "llama"])
def test_interchange_and_collect_match_the_undispatched_model(build, tmp_path):
    reference = build()
    model = offloaded(reference, tmp_path)
    layer = offloaded_layers(model)[0]  # a layer whose weights live on disk
    base, source = {"input_ids": ids(1)}, {"input_ids": ids(2)}
    results = []
    for m in (reference, model):
        swap = pv.IntervenableModel({"layer": layer, "component": "block_output",
                                     "intervention_type": pv.VanillaIntervention}, m)
        _, patched = swap(base, [source], unit_locations={"sources->base": 2})
        torch.manual_seed(3)
        rotated = pv.IntervenableModel({"layer": layer, "component": "mlp_output",
                                        "intervention_type": pv.LowRankRotatedSpaceIntervention,
                                        "low_rank_dimension": 2}, m)
        _, rotated_out = rotated(base, [source], unit_locations={"sources->base": (1, 3)})
        collect = pv.IntervenableModel({"layer": layer, "component": "attention_output",
                                        "intervention_type": pv.CollectIntervention}, m)
        (_, collected), _ = collect(base, unit_locations={"base": [0, 4]})
        results.append((patched.logits, rotated_out.logits, collected[0]))
        # The intervention lives on the input device, not on `meta` with the layer's weights.
        assert next(iter(rotated.interventions.values())).rotate_layer.weight.device.type == "cpu"
    for ours, theirs in zip(results[1], results[0]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(results[0][0], reference(**base).logits)  # the interchange did something


# -- DAS training ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*`self.trainer` reference is not registered.*")
def test_das_steps_by_hand_match_the_undispatched_model(tmp_path):
    """Three Adam steps of DAS at a disk-offloaded layer: the gradient reaches the rotation
    through layers whose weights accelerate loads for the forward and drops right after."""
    reference = neox()
    model = offloaded(reference, tmp_path)
    layer = offloaded_layers(model)[0]
    states = []
    for m in (reference, model):
        torch.manual_seed(0)
        module = DASModule(m, layer=layer, position=2, lr=1e-2)
        optimizer = module.configure_optimizers()
        for batch in loader(n=24):
            optimizer.zero_grad()
            module.training_step(batch, 0).backward()
            optimizer.step()
        states.append(intervention_state(module))
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=0, atol=0)


@pytest.mark.parametrize("how", ["device_map", "cpu_offload"])
def test_lightning_fit_matches_the_undispatched_model_and_leaves_the_dispatch_alone(how, tmp_path):
    """A Trainer fit and the IIA helper on a dispatched model: the same parameters and IIA as
    undispatched, no weight moved off `meta` by Lightning's moves of the module, and
    ``module.to(...)`` outside a Trainer leaves accelerate's placement alone."""
    reference = neox()
    if how == "device_map":
        model = offloaded(reference, tmp_path)
    else:  # every weight offloaded, and no hf_device_map to recognize the model by
        model = accelerate.cpu_offload(copy.deepcopy(reference), execution_device=torch.device("cpu"))
        assert getattr(model, "hf_device_map", None) is None
    meta_before = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    assert meta_before
    outcomes = []
    for m in (reference, model):
        torch.manual_seed(0)
        module = DASModule(m, layer=2, position=2, lr=1e-2)
        fit(module, steps=4)
        outcomes.append((intervention_state(module), module.iia(loader())))
        module.to(torch.float64).to(torch.float32)  # must neither fail nor undo the dispatch
    (state_ref, iia_ref), (state, iia) = outcomes
    for key in state_ref:
        torch.testing.assert_close(state[key], state_ref[key], rtol=0, atol=0)
    assert iia == iia_ref
    assert [n for n, p in model.named_parameters() if p.device.type == "meta"] == meta_before


# -- bf16 autocast --------------------------------------------------------------------------------


def test_bf16_mixed_keeps_intervention_parameters_in_fp32_while_the_model_computes_in_bf16():
    """``trainer.precision=bf16-mixed`` (the GPU recipes' setting) on the CPU: the model's
    matmuls run in bf16 under autocast, the intervention's parameters and Adam state stay fp32
    and are trained, and the frozen model's own weights are untouched."""
    model = neox()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    module = DASModule(model, layer=1, position=2, lr=1e-2)
    start = intervention_state(module)
    seen: list[torch.dtype] = []
    handle = model.gpt_neox.layers[2].mlp.dense_h_to_4h.register_forward_hook(
        lambda mod, args, out: seen.append(out.dtype))
    try:
        fit(module, steps=3, precision="bf16-mixed")
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    params = list(module.intervenable.get_trainable_parameters())
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(v.dtype == torch.float32 for v in module.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(start[k], v) for k, v in intervention_state(module).items())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())
