"""The built-in MLP is pyvene's: same config fields, module and parameter names, components;
interchanges on it agree with pyvene 0.1.8 on the same weights and with hand hooks."""

from __future__ import annotations

import pytest
import torch

import das_train as pv

H, BATCH = 8, 5
PARTITION = [[0, H // 2], [H // 2, H]]


def _models():
    """Our MLP and pyvene's, holding the same weights."""
    pyvene = pytest.importorskip("pyvene")
    from pyvene.models.mlp.modelings_mlp import MLPConfig as PyveneMLPConfig

    fields = dict(h_dim=H, n_layer=2, num_classes=3, pdrop=0.0, activation_function="relu")
    _, _, theirs = pyvene.create_mlp_classifier(PyveneMLPConfig(**fields))
    _, _, ours = pv.create_mlp_classifier(pv.MLPConfig(**fields))
    ours.load_state_dict(theirs.state_dict(), strict=True)  # the same parameter names
    return pyvene, ours.eval(), theirs.eval()


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 1, H, generator=g)  # (batch, 1 position, h_dim), as the tutorial


BASE, SRC0, SRC1 = _inputs(0), _inputs(1), _inputs(2)
AT_ZERO = [[0]] * BATCH


def test_config_fields_and_defaults_are_pyveness():
    pytest.importorskip("pyvene")
    from pyvene.models.mlp.modelings_mlp import MLPConfig as PyveneMLPConfig

    theirs, ours = PyveneMLPConfig(), pv.MLPConfig()
    for name in ("include_emb", "n_layer", "h_dim", "num_classes", "activation_function", "pdrop",
                 "problem_type", "include_bias", "squeeze_output"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # Vocabulary and positions mean something only with embeddings (our documented difference).
    assert ours.vocab_size is None and ours.max_position_embeddings is None
    with_emb = pv.MLPConfig(include_emb=True)
    assert (with_emb.vocab_size, with_emb.max_position_embeddings) == (theirs.vocab_size, theirs.max_position_embeddings)


def test_same_logits_and_squeezed_output():
    _, ours, theirs = _models()
    out = ours(inputs_embeds=BASE).logits
    assert out.shape == (BATCH, 3)
    torch.testing.assert_close(out, theirs(inputs_embeds=BASE)[0], rtol=0, atol=0)
    torch.testing.assert_close(ours(inputs_embeds=BASE)[0], out, rtol=0, atol=0)
    onehot = torch.nn.functional.one_hot(torch.arange(BATCH) % 3, 3).float()  # BCE, as pyvene picks
    for labels in (onehot, torch.arange(BATCH) % 3):
        torch.testing.assert_close(ours(inputs_embeds=BASE, labels=labels).loss,
                                   theirs(inputs_embeds=BASE, labels=labels)[0], rtol=0, atol=1e-6)
        theirs.config.problem_type = None  # pyvene keeps the first call's choice


def test_mlp_activation_subspace_interchange_matches_pyvene_and_hand():
    pyvene, ours, theirs = _models()

    def config(lib):
        return lib.IntervenableConfig(
            representations=[lib.RepresentationConfig(1, "mlp_activation", "pos", 1)],
            intervention_types=lib.VanillaIntervention)

    call = dict(unit_locations={"sources->base": ([AT_ZERO], [AT_ZERO])}, subspaces=[[[1, 6]] * BATCH])
    _, a = pv.IntervenableModel(config(pv), ours)({"inputs_embeds": BASE}, [{"inputs_embeds": SRC0}], **call)
    _, b = pyvene.IntervenableModel(config(pyvene), theirs)({"inputs_embeds": BASE}, [{"inputs_embeds": SRC0}], **call)
    with torch.no_grad():
        h = ours.mlp.h
        act_b, act_s = h[1](h[0](BASE)), h[1](h[0](SRC0))  # pdrop=0: act output == block output
        act_b[..., [1, 6]] = act_s[..., [1, 6]]
        expected = ours.score(act_b).squeeze(1)
    torch.testing.assert_close(a.logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(b[0], expected  # pyvene's MLP returns a tuple
                               , rtol=0, atol=1e-6)


def test_linked_rotation_two_sources_as_in_the_das_tutorial():
    """Two representations at one site share one rotation (``intervention_link_key``): source 0
    sets the first half of the rotated space, source 1 the second half."""
    pyvene, ours, theirs = _models()

    def intervenable(lib, model):
        reps = [lib.RepresentationConfig(0, "block_output", "pos", 1, subspace_partition=PARTITION,
                                         intervention_link_key=0) for _ in range(2)]
        return lib.IntervenableModel(
            lib.IntervenableConfig(representations=reps, intervention_types=lib.RotatedSpaceIntervention),
            model)

    ours_im, theirs_im = intervenable(pv, ours), intervenable(pyvene, theirs)
    ours_rot = ours_im.interventions[ours_im.sorted_keys[0]]
    theirs_rot = theirs_im.interventions[theirs_im.sorted_keys[0]]
    assert ours_rot is ours_im.interventions[ours_im.sorted_keys[1]]
    with torch.no_grad():
        ours_rot.rotate_layer.weight = theirs_rot.rotate_layer.weight.detach().clone()
    rotation = ours_rot.rotate_layer.weight.detach()  # (h_dim, h_dim), orthogonal
    torch.testing.assert_close(rotation, theirs_rot.rotate_layer.weight.detach(), rtol=0, atol=1e-6)

    sources = [{"inputs_embeds": SRC0}, {"inputs_embeds": SRC1}]
    call = dict(unit_locations={"sources->base": ([AT_ZERO, AT_ZERO], [AT_ZERO, AT_ZERO])},
                subspaces=[[[0]] * BATCH, [[1]] * BATCH])
    _, a = ours_im({"inputs_embeds": BASE}, sources, **call)
    _, b = theirs_im({"inputs_embeds": BASE}, list(sources), **call)
    with torch.no_grad():
        layer0 = ours.mlp.h[0]
        rb, r0, r1 = (layer0(x) @ rotation for x in (BASE, SRC0, SRC1))
        mixed = torch.cat([r0[..., : H // 2], r1[..., H // 2:]], dim=-1) @ rotation.T
        expected = ours.score(ours.mlp.h[1](mixed)).squeeze(1)
        del rb
    torch.testing.assert_close(a.logits, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(b[0], expected  # pyvene's MLP returns a tuple
                               , rtol=0, atol=1e-5)


def test_embeddings_as_pyvene():
    pyvene = pytest.importorskip("pyvene")
    from pyvene.models.mlp.modelings_mlp import MLPConfig as PyveneMLPConfig

    fields = dict(include_emb=True, vocab_size=20, max_position_embeddings=4, h_dim=H, pdrop=0.0)
    _, _, theirs = pyvene.create_mlp_classifier(PyveneMLPConfig(**fields))
    _, _, ours = pv.create_mlp_classifier(pv.MLPConfig(**fields))
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ids, positions = torch.tensor([[3], [7]]), torch.tensor([[0], [2]])
    torch.testing.assert_close(ours.eval()(ids, positions).logits, theirs.eval()(ids, positions)[0], rtol=0, atol=0)
