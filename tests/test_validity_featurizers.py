"""The validity card's featurizers and figures, each against a hand computation (issue 19).

- directions: difference of class means and PCA against numpy on fixed activations; the
  random subspace orthonormal and seeded; a probe's weight direction by hand;
- the fixed interchange ``b + (s - b) Q Q^T`` on numbers, and the model's predictions after it
  (from a site's cache, with and without running from the site's block) against plain
  PyTorch hooks, on an MLP and at a per-row position of a left-padded GPT-2;
- a planted direction: activations ``label * u + noise`` read by a readout of ``u``, where
  ``u`` itself (what DAS is to find) and the full vector give changing-pairs IIA 1, a fitted
  probe's direction, diff-means and PCA ~1, and a random rank-1 subspace ~0;
- changing-pairs IIA, the seed t-interval and the pair bootstrap on hand-made examples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_gpt2, planted_readout_mlp

import das_train as pv
from das_train.data.pair_contract import RowPosition
from das_train.training.probe import LinearProbes, TableRows
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import collect_layer
from das_train.training.validity import (
    Interval,
    bootstrap_interval,
    check_basis,
    diff_means_directions,
    full_vector_basis,
    interchange,
    interchange_accuracy,
    interchange_predictions,
    pca_directions,
    probe_directions,
    probe_weight_directions,
    random_subspace,
    seed_interval,
    t_quantile,
)


def fixed_activations(n=60, d=6, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    acts = rng.normal(size=(n, d)) + rng.normal(size=(classes, d))[labels] * 2
    return acts, labels


# -- directions against numpy ------------------------------------------------------------------


def test_two_class_diff_means_is_the_normalized_difference_of_the_means():
    acts, labels = fixed_activations()
    expected = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    expected /= np.linalg.norm(expected)
    got = diff_means_directions(torch.tensor(acts), torch.tensor(labels))
    assert got.shape == (6, 1)
    np.testing.assert_allclose(got[:, 0].numpy(), expected, atol=1e-6)


def test_three_class_diff_means_spans_the_centred_class_means_orthonormally():
    acts, labels = fixed_activations(n=90, classes=3)
    means = np.stack([acts[labels == c].mean(0) for c in range(3)])
    offsets = means - means.mean(0)  # (3, d), rank 2
    u, _, _ = np.linalg.svd(offsets.T, full_matrices=False)
    projector = u[:, :2] @ u[:, :2].T
    got = diff_means_directions(torch.tensor(acts), torch.tensor(labels)).double().numpy()
    assert got.shape == (6, 2)
    np.testing.assert_allclose(got.T @ got, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(got @ got.T, projector, atol=1e-6)
    first = offsets[1] / np.linalg.norm(offsets[1])  # Gram-Schmidt order: class 1's offset first
    np.testing.assert_allclose(got[:, 0], first, atol=1e-6)


def test_pca_directions_are_numpys_top_eigenvectors_of_the_covariance_sign_fixed():
    acts, _ = fixed_activations(n=50, d=5)
    values, vectors = np.linalg.eigh(np.cov(acts, rowvar=False))
    top = vectors[:, np.argsort(values)[::-1][:3]]  # (d, 3)
    top *= np.sign(top[np.abs(top).argmax(0), np.arange(3)])  # largest entry positive
    got = pca_directions(torch.tensor(acts), 3)
    np.testing.assert_allclose(got.numpy(), top, atol=1e-5)
    # Shifting the data changes nothing (centred), and the call is deterministic.
    torch.testing.assert_close(pca_directions(torch.tensor(acts) + 7.0, 3), got, atol=1e-5, rtol=0)


def test_random_subspace_is_orthonormal_and_seeded():
    q = random_subspace(16, 3, seed=4)
    torch.testing.assert_close(q.T @ q, torch.eye(3), atol=1e-6, rtol=0)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(random_subspace(16, 3, seed=4), q, atol=0, rtol=0)
    assert not torch.allclose(random_subspace(16, 3, seed=5), q)
    torch.testing.assert_close(full_vector_basis(4), torch.eye(4))


def test_a_probes_direction_is_its_weight_difference_in_activation_space():
    weight = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, -4.0]])  # (d=3, C=2)
    std = torch.tensor([2.0, 1.0, 4.0])
    # Logit difference: x @ ((w1 - w0) / std) = x @ [1, 0, -1].
    expected = torch.tensor([1.0, 0.0, -1.0]) / math.sqrt(2)
    torch.testing.assert_close(probe_weight_directions(weight, std)[:, 0], expected)
    probes = LinearProbes(2, 3, 2)
    with torch.no_grad():
        probes.weight[1].copy_(weight)
        probes.std[1].copy_(std)
    torch.testing.assert_close(probe_directions(probes, 1)[:, 0], expected)


@pytest.mark.parametrize("call, message", [
    (lambda: diff_means_directions(torch.randn(4, 3), torch.tensor([0, 0, 2, 2])), r"classes \[1\] have no rows"),
    (lambda: pca_directions(torch.randn(4, 3), 4), "k must be in 1..3"),
    (lambda: random_subspace(4, 5, seed=0), "k must be in 1..dim=4"),
    (lambda: check_basis(torch.ones(4, 2)), "not orthonormal"),
    (lambda: check_basis(torch.eye(4)[:, :2], dim=5), "4 rows but the site's activation is 5 wide"),
    (lambda: probe_directions(LinearProbes(1, 3, 2), 2), "probe index 2 out of range for 1 probes"),
])
def test_bad_input_is_refused_naming_what_is_wrong(call, message):
    with pytest.raises((ValueError, IndexError), match=message):
        call()


# -- the interchange -------------------------------------------------------------------------


def test_the_interchange_swaps_the_sources_coordinates_in_the_subspace():
    base, source = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[4.0, 0.0, -1.0]])
    q = torch.tensor([[1.0], [1.0], [0.0]]) / math.sqrt(2)
    # (s - b) . q = (3 - 2) / sqrt 2, so b' = b + q / sqrt 2 = b + [0.5, 0.5, 0].
    torch.testing.assert_close(interchange(base, source, q), torch.tensor([[1.5, 2.5, 3.0]]))
    torch.testing.assert_close(interchange(base, source, torch.eye(3)), source)
    torch.testing.assert_close(interchange(base, source, torch.eye(3)[:, :1]), torch.tensor([[4.0, 2.0, 3.0]]))


def mlp(d=8, layers=3, seed=0):
    """A linear MLP: a random one with a squashing activation predicts one class everywhere."""
    _, _, model = pv.create_mlp_classifier(
        pv.MLPConfig(h_dim=d, n_layer=layers, input_dim=d, num_classes=3, pdrop=0.0,
                     activation_function="linear"), seed=seed)
    return model.eval()


def mlp_by_hand(model, base, source, layer, basis):
    """Logits with hidden layer ``layer``'s output interchanged, layer by layer by hand."""
    b, s = base, source
    for i, block in enumerate(model.mlp.h):
        b, s = block(b), block(s)
        if i == layer:
            b = b + ((s - b) @ basis) @ basis.T
    return model.score(b)


@pytest.mark.parametrize("skip", [False, True], ids=["whole_model", "from_the_cache"])
@pytest.mark.parametrize("layer", [0, 1])
def test_predictions_after_a_fixed_interchange_match_a_hand_computation(layer, skip):
    model, d = mlp(), 8
    gen = torch.Generator().manual_seed(3)
    base, source = torch.randn(40, d, generator=gen) * 3, torch.randn(40, d, generator=gen) * 3
    columns = {"base_inputs_embeds": base, "source_inputs_embeds": source,
               "counterfactual_label": torch.zeros(40, dtype=torch.long)}
    cache = collect_layer(model, layer, "block_output", [None], [columns], is_language_model_task=False)
    template = PrefixSkip.output_template(model, {"inputs_embeds": base[:1]})
    runner = PrefixSkip(model, layer, "block_output", template) if skip else None
    basis = random_subspace(d, 2, seed=1)
    got = interchange_predictions(model, layer, "block_output", None, basis, columns, cache, prefix_skip=runner,
                                  batch_size=16, is_language_model_task=False)
    with torch.no_grad():
        expected = mlp_by_hand(model, base, source, layer, basis).argmax(-1)
        plain = model(inputs_embeds=base).logits.argmax(-1)
    assert got.tolist() == expected.tolist()
    assert (got != plain).sum() >= 5  # the interchange changed predictions


def left_padded_pairs(n=12, length=7, seed=0):
    """Token rows of random lengths, left-padded with position ids, and a per-row key index."""
    gen = torch.Generator().manual_seed(seed)
    columns = {}
    for side in ("base", "source"):
        real = torch.randint(3, length + 1, (n,), generator=gen)
        pads = length - real
        ids = torch.randint(1, 50, (n, length), generator=gen)
        order = torch.arange(length)[None]
        columns[f"{side}_input_ids"] = torch.where(order < pads[:, None], 0, ids)
        columns[f"{side}_attention_mask"] = (order >= pads[:, None]).long()
        columns[f"{side}_position_ids"] = (order - pads[:, None]).clamp(min=0)
        key = pads + (torch.rand(n, generator=gen) * real).long()  # a real token of each row
        columns[f"{side}_positions"] = key[:, None]
    columns["counterfactual_label"] = torch.zeros(n, dtype=torch.long)
    return columns


def block_output_logits(model, inputs, edit=None):
    """The last position's logits (and block 0's output) with a plain forward hook."""
    seen = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output  # by transformers release
        seen["out"] = hidden.detach().clone()
        if edit is None:
            return None
        return (edit(hidden), *output[1:]) if isinstance(output, tuple) else edit(hidden)

    handle = model.transformer.h[0].register_forward_hook(hook)
    try:
        return model(**inputs).logits[:, -1], seen["out"]
    finally:
        handle.remove()


def side(columns, name):
    return {key: columns[f"{name}_{column}"] for key, column in
            (("input_ids", "input_ids"), ("attention_mask", "attention_mask"), ("position_ids", "position_ids"))}


def test_a_row_position_interchanges_each_sources_own_index_into_each_bases():
    model, columns = make_gpt2().eval(), left_padded_pairs(n=40)
    key = RowPosition(0)
    cache = collect_layer(model, 0, "block_output", [key], [columns])
    basis = random_subspace(16, 8, seed=2)
    got = interchange_predictions(model, 0, "block_output", key, basis, columns, cache, batch_size=5)
    rows, p, s = torch.arange(40), columns["base_positions"][:, 0], columns["source_positions"][:, 0]
    with torch.no_grad():
        _, source_acts = block_output_logits(model, side(columns, "source"))

        def edit(hidden):
            new = hidden.clone()
            new[rows, p] = hidden[rows, p] + ((source_acts[rows, s] - hidden[rows, p]) @ basis) @ basis.T
            return new

        expected, _ = block_output_logits(model, side(columns, "base"), edit)
        plain, _ = block_output_logits(model, side(columns, "base"))
    assert got.tolist() == expected.argmax(-1).tolist()
    assert (got != plain.argmax(-1)).sum() >= 4  # the interchange changed predictions


# -- a planted direction ----------------------------------------------------------------------

D = 16


def planted_pairs(model, u, n=400, seed=0):
    """Activations ``(2 y - 1) u + 0.5 noise`` for a planted variable ``y`` (the probes' target).
    The labels are the planted model's causal model: the sign of ``u.h``, so the counterfactual
    label after interchanging ``u`` is the model's prediction on the source."""
    gen = torch.Generator().manual_seed(seed)
    variable = torch.randint(2, (2, n), generator=gen)
    acts = (2 * variable[..., None] - 1) * u + 0.5 * torch.randn(2, n, D, generator=gen)
    with torch.no_grad():
        labels = model(inputs_embeds=acts.reshape(-1, D)).logits.argmax(-1).reshape(2, n)
    return {"base_inputs_embeds": acts[0], "source_inputs_embeds": acts[1], "base_label": labels[0],
            "counterfactual_label": labels[1], "base_variable": variable[0]}


def fitted_probe(acts, labels, steps=300):
    """A :class:`LinearProbes` fitted by full-batch Adam (what ``fit_probes`` trains)."""
    torch.manual_seed(0)
    probes = LinearProbes(1, D, 2, lr=0.05)
    probes.set_normalization(TableRows(acts[None], torch.arange(len(acts)), labels))
    optimizer = torch.optim.Adam(probes.parameters(), lr=0.05)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(probes(acts[None])[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return probes


def test_planted_direction_is_found_by_u_probe_diff_means_and_pca_not_by_a_random_subspace():
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(D, generator=gen)
    u /= u.norm()
    model = planted_readout_mlp(u)
    columns = planted_pairs(model, u)
    cache = collect_layer(model, 0, "block_output", [None], [columns], is_language_model_task=False)
    acts, labels = cache.base[:, 0], columns["base_variable"]  # the site's activations on the bases
    bases = {
        "das_u": u[:, None],  # what DAS is to find
        "probe_direction": probe_directions(fitted_probe(acts, labels)),
        "diff_means": diff_means_directions(acts, labels),
        "pca": pca_directions(acts, 1),
        "full_vector": full_vector_basis(D),
        "random_subspace": random_subspace(D, 1, seed=0),
    }
    found = {}
    for name, basis in bases.items():
        predictions = interchange_predictions(model, 0, "block_output", None, basis, columns, cache,
                                              is_language_model_task=False)
        found[name] = interchange_accuracy(predictions, columns["counterfactual_label"], columns["base_label"])
    for name in ("das_u", "full_vector"):  # exact: u.h is all the readout reads
        assert (found[name].all, found[name].changing) == (1.0, 1.0), (name, found[name])
    for name in ("probe_direction", "diff_means", "pca"):  # u up to the noise of 400 rows
        assert found[name].changing >= 0.95, (name, found[name])
        assert abs(float(bases[name][:, 0] @ u)) > 0.9, name
    # A random direction r moves u.h by ~(r.u)^2 ~ 1/16 of the source-base gap: few changing
    # pairs flip, and the pairs that share their label, right with no intervention at all,
    # make its IIA on all pairs ~0.5.
    assert found["random_subspace"].changing <= 0.15, found["random_subspace"]
    assert 0.35 <= found["random_subspace"].all <= 0.65, found["random_subspace"]


# -- the figures --------------------------------------------------------------------------------


def test_changing_pairs_iia_on_a_hand_made_example():
    predictions = torch.tensor([1, 0, 1, 1, 0, 0, 2, 2])
    counterfactual = torch.tensor([1, 0, 0, 1, 1, 0, 2, 1])
    base = torch.tensor([0, 0, 0, 1, 0, 1, 1, 1])
    # Right: pairs 0, 1, 3, 5, 6 (5 of 8). Changing (counterfactual != base): 0, 4, 5, 6; right
    # among them: 0, 5, 6 (3 of 4).
    iia = interchange_accuracy(predictions, counterfactual, base)
    assert (iia.all, iia.changing, iia.pairs, iia.changing_pairs) == (5 / 8, 3 / 4, 8, 4)
    unchanged = interchange_accuracy(predictions, counterfactual, counterfactual)
    assert unchanged.changing_pairs == 0 and math.isnan(unchanged.changing)
    with pytest.raises(ValueError, match="need as many predictions"):
        interchange_accuracy(predictions, counterfactual[:3], base)


def test_seed_interval_is_the_student_t_interval():
    # Known quantiles t_{0.975}(df): 12.7062, 4.3027, 2.7764, 2.0452.
    for df, value in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (29, 2.0452)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)
    interval = seed_interval([0.8, 0.9, 1.0])  # mean 0.9, sd 0.1, n 3
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert interval.mean == pytest.approx(0.9)
    assert (interval.low, interval.high) == (pytest.approx(0.9 - half, abs=1e-6), pytest.approx(0.9 + half, abs=1e-6))
    one = seed_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)
    with pytest.raises(ValueError, match="finite"):
        seed_interval([0.5, float("nan")])


def test_bootstrap_interval_on_hand_made_examples():
    assert bootstrap_interval(torch.ones(10), resamples=50) == Interval(1.0, 1.0, 1.0)
    assert bootstrap_interval(torch.zeros(10), resamples=50) == Interval(0.0, 0.0, 0.0)
    # Two pairs, one right: a resample's IIA is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so
    # with many resamples the 2.5% and 97.5% points are 0 and 1.
    assert bootstrap_interval(torch.tensor([1.0, 0.0]), resamples=4000, seed=1) == Interval(0.5, 0.0, 1.0)
    # Any example: the resampling is the seeded randint's, the bounds its sorted means' outer picks.
    correct = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1, 0, 1], dtype=torch.float64)
    picks = torch.randint(10, (200, 10), generator=torch.Generator().manual_seed(7))
    means = correct[picks].mean(1).sort().values
    got = bootstrap_interval(correct, resamples=200, seed=7)
    assert got == Interval(0.7, float(means[math.floor(0.025 * 199)]), float(means[math.ceil(0.975 * 199)]))
    assert bootstrap_interval(correct, resamples=200, seed=7) == got
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        bootstrap_interval(correct, resamples=0)
