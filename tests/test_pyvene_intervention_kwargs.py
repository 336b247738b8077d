"""pyvene 0.1.8's constructor keywords, InterventionOutput, JumpReLU SAE and sigmoid masks.

Each intervention built with the keywords pyvene programs pass must compute what it computes
without them (they are ignored), or what the keyword means (``noise_leve``, ``pca``); answers
are checked against a computation written out here, and against pyvene on the same weights
where pyvene is right.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from conftest import capture, patched_run

import das_train as pv

pyvene = pytest.importorskip("pyvene")

D = 8
# Keywords pyvene's config (and pyvene programs) hand every intervention.
PYVENE_EXTRAS = dict(
    use_fast=True,
    keep_last_dim=True,
    dtype=torch.float32,
    torch_dtype=torch.float32,
    layer=0,
    component="block_output",
    unit="pos",
    max_number_of_units=1,
    group_key=None,
    intervention_link_key=None,
    moe_key=None,
    hidden_source_representation=None,
)

CLASSES = {
    "VanillaIntervention": {},
    "AdditionIntervention": {},
    "SubtractionIntervention": {},
    "ZeroIntervention": {},
    "CollectIntervention": {},
    "SkipIntervention": {},
    "NoiseIntervention": {"seed": 0},
    "RotatedSpaceIntervention": {},
    "LowRankRotatedSpaceIntervention": {"low_rank_dimension": 2},
    "BoundlessRotatedSpaceIntervention": {},
    "SigmoidMaskIntervention": {},
    "SigmoidMaskRotatedSpaceIntervention": {},
    "PCARotatedSpaceIntervention": {},
    "AutoencoderIntervention": {"latent_dim": 5},
    "JumpReLUAutoencoderIntervention": {"low_rank_dimension": 5},
    "LoRAIntervention": {"low_rank_dimension": 2},
    "LoreftIntervention": {"low_rank_dimension": 2},
    "NoreftIntervention": {"low_rank_dimension": 2, "add_bias": True},
}


def _make(name, **extra):
    torch.manual_seed(0)
    return getattr(pv, name)(embed_dim=D, **CLASSES[name], **extra)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_pyvene_keywords_accepted_and_change_nothing(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a keyword pyvene passes
        plain, with_keywords = _make(name), _make(name, **PYVENE_EXTRAS)
    with_keywords.load_state_dict(plain.state_dict())
    torch.manual_seed(1)
    base, source = torch.randn(3, 2, D), torch.randn(3, 2, D)
    for module in (plain, with_keywords):
        if hasattr(module, "reset"):
            module.reset()
    if name == "CollectIntervention":
        source = None  # a collect takes no source (pyvene asserts it)
    torch.testing.assert_close(with_keywords(base, source), plain(base, source), atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(set(CLASSES) - {"LoRAIntervention"}))
def test_unknown_keyword_warns_naming_it(name):
    # pyvene's classes take **kwargs, so a typo is accepted there; here it is at least named.
    with pytest.warns(UserWarning, match="low_rank_dimenson"):
        _make(name, low_rank_dimenson=3)


def test_lora_has_no_pyvene_counterpart_so_a_typo_is_a_type_error():
    with pytest.raises(TypeError, match="low_rank_dimenson"):
        _make("LoRAIntervention", low_rank_dimenson=3)


def test_keep_last_dim_must_be_a_bool():
    with pytest.raises(ValueError, match="keep_last_dim"):
        pv.RotatedSpaceIntervention(embed_dim=D, keep_last_dim="yes")


def test_config_hands_kwargs_classes_every_pyvene_key(gpt2):
    """pyvene hands a user's **kwargs class the whole representation config, unset keys too."""
    seen = {}

    class Recorder(pv.ConstantSourceIntervention):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            seen.update(kwargs)

        def forward(self, base, source=None, subspaces=None):
            return base

    pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": Recorder},
                         gpt2, use_fast=True)
    assert seen["embed_dim"] == 16 and seen["use_fast"] is True
    assert seen["layer"] == 0 and seen["component"] == "block_output" and seen["unit"] == "pos"
    assert "low_rank_dimension" in seen and seen["low_rank_dimension"] is None
    assert "latent_dim" in seen and "subspace_partition" in seen


def test_noise_leve_is_pyvene_noise_level():
    torch.manual_seed(0)
    noise = pv.NoiseIntervention(embed_dim=D, seed=3, noise_leve=0.5)
    base = torch.zeros(2, 3, D)
    drawn = torch.randn(base.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noise(base), 0.5 * drawn)


def test_pca_from_pyvene_keywords_matches_pyvene():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D))
    fitted = types.SimpleNamespace(components_=q.T.numpy())  # what sklearn's PCA exposes
    mean, std = torch.randn(D).numpy(), (torch.rand(D) + 0.5).numpy()
    ours = pv.PCARotatedSpaceIntervention(embed_dim=D, pca=fitted, pca_mean=mean, pca_std=std)
    theirs = pyvene.PCARotatedSpaceIntervention(embed_dim=D, pca=fitted, pca_mean=mean, pca_std=std)
    base, source = torch.randn(2, 1, D), torch.randn(2, 1, D)
    # Full rank: pyvene's (z @ C) * sigma + mu and ours agree (they differ only when k < d).
    subspaces = [[0, 2, 5]] * 2
    expected = theirs(base.clone(), source.clone(), subspaces)
    torch.testing.assert_close(ours(base, source, [0, 2, 5]), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="not both"):
        pv.PCARotatedSpaceIntervention(embed_dim=D, pca=fitted, components=q.T)


# -- InterventionOutput -------------------------------------------------------------------------


class _LatentDoubler(pv.SourcelessIntervention):
    """Doubles the units and reports them halved as its 'latent'."""

    def forward(self, base, source=None, subspaces=None):
        return pv.InterventionOutput(output=base * 2, latent=base / 2)


def test_intervention_output_is_written_back_and_kept(gpt2, base_source):
    base, _ = base_source
    im = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": _LatentDoubler()}, gpt2
    )
    _, out = im(base, unit_locations={"base": [2, 4]})
    module = gpt2.transformer.h[1]
    hidden = capture(gpt2, module, "output", base)

    def edit(x):
        x[:, [2, 4]] = x[:, [2, 4]] * 2
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
    [kept] = im.full_intervention_outputs
    torch.testing.assert_close(kept.latent, hidden[:, [2, 4]] / 2)
    torch.testing.assert_close(kept["output"], hidden[:, [2, 4]] * 2)
    im(base, unit_locations={"base": [1]})
    assert len(im.full_intervention_outputs) == 1, "cleared at each call, as in pyvene"


def test_intervention_output_matches_pyvene(gpt2, base_source):
    base, _ = base_source

    class PyveneDoubler(pyvene.SourcelessIntervention):
        def forward(self, base, source=None, subspaces=None):
            return pyvene.InterventionOutput(output=base * 2, latent=base / 2)

    loc = {"base": 3}
    ours = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": _LatentDoubler()}, gpt2)
    theirs = pyvene.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": PyveneDoubler()}, gpt2)
    with torch.no_grad():
        _, a = ours(base, unit_locations=loc)
        _, b = theirs(base, unit_locations=loc)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    # pyvene flattens the one position away: (batch, 1 * d); ours keeps (batch, 1, d).
    torch.testing.assert_close(
        ours.full_intervention_outputs[0].latent.flatten(1),
        theirs.full_intervention_outputs[0].latent, atol=1e-6, rtol=0)


# -- JumpReLU SAE -------------------------------------------------------------------------------


def _random_sae(cls, m=6):
    sae = cls(embed_dim=D, low_rank_dimension=m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g))
        sae.threshold.copy_(torch.rand(m, generator=g))
    return sae


def test_jumprelu_against_hand_and_pyvene():
    ours = _random_sae(pv.JumpReLUAutoencoderIntervention)
    theirs = pyvene.JumpReLUAutoencoderIntervention(embed_dim=D, low_rank_dimension=6)
    theirs.load_state_dict(ours.state_dict(), strict=False)
    base, source = torch.randn(3, 2, D), torch.randn(3, 2, D)

    def encode(x):
        pre = x @ ours.W_enc + ours.b_enc
        return torch.where(pre > ours.threshold, pre.clamp(min=0), torch.zeros(()))

    zb, zs = encode(base), encode(source)
    assert 0 < (zb == 0).float().mean() < 1, "the threshold should zero some latents, not all"
    mixed = zb.clone()
    mixed[..., [1, 4]] = zs[..., [1, 4]]
    hand = mixed @ ours.W_dec + ours.b_dec
    with torch.no_grad():
        got = ours(base, source, [1, 4])
        pyvene_out = theirs(base.clone(), source.clone(), [[1, 4]] * 3)
    torch.testing.assert_close(got, hand.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got, pyvene_out, atol=1e-5, rtol=0)
    # Without subspaces, every latent (pyvene: the first embed_dim of them).
    torch.testing.assert_close(ours(base, source), (zs @ ours.W_dec + ours.b_dec).detach())


def test_jumprelu_refuses_keep_last_dim_false():
    with pytest.raises(ValueError, match="keep_last_dim"):
        pv.JumpReLUAutoencoderIntervention(embed_dim=D, low_rank_dimension=4, keep_last_dim=False)


def test_jumprelu_in_a_model(gpt2, base_source):
    base, source = base_source
    torch.manual_seed(0)
    im = pv.IntervenableModel({"layer": 0, "component": "block_output",
                               "intervention_type": pv.JumpReLUAutoencoderIntervention,
                               "low_rank_dimension": 12}, gpt2)
    sae = im.interventions[im.sorted_keys[0]]
    sae.load_state_dict(_random_sae_like(sae).state_dict())
    _, out = im(base, [source], {"sources->base": 3}, subspaces=[0, 5])
    module = gpt2.transformer.h[0]
    src = capture(gpt2, module, "output", source)

    def edit(x):
        with torch.no_grad():
            x[:, [3]] = sae(x[:, [3]], src[:, [3]], [0, 5])
        return x

    expected = patched_run(gpt2, module, "output", base, edit)
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)


def _random_sae_like(sae):
    g = torch.Generator().manual_seed(1)
    copy = pv.JumpReLUAutoencoderIntervention(sae.embed_dim, sae.low_rank_dimension)
    with torch.no_grad():
        for p in copy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return copy


# -- sigmoid masks: same parameters and temperature as pyvene -----------------------------------


@pytest.mark.parametrize("name", ["SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention"])
def test_sigmoid_masks_match_pyvene(name):
    torch.manual_seed(0)
    ours = getattr(pv, name)(embed_dim=D)
    theirs = getattr(pyvene, name)(embed_dim=D)
    logits = torch.randn(D) * 3
    with torch.no_grad():
        if name == "SigmoidMaskIntervention":
            ours.mask.copy_(logits)
        else:
            ours.masks.copy_(logits)
        ours.set_temperature(1.7)
    # pyvene's saved state (temperature a Parameter there, a buffer here) loads both ways.
    theirs.load_state_dict(ours.state_dict(), strict=False)
    assert float(theirs.temperature) == pytest.approx(1.7)
    base, source = torch.randn(3, 1, D), torch.randn(3, 1, D)
    weights = torch.sigmoid(logits / 1.7)
    if name == "SigmoidMaskIntervention":
        hand = (1 - weights) * base + weights * source
    else:
        r = ours.rotate_layer.weight.detach()
        hand = ((1 - weights) * (base @ r) + weights * (source @ r)) @ r.T
    with torch.no_grad():
        got, pyvene_out = ours(base, source), theirs(base.flatten(1), source.flatten(1))
    torch.testing.assert_close(got, hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.flatten(1), pyvene_out, atol=1e-5, rtol=0)
    reloaded = getattr(pv, name)(embed_dim=D)
    reloaded.load_state_dict(theirs.state_dict(), strict=False)
    torch.testing.assert_close(reloaded(base, source), got, atol=0, rtol=0)
