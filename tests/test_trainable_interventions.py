"""Trainable (and fitted) interventions as tensor-in, tensor-out modules, against plain torch.

Every expected value is written out by hand from the module's own weights, read once, so a test
fails if a formula, a subspace, a dtype cast or the save/load round trip is wrong.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import parametrize

from das_train.interventions.autoencoder import AutoencoderIntervention
from das_train.interventions.lora import LoRAIntervention
from das_train.interventions.masks import (
    BoundlessRotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from das_train.interventions.pca import PCARotatedSpaceIntervention
from das_train.interventions.reft import LoreftIntervention, NoreftIntervention
from das_train.interventions.rotated import (
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
)

D = 8
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _pair(batch: int = 2, units: int = 3, dim: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, units, dim), torch.randn(batch, units, dim)


def _hand_mix(rb: torch.Tensor, rs: torch.Tensor, dims_per_example: list[list[int]]) -> torch.Tensor:
    """Copies ``rs``'s chosen coordinates into ``rb``, example by example, by indexing."""
    out = rb.clone()
    rs = rs.expand_as(rb)
    for i, dims in enumerate(dims_per_example):
        out[i, ..., dims] = rs[i, ..., dims]
    return out


def _eye(n: int) -> torch.Tensor:
    return torch.eye(n)


# -- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, missing",
    [
        (lambda: RotatedSpaceIntervention(), "embed_dim"),
        (lambda: LowRankRotatedSpaceIntervention(embed_dim=D), "low_rank_dimension"),
        (lambda: BoundlessRotatedSpaceIntervention(), "embed_dim"),
        (lambda: AutoencoderIntervention(embed_dim=D), "latent_dim"),
        (lambda: LoreftIntervention(embed_dim=D), "low_rank_dimension"),
        (lambda: LoRAIntervention(low_rank_dimension=2), "embed_dim"),
    ],
)
def test_missing_sizes_raise_naming_the_argument(build, missing):
    with pytest.raises(ValueError, match=missing):
        build()


def test_missing_source_is_reported():
    with pytest.raises(ValueError, match="needs a source"):
        RotatedSpaceIntervention(D)(torch.randn(2, 1, D))


# -- full rotation ----------------------------------------------------------------------------


def _orthogonality_error(matrix: torch.Tensor) -> float:
    # Columns orthonormal: M^T M = I (for square M that is also M M^T = I).
    gram = matrix.T @ matrix
    return (gram - _eye(gram.shape[0])).abs().max().item()


@pytest.mark.parametrize(
    "build",
    [lambda: RotatedSpaceIntervention(D), lambda: LowRankRotatedSpaceIntervention(D, 3)],
)
def test_rotation_stays_orthogonal_after_optimizer_steps(build):
    intervention = build()
    weight = intervention.rotate_layer.weight.detach()
    assert _orthogonality_error(weight) < ATOL
    before = weight.clone()
    optimizer = torch.optim.Adam(intervention.parameters(), lr=0.1)
    target = torch.randn(4, 2, D)
    for _ in range(5):
        base, source = _pair(4, 2)
        loss = ((intervention(base, source, subspaces=[0, 1]) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weight = intervention.rotate_layer.weight.detach()
    assert not torch.allclose(weight, before, atol=1e-3), "the optimizer did not move the rotation"
    assert _orthogonality_error(weight) < ATOL
    if weight.shape[0] == weight.shape[1]:
        assert (weight @ weight.T - _eye(D)).abs().max().item() < ATOL


def test_rotated_interchange_dim_matches_hand_computation():
    intervention = RotatedSpaceIntervention(D, interchange_dim=3)
    base, source = _pair()
    rotation = intervention.rotate_layer.weight.detach()
    rb, rs = base @ rotation, source @ rotation
    expected = _hand_mix(rb, rs, [[0, 1, 2]] * 2) @ rotation.T
    torch.testing.assert_close(intervention(base, source), expected, atol=ATOL, rtol=0)


def test_rotated_interchange_of_every_coordinate_gives_the_source():
    intervention = RotatedSpaceIntervention(D)
    base, source = _pair()
    torch.testing.assert_close(intervention(base, source), source, atol=ATOL, rtol=0)
    # A constant source of shape (d,) is broadcast to every unit of every example.
    constant = torch.randn(D)
    out = intervention(base, constant)
    assert out.shape == base.shape
    torch.testing.assert_close(out, constant.expand_as(base), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "subspaces, partition, dims",
    [
        ([1, 4], None, [[1, 4], [1, 4]]),  # shared by the batch
        ([[0], [2, 3, 7]], None, [[0], [2, 3, 7]]),  # one list per example
        ([[1], [0, 2]], [[0, 2], [2, 5], [5, 8]], [[2, 3, 4], [0, 1, 5, 6, 7]]),  # partitions
    ],
)
def test_rotated_subspaces_match_hand_computation(subspaces, partition, dims):
    intervention = RotatedSpaceIntervention(D, subspace_partition=partition)
    base, source = _pair()
    rotation = intervention.rotate_layer.weight.detach()
    expected = _hand_mix(base @ rotation, source @ rotation, dims) @ rotation.T
    out = intervention(base, source, subspaces=subspaces)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # The coordinates not chosen keep the base's values, in the rotated basis.
    for i, chosen in enumerate(dims):
        kept = [j for j in range(D) if j not in chosen]
        torch.testing.assert_close(
            (out @ rotation)[i, :, kept], (base @ rotation)[i, :, kept], atol=ATOL, rtol=0
        )


# -- low rank -------------------------------------------------------------------------------


def test_low_rank_one_direction_is_a_projection_swap():
    intervention = LowRankRotatedSpaceIntervention(D, low_rank_dimension=1)
    base, source = _pair()
    w = intervention.rotate_layer.weight.detach()[:, 0]  # (d,)
    expected = base + ((source - base) @ w)[..., None] * w
    torch.testing.assert_close(intervention(base, source), expected, atol=ATOL, rtol=0)


def test_low_rank_subspaces_and_partition():
    base, source = _pair()
    # Shared subspaces: directions 0 and 2 of the four.
    intervention = LowRankRotatedSpaceIntervention(D, low_rank_dimension=4)
    w = intervention.rotate_layer.weight.detach()  # (d, 4)
    expected = base.clone()
    for j in (0, 2):
        expected += ((source - base) @ w[:, j])[..., None] * w[:, j]
    out = intervention(base, source, subspaces=[0, 2])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert intervention.subspace_size() == 4

    # Per-example partitions: example 0 takes directions 1..3, example 1 direction 0.
    partitioned = LowRankRotatedSpaceIntervention(D, 4, subspace_partition=[[0, 1], [1, 4]])
    w = partitioned.rotate_layer.weight.detach()
    expected = base.clone()
    for i, chosen in enumerate([[1, 2, 3], [0]]):
        for j in chosen:
            expected[i] += ((source[i] - base[i]) @ w[:, j])[..., None] * w[:, j]
    out = partitioned(base, source, subspaces=[[1], [0]])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


# -- boundless and sigmoid masks ------------------------------------------------------------


def test_boundless_matches_hand_formula_and_sharpens_as_temperature_falls():
    intervention = BoundlessRotatedSpaceIntervention(D, initial_boundary=0.5, temperature=50.0)
    base, source = _pair()
    rotation = intervention.rotate_layer.weight.detach()

    def hand(temperature: float) -> torch.Tensor:
        i = torch.arange(D, dtype=torch.float32)
        mask = torch.sigmoid((0.5 * D - (i + 0.5)) / temperature)
        rb, rs = base @ rotation, source @ rotation
        return ((1 - mask) * rb + mask * rs) @ rotation.T

    torch.testing.assert_close(intervention(base, source), hand(50.0), atol=ATOL, rtol=0)
    flat = intervention.boundary_mask().detach()
    assert flat.max() - flat.min() < 0.1  # at T=50 the mask over 8 coordinates is nearly flat

    intervention.set_temperature(0.05)
    assert intervention.get_temperature().item() == pytest.approx(0.05)
    sharp = intervention.boundary_mask().detach()
    torch.testing.assert_close(sharp, torch.tensor([1.0] * 4 + [0.0] * 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(intervention(base, source), hand(0.05), atol=ATOL, rtol=0)
    # At a low temperature it is DAS on the first round(beta * d) rotated coordinates.
    das = _hand_mix(base @ rotation, source @ rotation, [[0, 1, 2, 3]] * 2) @ rotation.T
    torch.testing.assert_close(intervention(base, source), das, atol=1e-4, rtol=0)
    assert intervention.intervention_size() == 4


def test_boundless_subspaces_restrict_the_mask():
    intervention = BoundlessRotatedSpaceIntervention(D, initial_boundary=1.0, temperature=0.01)
    base, source = _pair()
    rotation = intervention.rotate_layer.weight.detach()
    expected = _hand_mix(base @ rotation, source @ rotation, [[1], [5, 6]]) @ rotation.T
    out = intervention(base, source, subspaces=[[1], [5, 6]])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: BoundlessRotatedSpaceIntervention(D),
        lambda: SigmoidMaskIntervention(D),
        lambda: SigmoidMaskRotatedSpaceIntervention(D),
    ],
)
def test_temperature_is_a_buffer_never_a_parameter(build):
    intervention = build()
    assert "temperature" in dict(intervention.named_buffers())
    assert "temperature" not in dict(intervention.named_parameters())
    assert all(p is not intervention.temperature for p in intervention.parameters())
    assert "temperature" in intervention.state_dict()
    before = intervention.get_temperature().clone()
    intervention.set_temperature(torch.tensor(2.5))
    assert intervention.temperature.item() == 2.5 and before.item() != 2.5
    with pytest.raises(ValueError, match="temperature"):
        intervention.set_temperature(0.0)


def test_boundary_sparsity_loss_is_differentiable():
    intervention = BoundlessRotatedSpaceIntervention(D, initial_boundary=0.3)
    loss = intervention.boundary_sparsity_loss()
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    assert intervention.intervention_boundaries.grad.item() == pytest.approx(1.0)


def test_sigmoid_mask_matches_hand_formula():
    intervention = SigmoidMaskIntervention(D, temperature=0.5)
    with torch.no_grad():
        intervention.mask.copy_(torch.linspace(-2, 2, D))
    base, source = _pair()
    m = torch.sigmoid(torch.linspace(-2, 2, D) / 0.5)
    torch.testing.assert_close(intervention(base, source), (1 - m) * base + m * source, atol=ATOL, rtol=0)
    # With subspaces, dimensions outside them keep the base exactly.
    out = intervention(base, source, subspaces=[0, 7])
    expected = base.clone()
    expected[..., [0, 7]] = ((1 - m) * base + m * source)[..., [0, 7]]
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert intervention.sparsity_loss().item() == pytest.approx(m.mean().item(), abs=1e-6)


def test_sigmoid_mask_rotated_matches_hand_formula():
    intervention = SigmoidMaskRotatedSpaceIntervention(D, temperature=1.0)
    logits = torch.randn(D) * 3
    with torch.no_grad():
        intervention.masks.copy_(logits)
    base, source = _pair()
    rotation = intervention.rotate_layer.weight.detach()
    m = torch.sigmoid(logits)
    expected = ((1 - m) * (base @ rotation) + m * (source @ rotation)) @ rotation.T
    torch.testing.assert_close(intervention(base, source), expected, atol=ATOL, rtol=0)


# -- every trainable family ------------------------------------------------------------------


def _lora_with_weights() -> LoRAIntervention:
    lora = LoRAIntervention(D, low_rank_dimension=2, alpha=4.0)
    with torch.no_grad():
        lora.lora_B.normal_()  # B starts at zero, which would leave A without a gradient
    return lora


TRAINABLE = {
    "rotated": lambda: RotatedSpaceIntervention(D, interchange_dim=4),
    "low_rank": lambda: LowRankRotatedSpaceIntervention(D, 3),
    "boundless": lambda: BoundlessRotatedSpaceIntervention(D),
    "sigmoid_mask": lambda: SigmoidMaskIntervention(D, temperature=1.0),
    "sigmoid_mask_rotated": lambda: SigmoidMaskRotatedSpaceIntervention(D),
    "autoencoder": lambda: AutoencoderIntervention(D, latent_dim=16),
    "loreft": lambda: LoreftIntervention(D, 3, act_fn="gelu"),
    "noreft": lambda: NoreftIntervention(D, 3, add_bias=True),
    "lora": _lora_with_weights,
}


@pytest.mark.parametrize("name", sorted(TRAINABLE))
def test_gradients_reach_every_parameter(name):
    intervention = TRAINABLE[name]()
    assert intervention.trainable
    base, source = _pair()
    out = intervention(base.requires_grad_(), source)
    (out * torch.randn_like(out)).sum().backward()
    for pname, param in intervention.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname
    assert base.grad is not None


ROTATING = ["rotated", "low_rank", "boundless", "sigmoid_mask_rotated", "loreft"]


@pytest.mark.parametrize("name", ROTATING)
def test_orthogonal_map_is_computed_once_per_forward(name):
    intervention = TRAINABLE[name]()
    orthogonal = intervention.rotate_layer.parametrizations.weight[0]
    calls = [0]
    original_forward = orthogonal.forward

    def counting_forward(*args, **kwargs):
        calls[0] += 1
        return original_forward(*args, **kwargs)

    orthogonal.forward = counting_forward
    base, source = _pair()
    intervention(base, source, subspaces=None)
    assert calls[0] == 1
    # A training step that calls it twice inside `parametrize.cached()` computes it once.
    calls[0] = 0
    with parametrize.cached():
        intervention(base, source)
        intervention(base, source)
    assert calls[0] == 1


@pytest.mark.parametrize("name", sorted(TRAINABLE) + ["pca"])
def test_bf16_inputs_give_bf16_outputs_with_fp32_parameters(name):
    intervention = (
        PCARotatedSpaceIntervention.fit(torch.randn(64, D)) if name == "pca" else TRAINABLE[name]()
    )
    base, source = _pair()
    out32 = intervention(base, source)
    out16 = intervention(base.bfloat16(), source.bfloat16())
    assert out16.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in intervention.parameters())
    torch.testing.assert_close(out16.float(), out32, atol=0.1, rtol=0.05)


def _perturbed(name: str):
    if name == "pca":
        return PCARotatedSpaceIntervention.fit(torch.randn(64, D), n_components=5, interchange_dim=3)
    intervention = TRAINABLE[name]()
    optimizer = torch.optim.SGD(intervention.parameters(), lr=0.05)
    base, source = _pair()
    out = intervention(base, source)
    (out * torch.randn_like(out)).sum().backward()
    optimizer.step()
    if hasattr(intervention, "set_temperature"):
        intervention.set_temperature(0.7)
    return intervention


@pytest.mark.parametrize("name", sorted(TRAINABLE) + ["pca"])
def test_state_dict_round_trip_through_safetensors_is_exact(name, tmp_path):
    intervention = _perturbed(name)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.detach().contiguous() for k, v in intervention.state_dict().items()}, str(path))
    rebuilt = type(intervention)(**intervention.init_args())
    rebuilt.load_state_dict(load_file(str(path)))
    base, source = _pair()
    assert torch.equal(rebuilt(base, source), intervention(base, source))
    if hasattr(intervention, "temperature"):
        assert rebuilt.temperature.item() == pytest.approx(0.7)


# -- autoencoder ----------------------------------------------------------------------------


def test_autoencoder_adds_back_the_reconstruction_error():
    intervention = AutoencoderIntervention(D, latent_dim=12)
    enc, dec = intervention.autoencoder.encoder[0], intervention.autoencoder.decoder[0]
    base, source = _pair()

    def encode(x):
        return torch.relu((x - dec.bias) @ enc.weight.T + enc.bias)

    def decode(z):
        return z @ dec.weight.T + dec.bias

    with torch.no_grad():
        zb, zs = encode(base), encode(source)
        mixed = zb.clone()
        mixed[..., [2, 5]] = zs[..., [2, 5]]
        expected = decode(mixed) + (base - decode(zb))
        everything = decode(zs) + (base - decode(zb))
        out = intervention(base, source, subspaces=[2, 5])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(intervention(base, source).detach(), everything, atol=ATOL, rtol=0)
    # Nothing differs in the latent space: the base comes back bit for bit.
    assert torch.equal(intervention(base, base.clone()), base)
    assert intervention.subspace_size() == 12


# -- PCA ------------------------------------------------------------------------------------


def test_pca_fit_recovers_a_planted_top_direction():
    direction = torch.tensor([1.0, -1, 1, 1, -1, 1, -1, -1]) / D**0.5  # equal spread per dim
    scores = torch.randn(500, 1) * 5
    data = scores * direction + 0.1 * torch.randn(500, D) + torch.arange(D)  # shifted mean
    pca = PCARotatedSpaceIntervention.fit(data, n_components=3)
    assert pca.pca_components.shape == (3, D)
    assert abs(float(pca.pca_components[0] @ direction)) > 0.99
    # Components are orthonormal rows, mean and scale are the data's.
    torch.testing.assert_close(pca.pca_components @ pca.pca_components.T, _eye(3), atol=ATOL, rtol=0)
    torch.testing.assert_close(pca.pca_mean, data.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(pca.pca_std, data.std(0), atol=1e-4, rtol=0)
    assert not pca.trainable and list(pca.parameters()) == []
    assert {"pca_components", "pca_mean", "pca_std"} <= set(dict(pca.named_buffers()))


def test_pca_interchange_matches_hand_computation():
    pca = PCARotatedSpaceIntervention.fit(torch.randn(200, D) * torch.linspace(0.5, 3, D), 4)
    base, source = _pair()
    c, mu, sigma = pca.pca_components, pca.pca_mean, pca.pca_std
    zb, zs = ((base - mu) / sigma) @ c.T, ((source - mu) / sigma) @ c.T
    mixed = _hand_mix(zb, zs, [[1, 3], [1, 3]])
    expected = base + ((mixed - zb) @ c) * sigma
    torch.testing.assert_close(pca(base, source, subspaces=[1, 3]), expected, atol=ATOL, rtol=0)
    # With every component of a full basis interchanged, the output is the source.
    full = PCARotatedSpaceIntervention.fit(torch.randn(200, D))
    torch.testing.assert_close(full(base, source), source, atol=1e-4, rtol=0)


# -- ReFT -----------------------------------------------------------------------------------


def test_loreft_formula_by_hand_and_ignores_the_source():
    intervention = LoreftIntervention(D, low_rank_dimension=3, act_fn="relu")
    assert intervention.source_kind == "none"
    rt = intervention.rotate_layer.weight.detach()  # (d, k) = R^T
    r = rt.T  # (k, d), orthonormal rows
    torch.testing.assert_close(r @ r.T, _eye(3), atol=ATOL, rtol=0)
    w, b = intervention.learned_source.weight.detach(), intervention.learned_source.bias.detach()
    h, other = _pair()
    expected = h + (torch.relu(h @ w.T + b) - h @ r.T) @ r
    with torch.no_grad():
        torch.testing.assert_close(intervention(h), expected, atol=ATOL, rtol=0)
        assert torch.equal(intervention(h, other), intervention(h))
        # Only coordinate 1 of the three edited.
        only = h + ((torch.relu(h @ w.T + b) - h @ r.T)[..., [1]]) @ r[[1]]
        torch.testing.assert_close(intervention(h, subspaces=[1]), only, atol=ATOL, rtol=0)


def test_noreft_formula_by_hand():
    intervention = NoreftIntervention(D, low_rank_dimension=3, add_bias=True)
    p, c = intervention.proj_layer.weight.detach(), intervention.proj_layer.bias.detach()
    w, b = intervention.learned_source.weight.detach(), intervention.learned_source.bias.detach()
    h, _ = _pair()
    expected = h + ((h @ w.T + b) - (h @ p.T + c)) @ p
    with torch.no_grad():
        torch.testing.assert_close(intervention(h), expected, atol=ATOL, rtol=0)


# -- LoRA -----------------------------------------------------------------------------------


def test_lora_starts_as_identity_and_uses_the_module_input():
    lora = LoRAIntervention(D, low_rank_dimension=2, alpha=4.0, input_dim=5)
    assert lora.source_kind == "module_input"
    output = torch.randn(2, 3, D)  # the hooked module's output (the base)
    module_input = torch.randn(2, 3, 5)
    assert torch.equal(lora(output, module_input), output)
    with torch.no_grad():
        lora.lora_B.normal_()
        expected = output + module_input @ lora.lora_A @ lora.lora_B * (4.0 / 2)
        torch.testing.assert_close(lora(output, module_input), expected, atol=ATOL, rtol=0)
        assert not torch.allclose(lora(output, module_input), lora(output, module_input * 2))
    with pytest.raises(ValueError, match="input_dim"):
        lora(output, torch.randn(2, 3, D))


def test_square_rotations_saved_for_the_matrix_exponential_map_load_as_the_same_rotation():
    """pyvene and das_train before the Cayley map stored `original` for torch's default
    matrix-exponential map; loading converts it, so the rotation is the saved one."""
    from torch.nn.utils import parametrizations

    from das_train.interventions.rotated import CAYLEY_MARKER, RotatedSpaceIntervention, RotateLayer

    torch.manual_seed(3)
    legacy = parametrizations.orthogonal(RotateLayer(12, 12))  # torch's default map: matrix_exp
    with torch.no_grad():
        legacy.parametrizations.weight.original.normal_()  # a trained-looking tangent
    saved = {f"rotate_layer.{k}": v for k, v in legacy.state_dict().items()}
    assert CAYLEY_MARKER not in "".join(saved)
    ours = RotatedSpaceIntervention(embed_dim=12)
    ours.load_state_dict(saved)
    torch.testing.assert_close(ours.rotate_layer.weight, legacy.weight, atol=1e-6, rtol=0)
    eye = torch.eye(12)
    torch.testing.assert_close(ours.rotate_layer.weight.T @ ours.rotate_layer.weight, eye, atol=1e-5, rtol=0)
    # Saved again with the marker, it loads as it is (no second conversion).
    again = RotatedSpaceIntervention(embed_dim=12)
    again.load_state_dict(ours.state_dict())
    torch.testing.assert_close(again.rotate_layer.weight, legacy.weight, atol=1e-6, rtol=0)
    # And it trains through the Cayley map from there.
    assert ours.rotate_layer.parametrizations.weight[0].orthogonal_map.name == "cayley"
