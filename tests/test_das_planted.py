"""Trainable interventions inside IntervenableModel: a planted direction, gradients, sharing.

The planted model's output depends on one known direction ``u`` of its hidden layer, spread
over all neurons. A 1-d low-rank DAS intervention trained on counterfactual pairs must find
``u`` (IIA near 1, |cos| near 1), while swapping any single neuron stays near chance.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import das_train as pv

DIM = 8


class Planted(nn.Module):
    """hidden = Q x (Q orthogonal); logits = (-k u.h, k u.h)."""

    def __init__(self, direction: torch.Tensor):
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen))
        self.hidden = nn.Linear(DIM, DIM, bias=False)
        self.readout = nn.Linear(DIM, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(q)
            self.readout.weight.copy_(torch.stack([-direction, direction]) * 5)

    def forward(self, x):
        return self.readout(self.hidden(x))


@pytest.fixture(scope="module")
def planted():
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(DIM, generator=gen)
    u = u / u.norm()
    return Planted(u).eval(), u


def pairs(n, seed):
    gen = torch.Generator().manual_seed(seed)
    base, source = torch.randn(n, DIM, generator=gen), torch.randn(n, DIM, generator=gen)
    return base, source


def counterfactual_labels(model, u, source):
    """Taking u's coordinate from the source gives the source's label."""
    return (model.hidden(source) @ u > 0).long()


def train_das(im, model, u, steps=150, lr=0.05, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(im.get_trainable_parameters(), lr=lr)
    for step in range(steps):
        base, source = pairs(64, seed=1000 + step)
        labels = counterfactual_labels(model, u, source)
        _, logits = im(base, [source])
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def iia(im, model, u, subspaces=None):
    base, source = pairs(2000, seed=7)
    with torch.no_grad():
        _, logits = im(base, [source], subspaces=subspaces)
    return (logits.argmax(-1) == counterfactual_labels(model, u, source)).float().mean().item()


def test_low_rank_das_finds_the_planted_direction(planted):
    model, u = planted
    torch.manual_seed(0)  # the rotation's start, else the result hangs on which tests ran first
    im = pv.IntervenableModel(
        {"component": "hidden.output", "intervention_type": pv.LowRankRotatedSpaceIntervention,
         "low_rank_dimension": 1},
        model,
    )
    train_das(im, model, u)
    assert iia(im, model, u) >= 0.95
    learned = im.interventions[im.sorted_keys[0]].rotate_layer.weight[:, 0].detach()
    assert abs(torch.dot(learned, u).item()) >= 0.9
    # Neuron-aligned 1-d interchange: the best single neuron stays near chance (0.5).
    vanilla = pv.IntervenableModel({"component": "hidden.output"}, model)
    best_neuron = max(iia(vanilla, model, u, subspaces=[i]) for i in range(DIM))
    assert best_neuron < 0.75


def test_gradients_reach_interventions_and_never_the_frozen_model(planted):
    model, u = planted
    im = pv.IntervenableModel(
        {"component": "hidden.output", "intervention_type": pv.RotatedSpaceIntervention,
         "subspace_partition": [[0, 1], [1, DIM]]},
        model,
    )
    base, source = pairs(8, seed=3)
    weights = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    _, logits = im(base, [source], subspaces=[0])
    (logits * weights).sum().backward()  # the logits' plain sum is 0 by the model's symmetry
    (param,) = im.get_trainable_parameters()
    assert param.grad is not None and param.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    im.enable_model_gradients()
    try:
        _, logits = im(base, [source], subspaces=[0])
        (logits * weights).sum().backward()
        assert model.hidden.weight.grad is not None
    finally:
        im.disable_model_gradients()
        model.zero_grad(set_to_none=True)


def test_boundless_temperature_is_a_buffer_not_a_parameter(gpt2):
    im = pv.IntervenableModel(
        {"layer": 0, "intervention_type": pv.BoundlessRotatedSpaceIntervention}, gpt2
    )
    intervention = im.interventions[im.sorted_keys[0]]
    params = im.get_trainable_parameters()
    assert all(p is not intervention.temperature for p in params)
    assert "interventions." + im.sorted_keys[0] + ".temperature" in im.state_dict()
    intervention.set_temperature(0.1)
    assert intervention.get_temperature().item() == pytest.approx(0.1)


def test_linked_interventions_share_weights_across_sites(gpt2, base_source):
    base, source = base_source
    im = pv.IntervenableModel(
        [
            {"layer": 0, "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 2,
             "intervention_link_key": 0},
            {"layer": 1, "intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 2,
             "intervention_link_key": 0},
        ],
        gpt2,
    )
    first, second = (im.interventions[k] for k in im.sorted_keys)
    assert first is second
    assert len(im.get_trainable_parameters()) == 1
    _, out = im(base, [source, source], {"sources->base": 2})
    out.logits.sum().backward()
    assert first.rotate_layer.parametrizations.weight.original.grad is not None


def test_several_positions_share_one_rotation(gpt2, base_source):
    """Documented behaviour: with 2 positions the intervention sees (batch, 2, d), rotated alike."""
    base, source = base_source
    im = pv.IntervenableModel(
        {"layer": 1, "intervention_type": pv.RotatedSpaceIntervention, "max_number_of_units": 2,
         "subspace_partition": [[0, 4], [4, 16]]},
        gpt2,
    )
    intervention = im.interventions[im.sorted_keys[0]]
    assert intervention.embed_dim == 16  # not 2 * 16: units are not flattened
    _, out = im(base, [source], {"sources->base": [1, 4]}, subspaces=[0])
    rotation = intervention.rotate_layer.weight.detach()
    module = gpt2.transformer.h[1]
    from conftest import capture, patched_run

    src = capture(gpt2, module, "output", source)

    def edit(x):
        for pos in (1, 4):
            rb, rs = x[:, pos] @ rotation, src[:, pos] @ rotation
            rb[:, :4] = rs[:, :4]
            x[:, pos] = rb @ rotation.T
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "rep",
    [
        {"intervention_type": pv.RotatedSpaceIntervention, "subspace_partition": [[0, 3], [3, 16]]},
        {"intervention_type": pv.LowRankRotatedSpaceIntervention, "low_rank_dimension": 3},
        {"intervention_type": pv.BoundlessRotatedSpaceIntervention},
        {"intervention_type": pv.SigmoidMaskRotatedSpaceIntervention},
        {"intervention_type": pv.SigmoidMaskIntervention},
        {"intervention_type": pv.AutoencoderIntervention, "latent_dim": 6},
        {"intervention_type": pv.LoreftIntervention, "low_rank_dimension": 2},
        {"intervention_type": pv.NoreftIntervention, "low_rank_dimension": 2},
    ],
    ids=lambda r: r["intervention_type"].__name__,
)
def test_trained_interventions_round_trip_exactly(tmp_path, gpt2, base_source, rep):
    base, source = base_source
    im = pv.IntervenableModel({"layer": 1, "component": "block_output", **rep}, gpt2)
    for p in im.get_trainable_parameters():  # move off the initialisation
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.1)
    needs_source = im.interventions[im.sorted_keys[0]].source_kind == "interchange"
    sources = [source] if needs_source else None
    _, before = im(base, sources, {"sources->base": 3} if needs_source else {"base": 3})
    im.save(str(tmp_path))
    loaded = pv.IntervenableModel.load(str(tmp_path), gpt2)
    _, after = loaded(base, sources, {"sources->base": 3} if needs_source else {"base": 3})
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)


def test_lora_reads_the_module_input(gpt2):
    base = {"input_ids": torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])}
    module = gpt2.transformer.h[0].mlp.c_fc
    im = pv.IntervenableModel(
        {"component": "transformer.h[0].mlp.c_fc.output", "intervention_type": pv.LoRAIntervention,
         "low_rank_dimension": 2},
        gpt2,
    )
    lora = im.interventions[im.sorted_keys[0]]
    assert (lora.embed_dim, lora.lora_A.shape[0]) == (64, 16)
    _, out = im(base, unit_locations={"base": [1, 2]})
    torch.testing.assert_close(out.logits, gpt2(**base).logits, atol=0, rtol=0)  # B starts at 0
    with torch.no_grad():
        lora.lora_B.normal_()
    _, out = im(base, unit_locations={"base": [1, 2]})
    from conftest import capture, patched_run

    x_in = capture(gpt2, module, "input", base)

    def edit(y):
        delta = x_in @ lora.lora_A.detach() @ lora.lora_B.detach() * (lora.alpha / 2)
        y[:, [1, 2]] += delta[:, [1, 2]]
        return y

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
