"""Sites where every pair's source equals its base up to the site are tested untrained.

das_train/training/shared_prefix.py: in a causal model such a site's source activation is its
base's, an interchange returns the base whatever its parameters, and training cannot change
the IIA. These tests check the prefix found on hand-made pairs, every condition of the rule, the
``keeps_base_for_equal_source`` claim of each intervention that makes it, and a sweep run both
ways: the same rows, and the untrained sites' interventions exactly the trained ones'.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch
import transformers

from das_train.interventions.base import INTERVENTION_REGISTRY
from das_train.training.schema import RunConfig
from das_train.training.sweep.shared_prefix import (
    shared_prefix,
    shared_prefix_length,
    untrained_reason,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_run import small_sweep  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:.*ModelCheckpoint with manual optimization.*"),
]


def pairs(base_ids, source_ids, base_mask=None, source_mask=None):
    base_ids, source_ids = torch.tensor(base_ids), torch.tensor(source_ids)
    return {"base_input_ids": base_ids, "source_input_ids": source_ids,
            "base_attention_mask": torch.ones_like(base_ids) if base_mask is None else torch.tensor(base_mask),
            "source_attention_mask": torch.ones_like(source_ids) if source_mask is None else torch.tensor(source_mask)}


def test_the_shared_prefix_is_where_every_pair_agrees():
    assert shared_prefix_length(pairs([[1, 2, 3, 4], [1, 5, 6, 7]], [[1, 2, 9, 4], [1, 5, 6, 8]]), True) == 2
    # One pair differing at position 0 leaves nothing shared, whatever the others do.
    assert shared_prefix_length(pairs([[1, 2, 3], [1, 2, 3]], [[1, 2, 3], [0, 2, 3]]), True) == 0
    # The same ids under different masks (padding) are different inputs.
    assert shared_prefix_length(pairs([[0, 1, 2]], [[0, 1, 2]], [[0, 1, 1]], [[1, 1, 1]]), True) == 0
    assert shared_prefix_length(pairs([[1, 2, 3]], [[1, 2, 3]]), True) == 3  # identical pairs: all of it
    # Vector tasks: embeddings compared along the sequence; no positions, nothing shared.
    embeds = torch.randn(2, 3, 4)
    other = embeds.clone()
    other[1, 2, 0] += 1
    assert shared_prefix_length({"base_inputs_embeds": embeds, "source_inputs_embeds": other}, False) == 2
    flat = torch.randn(2, 4)
    assert shared_prefix_length({"base_inputs_embeds": flat, "source_inputs_embeds": flat}, False) == 0
    # Over several splits: the shortest, with the sequence length.
    train = pairs([[1, 2, 3, 4]], [[1, 2, 3, 9]])
    test = pairs([[1, 2, 3, 4]], [[1, 7, 3, 4]])
    assert shared_prefix([train, test], True) == (1, 4)


def neox():
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=40,
        max_position_embeddings=16)).eval()


def bert():
    return transformers.BertForMaskedLM(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=40)).eval()


def settings(**changes):
    """The (sweep, intervention) sections untrained_reason reads, with ``section__key`` changes."""
    cfg = {"sweep": {"skip_shared_prefix": True},
           "intervention": {"type": "LowRankRotatedSpaceIntervention", "iit": False, "boundary_penalty": 0.0}}
    for key, value in changes.items():
        section, name = key.split("__")
        cfg[section][name] = value
    config = RunConfig.from_data(cfg)
    return config.sweep, config.intervention


def test_a_site_is_left_untrained_only_where_the_rule_holds():
    model = neox()
    reason = untrained_reason(*settings(), model, 1, prefix=2, seq=4)
    assert reason is not None and "positions 0..1" in reason and "sweep.skip_shared_prefix" in reason
    assert untrained_reason(*settings(), model, -4, prefix=1, seq=4) is not None  # -4 is row 0
    assert untrained_reason(*settings(), model, 2, prefix=2, seq=4) is None  # past the shared prefix
    assert untrained_reason(*settings(), model, -1, prefix=2, seq=4) is None  # the last row, 3
    assert untrained_reason(*settings(), model, None, prefix=2, seq=4) is None  # no positions
    assert untrained_reason(*settings(sweep__skip_shared_prefix=False), model, 0, prefix=2, seq=4) is None
    assert untrained_reason(*settings(intervention__iit=True), model, 0, prefix=2, seq=4) is None
    # A boundary penalty is a loss of its own, data or not; boundless DAS's training is also
    # its temperature schedule, which a skipped site would not follow.
    assert untrained_reason(*settings(intervention__boundary_penalty=0.1), model, 0, prefix=2, seq=4) is None
    boundless = settings(intervention__type="BoundlessRotatedSpaceIntervention")
    assert untrained_reason(*boundless, model, 0, prefix=2, seq=4) is None
    assert untrained_reason(*settings(intervention__type="SigmoidMaskIntervention"), model, 0, 2, 4) is not None
    # Not trainable, or not given a pair's source: never.
    assert untrained_reason(*settings(intervention__type="VanillaIntervention"), model, 0, 2, 4) is None
    assert untrained_reason(*settings(intervention__type="SkipIntervention"), model, 0, 2, 4) is None
    # An autoencoder changes the base even given it as the source.
    assert untrained_reason(*settings(intervention__type="AutoencoderIntervention"), model, 0, 2, 4) is None
    # A bidirectional encoder's position 0 sees the whole sequence.
    assert untrained_reason(*settings(), bert(), 0, prefix=2, seq=4) is None


FLAGGED = sorted(name for name, cls in INTERVENTION_REGISTRY.items()
                 if cls.keeps_base_for_equal_source and cls.trainable)


def test_the_trainable_interventions_that_claim_it_return_the_base_given_it_as_source():
    assert {"LowRankRotatedSpaceIntervention", "RotatedSpaceIntervention", "BoundlessRotatedSpaceIntervention",
            "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention"} <= set(FLAGGED)
    assert not INTERVENTION_REGISTRY["AutoencoderIntervention"].keeps_base_for_equal_source
    torch.manual_seed(0)
    for name in FLAGGED:
        cls = INTERVENTION_REGISTRY[name]
        options = {"low_rank_dimension": 3} if "low_rank_dimension" in cls.config_fields else {}
        intervention = cls(embed_dim=8, **options)
        with torch.no_grad():  # parameters away from their start: the claim is for any value
            for parameter in intervention.parameters():
                parameter.add_(torch.randn_like(parameter))
        base = torch.randn(5, 1, 8)
        torch.testing.assert_close(intervention(base, base.clone()), base, atol=1e-5, rtol=1e-5, msg=name)
        # The claim is not vacuous: a different source changes the output.
        assert not torch.allclose(intervention(base, torch.randn(5, 1, 8)), base, atol=1e-3), name


def sweep(tmp_path, name, *extra):
    return small_sweep(tmp_path, name, "sweep.layers=[0]", "sweep.positions=[bos,name]", "trainer.max_steps=30",
                       *extra)


def test_a_sweep_tests_the_bos_sites_untrained_and_gets_what_training_gets(tmp_path, caplog):
    """gender_tiny's BOS token is every sentence's first: its sites (embedding row and L0) are
    tested untrained, batched and one site at a time, with the rows training gives and the
    interventions training ends with, up to the rounding noise training there walks along."""
    with caplog.at_level(logging.INFO, logger="das_train"):
        skipped, skipped_weights = sweep(tmp_path, "skip")
    untrained = {r.getMessage().split(" seed")[0] for r in caplog.records if "tested untrained" in r.getMessage()}
    assert untrained == {"block_input-L0-bos", "block_output-L0-bos"}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="das_train"):
        trained, trained_weights = sweep(tmp_path, "train", "sweep.skip_shared_prefix=false")
    assert not any("tested untrained" in r.getMessage() for r in caplog.records)
    per_site, per_site_weights = sweep(tmp_path, "per_site", "sweep.batched=false")
    assert len(skipped) == len(trained) == len(per_site) == 4
    for a, b, c in zip(skipped, trained, per_site):
        for key in ("layer", "component", "position", "iia", "probe_accuracy", "control_accuracy", "test_pairs"):
            assert a[key] == b[key] == c[key], (key, a, b, c)
    assert skipped_weights.keys() == trained_weights.keys() == per_site_weights.keys()
    for name in skipped_weights:
        for key in skipped_weights[name]:
            torch.testing.assert_close(per_site_weights[name][key], skipped_weights[name][key], atol=1e-5, rtol=1e-4)
            if "-bos-" in name:
                # Untrained. Training there follows only the rounding gap between the cached source
                # and the recomputed base activation (zero in exact arithmetic; on some BLAS builds
                # a few ulps at block outputs), which Adam turns into steps of up to lr.
                torch.testing.assert_close(skipped_weights[name][key], trained_weights[name][key], atol=2e-3, rtol=0)
                continue
            torch.testing.assert_close(skipped_weights[name][key], trained_weights[name][key], atol=1e-5, rtol=1e-4)
    # The name sites did train (the comparison is not vacuous).
    assert {r["iia"] for r in skipped if r["position_name"] == "name"} != {r["iia"] for r in skipped if r["position_name"] == "bos"}
