"""Several seeds per site (``sweep.seeds``) train in one fit per (layer, component).

Seeds differ only in the interventions' starting rotation, so a layer's (position, seed) jobs
train side by side as its positions do; each row must still be the one the per-site path
writes for that seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from das_train.training.sweep import das_sweep
from das_train.training.sweep.groups import group_jobs, group_version
from das_train.training.sweep.sites import SweepSite

sys.path.insert(0, str(Path(__file__).parent))
from test_run import small_sweep  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

NAME, LAST = SweepSite(1, "block_output", 1, "name"), SweepSite(1, "block_output", 3, "last")
EMB = SweepSite(0, "block_input", 1, "name")


def test_a_layers_jobs_form_one_group_whatever_their_seeds():
    jobs = [(EMB, 0), (EMB, 1), (NAME, 0), (NAME, 1), (LAST, 0), (LAST, 1)]
    assert group_jobs(jobs) == [jobs[:2], jobs[2:]]
    # A shard's share, or what a resumed run has left, groups the same way.
    assert group_jobs(jobs[1::2]) == [[(EMB, 1)], [(NAME, 1), (LAST, 1)]]


def test_a_groups_checkpoint_name_lists_each_trained_job_once():
    jobs = [(NAME, 0), (NAME, 1), (LAST, 0), (LAST, 1)]
    assert group_version(jobs[::2], [0, 1]) == "block_output-L1-name+last-s0"  # one seed: as before
    assert group_version(jobs, [0, 1, 2, 3]) == "block_output-L1-name+last-s0+name+last-s1"
    assert group_version(jobs, [1, 2, 3]) == "block_output-L1-name+last-s1+last-s0"
    assert group_version(jobs[::2], []) == "block_output-L1-name+last-s0-untrained"


def test_batched_seeds_equal_the_per_site_rows_in_one_fit_per_layer(tmp_path, monkeypatch):
    fits = []
    original = das_sweep.fit_group
    monkeypatch.setattr(das_sweep, "fit_group",
                        lambda *a, **k: fits.append(sorted(set(s.layer for s, _ in a[1]))) or original(*a, **k))
    extra = ("sweep.layers=[1]", "sweep.positions=[bos,name,last]", "sweep.include_embeddings=false",
             "sweep.seeds=[0,1]")
    rows_b, weights_b = small_sweep(tmp_path, "batched", *extra)
    assert fits == [[1]]  # three positions x two seeds, one fit
    rows_p, weights_p = small_sweep(tmp_path, "per_site", *extra, "sweep.batched=false")
    assert [(r["position_name"], r["seed"]) for r in rows_b] == [
        (p, s) for p in ("bos", "name", "last") for s in ("0", "1")]
    for b, p in zip(rows_b, rows_p, strict=True):
        for key in ("layer", "position", "seed", "iia", "probe_accuracy", "control_accuracy", "test_pairs"):
            assert b[key] == p[key], (key, b, p)
    assert weights_b.keys() == weights_p.keys() and len(weights_b) == 6
    for name in weights_b:
        for key in weights_b[name]:
            torch.testing.assert_close(weights_b[name][key], weights_p[name][key], atol=1e-5, rtol=1e-4)
    # The seeds really differ: not one intervention saved twice.
    seed_0, seed_1 = weights_b["block_output-L1-last-s0"], weights_b["block_output-L1-last-s1"]
    assert any(not torch.equal(seed_0[key], seed_1[key]) for key in seed_0)
