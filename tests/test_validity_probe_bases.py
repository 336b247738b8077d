"""The validity card's activation-read featurizers, as the sweep's probes fill them (issue 19).

``sweep_probes`` reads each site's activations once for the probes; the featurizers that need
activations come from the same tables. Checked here:

- on a tiny GPT-NeoX, at a block output (read by the site cache) and at the query columns of
  the fused qkv projection (read by a collecting IntervenableModel): ``diff_means`` and ``pca``
  equal numpy's on the training pairs' activations collected with plain PyTorch hooks (a base
  shared by several pairs counting once per pair), ``probe_direction`` equals the weight
  directions of the probe fitted alone with the same seed, the seeds share ``diff_means`` and
  ``pca``, and ``methods=()`` computes nothing extra;
- a planted direction: a model that reads a variable along ``u`` only, next to a larger
  distractor; rank-1 DAS, the sweep's probe direction and diff-means recover ``u`` (changing-
  pairs IIA >= 0.95), a random rank-1 subspace and PCA (which follows the distractor) do not.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import make_neox, planted_readout_mlp
from torch.utils.data import DataLoader

from das_train.data.pair_contract import TaskSpec
from das_train.training.das_module import DASModule
from das_train.training.probe import train_probes
from das_train.training.schema import ProbeConfig
from das_train.training.sweep.cached_pairs import SplitReader
from das_train.training.sweep.probes import sweep_probes
from das_train.training.sweep.site_cache import batched_sites_supported, collect_layer
from das_train.training.sweep.sites import SweepSite
from das_train.training.validity import (
    check_basis,
    interchange_accuracy,
    interchange_predictions,
    probe_weight_directions,
    random_subspace,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
]

ALL_METHODS = ("probe_direction", "diff_means", "pca")
PROBE = ProbeConfig(max_epochs=4, lr=0.05)


class Splits:
    """The one thing :class:`SplitReader` asks of a datamodule: a split's ordered loader."""

    def __init__(self, rows: dict[str, list[dict]], batch_size: int = 16) -> None:
        self.rows, self.batch_size = rows, batch_size

    def ordered_dataloader(self, split: str) -> DataLoader:
        return DataLoader(self.rows[split], batch_size=self.batch_size, shuffle=False)


# -- against a hand computation on a tiny GPT-NeoX --------------------------------------------

LENGTH, POOL, PAIRS = 5, 12, 90


def token_pairs(shared_first_token: bool = False, seed: int = 0) -> list[dict]:
    """``PAIRS`` pairs whose bases come from a pool of ``POOL`` sentences, unevenly (the first
    ones far more often), so a sentence shared by several pairs weighs by its pairs, and
    class means over pairs differ from those over distinct sentences. The variable is the
    sentence's pool index mod 2."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randint(1, 64, (POOL, LENGTH), generator=gen)
    if shared_first_token:
        pool[:, 0] = 7
    weights = torch.linspace(4.0, 0.5, POOL)
    picks = torch.multinomial(weights, PAIRS, replacement=True, generator=gen)
    return [{
        "base_input_ids": pool[p], "base_attention_mask": torch.ones(LENGTH, dtype=torch.long),
        "source_input_ids": pool[(p + 1) % POOL], "source_attention_mask": torch.ones(LENGTH, dtype=torch.long),
        "counterfactual_label": torch.tensor(3), "base_variable": p % 2, "base_control": (p * 7 // 3) % 3,
    } for p in picks.tolist()]


def neox_spec() -> TaskSpec:
    return TaskSpec(name="tokens", positions={"first": 0, "mid": 2, "late": 3}, variable="parity", variable_values=2)


def hand_activations(model, rows: list[dict]) -> dict[tuple[int, str, int], np.ndarray]:
    """Each pair's base activation ``(N, w)`` at the two probed sites, by plain forward hooks:
    block 1's output at position 2, and the query columns of block 0's fused projection at
    position 3 (NeoX lays it out as (heads, 3, head_dim); the query is index 0)."""
    seen = {}
    blocks = model.gpt_neox.layers
    hooks = [blocks[1].register_forward_hook(lambda m, a, out: seen.__setitem__("block", out[0] if isinstance(out, tuple) else out)),
             blocks[0].attention.query_key_value.register_forward_hook(lambda m, a, out: seen.__setitem__("qkv", out))]
    ids = torch.stack([row["base_input_ids"] for row in rows])  # (N, seq)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    heads = model.config.num_attention_heads
    qkv = seen["qkv"].reshape(len(ids), LENGTH, heads, 3, -1)  # (N, seq, heads, 3, head_dim)
    query = qkv[:, :, :, 0].reshape(len(ids), LENGTH, -1)  # (N, seq, hidden)
    return {(1, "block_output", 2): seen["block"][:, 2].double().numpy(),
            (0, "query_output", 3): query[:, 3].double().numpy()}


def numpy_diff_means(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    direction = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    return direction / np.linalg.norm(direction)


def numpy_pca(acts: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` eigenvectors of the covariance, each signed so its largest entry is positive."""
    values, vectors = np.linalg.eigh(np.cov(acts, rowvar=False))
    top = vectors[:, np.argsort(values)[::-1][:k]]  # (d, k)
    peaks = np.abs(top).argmax(0)
    return top * np.sign(top[peaks, np.arange(k)])


def neox_sweep(methods, rank=2, seeds=(0, 1), rows=None):
    model, rows = make_neox(), rows or token_pairs()
    sites = [SweepSite(1, "block_output", 2, "mid"), SweepSite(0, "query_output", 3, "late")]
    jobs = [(site, seed) for site in sites for seed in seeds]
    results = sweep_probes(PROBE, model, neox_spec(), jobs, SplitReader(Splits({"train": rows}), True),
                           methods=methods, rank=rank)
    return model, rows, results


@pytest.fixture(scope="module")
def every_method():
    """One sweep of the probes with every activation-read method, two seeds, rank 2."""
    return neox_sweep(ALL_METHODS)


def test_both_kinds_of_site_are_probed():
    model = make_neox()
    assert batched_sites_supported(model, 1, "block_output") is None  # the site cache reads it
    assert batched_sites_supported(model, 0, "query_output") is not None  # a collector reads it


def test_diff_means_and_pca_are_numpys_on_every_training_pairs_activation_and_shared_by_the_seeds(every_method):
    model, rows, results = every_method
    labels = np.array([row["base_variable"] for row in rows])
    for site, acts in hand_activations(model, rows).items():
        first, second = results[(*site, 0)], results[(*site, 1)]
        assert set(first.bases) == set(ALL_METHODS), site
        diff_means = first.bases["diff_means"]
        assert diff_means.dtype == torch.float32 and diff_means.device.type == "cpu"
        np.testing.assert_allclose(diff_means[:, 0].numpy(), numpy_diff_means(acts, labels), atol=1e-5)
        assert first.bases["pca"].shape == (16, 2)
        np.testing.assert_allclose(first.bases["pca"].numpy(), numpy_pca(acts, 2), atol=1e-4)
        # Once per site: each seed's result holds the same tensors.
        assert second.bases["diff_means"] is diff_means and second.bases["pca"] is first.bases["pca"]
        # Pairs, not distinct sentences: each sentence counted once gives another direction.
        _, once = np.unique(acts.round(6), axis=0, return_index=True)
        assert np.abs(numpy_diff_means(acts[once], labels[once]) @ diff_means[:, 0].numpy()) < 0.999, site


def test_probe_direction_is_the_weight_direction_of_the_probe_fitted_alone_with_the_same_seed(every_method):
    model, rows, results = every_method
    labels = torch.tensor([row["base_variable"] for row in rows])
    for site, acts in hand_activations(model, rows).items():
        for seed in (0, 1):
            probes, accuracy = train_probes(torch.tensor(acts, dtype=torch.float32)[None], labels, 2, lr=PROBE.lr,
                                            weight_decay=PROBE.weight_decay, max_epochs=PROBE.max_epochs, seed=seed)
            expected = probe_weight_directions(probes.weight[0], probes.std[0])
            got = results[(*site, seed)]
            assert got.accuracy == pytest.approx(accuracy[0], abs=1e-9)
            torch.testing.assert_close(got.bases["probe_direction"], expected, rtol=0, atol=1e-4)
        seeds = [results[(*site, seed)].bases["probe_direction"] for seed in (0, 1)]
        assert not torch.allclose(seeds[0], seeds[1]), site  # a probe per seed


def test_methods_that_read_no_activations_add_nothing_and_the_fit_is_unchanged(every_method):
    _, _, asked = every_method
    for methods in [(), ("das", "boundless", "full_vector", "random_subspace")]:
        _, _, plain = neox_sweep(methods, seeds=(0,))
        assert plain.keys() == {key for key in asked if key[-1] == 0}
        for key, result in plain.items():
            assert result.bases == {}, (methods, key)
            assert (result.accuracy, result.control_accuracy) == (asked[key].accuracy, asked[key].control_accuracy)


def test_pca_keeps_the_interventions_rank_and_pca_alone_is_computed_alone():
    _, _, results = neox_sweep(("pca",), rank=3, seeds=(0,))
    for result in results.values():
        assert set(result.bases) == {"pca"}
        check_basis(result.bases["pca"], 16)
        assert result.bases["pca"].shape == (16, 3)


def test_diff_means_is_left_out_with_a_warning_where_every_class_mean_is_the_same(caplog):
    model, rows = make_neox(), token_pairs(shared_first_token=True)
    jobs = [(SweepSite(1, "block_output", 0, "first"), 0)]  # causal: position 0 sees one token only
    with caplog.at_level(logging.WARNING, logger="das_train"):
        results = sweep_probes(PROBE, model, neox_spec(), jobs, SplitReader(Splits({"train": rows}), True),
                               methods=ALL_METHODS, rank=1)
    assert set(results[(1, "block_output", 0, 0)].bases) == {"probe_direction", "pca"}
    assert "diff_means at block_output-L1 position 0 left out" in caplog.text


def test_an_unknown_method_is_refused_naming_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown methods \['diffmeans'\]: allowed are \[.*'diff_means'"):
        neox_sweep(("diff_means", "diffmeans"))


# -- a planted direction ------------------------------------------------------------------------

D = 16


def planted_basis() -> torch.Tensor:
    """An orthonormal basis ``(D, D)`` in general position: column 0 is ``u`` (where the variable
    is), column 1 ``v`` (a distractor)."""
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(5)))
    return basis


def planted_split(model, u, v, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Pairs of activations ``(2 y - 1) u + 2 z v + 0.5 noise``, ``y`` the planted variable (the
    probes' target), ``z`` a standard normal independent of it: off ``u``, every direction is
    independent of ``y``, and ``v`` varies most. The labels are the model's own (the sign of
    ``u.h``): interchanging ``u`` gives the source's."""
    gen = torch.Generator().manual_seed(seed)
    variables = torch.randint(2, (2, n), generator=gen)
    acts = ((2 * variables[..., None] - 1) * u + 2 * torch.randn(2, n, 1, generator=gen) * v
            + 0.5 * torch.randn(2, n, D, generator=gen))  # (base/source, n, D)
    with torch.no_grad():
        labels = model(inputs_embeds=acts.reshape(-1, D)).logits.argmax(-1).reshape(2, n)
    return {"base_inputs_embeds": acts[0], "source_inputs_embeds": acts[1], "base_variable": variables[0],
            "base_control": torch.randint(2, (n,), generator=gen), "base_label": labels[0],
            "counterfactual_label": labels[1]}


def trained_das_basis(model, train: dict[str, torch.Tensor], steps: int = 100) -> torch.Tensor:
    """The ``(D, 1)`` subspace a rank-1 DAS rotation at the site learns in ``steps`` Adam steps."""
    torch.manual_seed(0)
    module = DASModule(model, layer=0, component="block_output", position=None, low_rank_dimension=1, lr=0.05,
                       is_language_model_task=False)
    optimizer = module.configure_optimizers()
    order = torch.Generator().manual_seed(0)
    for step in range(steps):
        picked = torch.randint(len(train["base_variable"]), (64,), generator=order)
        batch = {name: train[name][picked] for name in
                 ("base_inputs_embeds", "source_inputs_embeds", "counterfactual_label")}
        optimizer.zero_grad()
        module.training_step(batch, step).backward()
        optimizer.step()
    return module.intervention.rotate_layer.weight.detach().clone()


def readout_accuracy(train, test, view) -> float:
    """Held-out accuracy of the least-squares linear readout of the variable (as -1/+1, with an
    intercept) from ``view`` of the bases' activations."""

    def design(split):
        acts = view(split["base_inputs_embeds"]).double()
        return torch.cat([acts, torch.ones(len(acts), 1, dtype=torch.float64)], dim=1)

    target = 2.0 * train["base_variable"].double() - 1
    weights = torch.linalg.lstsq(design(train), target[:, None]).solution  # (D + 1, 1)
    predicted = (design(test) @ weights)[:, 0] > 0
    return (predicted == test["base_variable"].bool()).double().mean().item()


@pytest.mark.filterwarnings("ignore:.*`self.trainer` reference is not registered.*")
def test_planted_direction_is_found_by_das_the_sweeps_probe_and_diff_means_not_by_pca_or_a_random_subspace():
    basis = planted_basis()
    u, v = basis[:, 0], basis[:, 1]
    model = planted_readout_mlp(u)
    train, test = planted_split(model, u, v, 1024, seed=0), planted_split(model, u, v, 400, seed=1)
    spec = TaskSpec(name="planted", positions={}, variable="y", variable_values=2, is_language_model_task=False)
    rows = [{name: column[i] for name, column in train.items() if name != "base_label"} for i in range(1024)]
    # A probe trained near convergence (60 steps at a high rate): an under-trained one still
    # points partly where its initialization did.
    settings = ProbeConfig(lr=0.1, max_epochs=30)
    probes = sweep_probes(settings, model, spec, [(SweepSite(0, "block_output", None, "h"), 0)],
                          SplitReader(Splits({"train": rows}, batch_size=64), False), methods=ALL_METHODS, rank=1)
    probe = probes[(0, "block_output", None, 0)]
    assert probe.accuracy >= 0.95
    # Honest: a least-squares linear readout decodes the variable on held-out pairs from the
    # activations, and is at chance from their coordinates along every other basis direction.
    assert readout_accuracy(train, test, lambda acts: acts) >= 0.95
    assert readout_accuracy(train, test, lambda acts: acts @ basis[:, 1:]) <= 0.6
    bases = {**probe.bases, "das": trained_das_basis(model, train), "random_subspace": random_subspace(D, 1, seed=0)}
    cache = collect_layer(model, 0, "block_output", [None], [test], is_language_model_task=False)
    found = {}
    for name, subspace in bases.items():
        predictions = interchange_predictions(model, 0, "block_output", None, subspace, test, cache,
                                              is_language_model_task=False)
        found[name] = interchange_accuracy(predictions, test["counterfactual_label"], test["base_label"])
    assert found["das"].changing_pairs >= 150
    for name in ("das", "probe_direction", "diff_means"):
        assert found[name].changing >= 0.95, (name, found[name])
        assert abs(float(bases[name][:, 0] @ u)) >= 0.9, name
    # PCA follows the distractor's variance, a random direction barely moves u.h: neither
    # changes the pairs that should change.
    assert abs(float(bases["pca"][:, 0] @ v)) >= 0.95
    for name in ("pca", "random_subspace"):
        assert found[name].changing <= 0.2, (name, found[name])
