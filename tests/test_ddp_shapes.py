"""Every sweep shape that runs in one process runs in two (DDP, gloo on CPU) with the same table.

One process trains with ``trainer.batch_size=16`` and two with 8 each, ``trainer.shuffle=false``:
each DDP step then sees exactly the rows one process sees in a step (see
``test_run.test_ddp_on_two_cpu_processes_matches_one_process``). So every row of the table
(IIA, probe and control accuracy, test pairs, a boundless boundary's size) must be equal and
every saved intervention equal within 1e-5 (only the all-reduce's summation order differs).

The default set combines the features in few runs; ``slow`` ones add the other combinations and
the shapes of ``recipe=pairs_file`` (per-row positions on left-padded texts).
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from das_train.training.validity import columns as card_columns

COMMON = ("progress=false", "logger=none", "trainer.max_steps=12", "task.n_train=192", "task.n_val=32",
          "task.n_test=63", "sweep.probe.max_epochs=2", "trainer.accelerator=cpu", "trainer.shuffle=false")
ONE = ("trainer.devices=1", "trainer.batch_size=16")
TWO = ("trainer.devices=2", "trainer.strategy=ddp", "trainer.batch_size=8")
TABLE_COLUMNS = ("layer", "component", "position", "seed", "iia", "probe_accuracy", "control_accuracy",
                 "selectivity", *card_columns.FIELDS, "intervention_size", "test_pairs")


def _run(run_dir, cache, recipe, *overrides):
    command = [sys.executable, "-m", "das_train", f"recipe={recipe}", f"run_dir={run_dir}", f"cache_dir={cache}",
               *COMMON, *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _outcome(run_dir):
    """(the results' table columns, per row, the main sweep's and its companions'; every saved
    intervention's tensors)."""
    from safetensors.torch import load_file

    rows, weights = [], {}
    for sweep in ("", *(name for name in ("boundless", "random_init") if (run_dir / name).is_dir())):
        directory = run_dir / sweep
        with (directory / "results.csv").open() as handle:
            rows += [(sweep, *(row[key] for key in TABLE_COLUMNS)) for row in csv.DictReader(handle)]
        weights.update({f"{sweep}/{p.name}": load_file(str(p / "interventions.safetensors"))
                        for p in sorted((directory / "interventions").iterdir())})
    return rows, weights


def assert_same_in_two_processes(tmp_path, *shape, expected_rows, atol=1e-5, recipe="gender_tiny"):
    cache = tmp_path / "cache"
    _run(tmp_path / "one", cache, recipe, *shape, *ONE)
    _run(tmp_path / "two", cache, recipe, *shape, *TWO)
    rows_one, weights_one = _outcome(tmp_path / "one")
    rows_two, weights_two = _outcome(tmp_path / "two")
    assert len(rows_one) == expected_rows
    assert rows_two == rows_one
    assert weights_two.keys() == weights_one.keys() and len(weights_one) == expected_rows
    # The validity card's figures, intervals over seeds and pairs included, are the same too.
    assert (tmp_path / "two" / "table.csv").read_text() == (tmp_path / "one" / "table.csv").read_text()
    for name in weights_one:
        for key in weights_one[name]:
            torch.testing.assert_close(weights_two[name][key], weights_one[name][key], atol=atol, rtol=0,
                                       msg=lambda m, name=name, key=key: f"{name} {key}: {m}")
    assert not list((tmp_path / "two").glob("results.shard*"))


pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

SHAPES = {
    # Groups of 4 (BOS, untrained, first) at layers 0 and 3 and the embedding row, one site
    # per pass, two seeds in one group: 3 groups x 4 positions x 2 seeds.
    "many_passes_seeds_embeddings": (("sweep.layers=[0,3]", "sweep.include_embeddings=true",
                                      "sweep.sites_per_pass=1", "sweep.seeds=[0,1]"), 24),
    # The shape that crashed before hand-synced gradients: sites_per_pass auto at the last layer.
    "last_layer_auto": (("sweep.layers=[3]", "sweep.include_embeddings=false"), 4),
    # Boundless (its annealing callback; no untrained sites), two sites per pass of three.
    "boundless_two_per_pass": (("intervention=boundless", "sweep.layers=[1]", "sweep.include_embeddings=false",
                                "sweep.positions=[name,verb,last]", "sweep.sites_per_pass=2"), 3),
    # The per-site path (sweep.batched=false) with plain DAS.
    "per_site_one": (("sweep.batched=false", "sweep.layers=[1]", "sweep.include_embeddings=false",
                      "sweep.positions=[last]"), 1),
    # IIT trains the model too: the per-site fit (group_fit.OneSiteFit), BOS included, each site on its own
    # copy of the model (before it had one, the two runs learned different rotations).
    "iit_per_site": (("intervention.iit=true", "sweep.layers=[1]", "sweep.include_embeddings=false",
                      "sweep.positions=[bos,last]"), 2),
    # The validity card's companion sweeps (Boundless DAS, the re-initialised model) beside the main one,
    # each in its own folder: 2 sites x 3 sweeps.
    "card_companions": (("sweep.layers=[1]", "sweep.include_embeddings=false", "sweep.positions=[name,last]",
                         "sweep.random_init_control=true",
                         "sweep.methods=[das,boundless,probe_direction,diff_means,pca,full_vector,random_subspace]"), 6),
    # Shuffled training: the ranks deal one shuffle between them (RankShuffleSampler), so within
    # the first epoch (8 of about 11 steps) two ranks of 8 train on one process's batches of 16.
    "shuffled_first_epoch": (("trainer.shuffle=true", "trainer.max_steps=8", "sweep.layers=[1]",
                              "sweep.include_embeddings=false", "sweep.positions=[name,last]"), 2),
}

SLOW_SHAPES = {
    "one_site": (("sweep.layers=[2]", "sweep.include_embeddings=false", "sweep.positions=[last]"), 1),
    "untrained_in_the_middle_one_pass": (("sweep.layers=[1]", "sweep.include_embeddings=false",
                                         "sweep.positions=[name,bos,last]", "sweep.sites_per_pass=null"), 3),
    "untrained_last_two_per_pass": (("sweep.layers=[2]", "sweep.include_embeddings=false",
                                     "sweep.positions=[verb,last,bos]", "sweep.sites_per_pass=2"), 3),
    "per_site_seeds_embeddings": (("sweep.batched=false", "sweep.layers=[0]", "sweep.include_embeddings=true",
                                   "sweep.positions=[bos,last]", "sweep.seeds=[0,1]"), 8),
    # Not the embedding row's last position: its token is the same in every base and source, so
    # boundless (which the shared-prefix rule does not cover) trains there on rounding noise
    # alone, which Adam turns into lr-sized steps that differ between one process and two (the
    # rows still agree).
    "boundless_embeddings_seeds": (("intervention=boundless", "sweep.layers=[0]", "sweep.include_embeddings=true",
                                    "sweep.positions=[name,verb]", "sweep.seeds=[0,1]"), 8),
    "every_layer_default": (("sweep.include_embeddings=true",), 20),
}


@pytest.mark.parametrize("overrides,rows", list(SHAPES.values()), ids=list(SHAPES))
def test_a_sweep_shape_gives_the_same_table_in_two_processes(overrides, rows, tmp_path):
    assert_same_in_two_processes(tmp_path, *overrides, expected_rows=rows)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,rows", list(SLOW_SHAPES.values()), ids=list(SLOW_SHAPES))
def test_more_sweep_shapes_give_the_same_table_in_two_processes(overrides, rows, tmp_path):
    # Boundless trains a full rotation (64 x 64 here) with Adam, which scales the all-reduce's
    # summation-order rounding on near-zero gradients up to a few 1e-5 over 12 steps.
    atol = 1e-4 if "intervention=boundless" in overrides else 1e-5
    assert_same_in_two_processes(tmp_path, *overrides, expected_rows=rows, atol=atol)


# recipe=pairs_file: texts of different lengths, left-padded, whose positions are RowPosition
# sites (the animal and "in" stand at a different token in each base and source). Rank 1: the
# recipe interchanges 4 rotated dimensions, and any rotation within those 4 leaves the loss
# unchanged, so Adam turns rounding noise along those directions into lr-sized steps; one
# process does that too when only its thread count changes (weights apart by about 1e-2, an
# IIA by one test pair), so the comparison would test rounding, not DDP.
PAIRS_SHAPES = {
    # The batched sweep: the embedding row and layer 1, each at the three positions.
    "pairs_batched": (("intervention.low_rank_dimension=1", "sweep.layers=[1]", "sweep.include_embeddings=true",
                       "sweep.positions=[animal,place,last]"), 6),
    # One site at a time, two seeds (each seed's own rotation), the embedding row included.
    "pairs_per_site_seeds": (("intervention.low_rank_dimension=1", "sweep.batched=false", "sweep.layers=[0]",
                              "sweep.include_embeddings=true", "sweep.positions=[animal,last]",
                              "sweep.seeds=[0,1]"), 8),
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides,rows", list(PAIRS_SHAPES.values()), ids=list(PAIRS_SHAPES))
def test_pair_file_shapes_give_the_same_table_in_two_processes(overrides, rows, tmp_path):
    assert_same_in_two_processes(tmp_path, *overrides, expected_rows=rows, recipe="pairs_file")


def test_shuffled_ranks_deal_one_shuffle_and_resume_at_any_step(monkeypatch):
    """Without processes: the two ranks' batches together are one process's batch of twice the
    size, and a sampler resumed at step k yields from there what an uninterrupted one yields."""
    from das_train.data.samplers import EpochShuffleSampler
    from das_train.training.samplers import RankShuffleSampler, RankSliceSampler

    def batches(rank, resume_at=0, epochs=3):
        monkeypatch.setattr(RankSliceSampler, "_world", staticmethod(lambda: (rank, 2)))
        sampler = RankShuffleSampler(50, seed=7, batch_size=4)
        sampler.resume_at(resume_at)
        epoch_rows = [list(sampler) for _ in range(epochs)]
        return [rows[i : i + 4] for rows in epoch_rows for i in range(0, len(rows), 4)]

    one = EpochShuffleSampler(range(50), seed=7, batch_size=8).epoch_order(0)
    ranks = [batches(0), batches(1)]
    for k in range(6):  # the first epoch's whole batches of 8: 6 of them in 50 rows (48 dealt)
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(one[8 * k : 8 * k + 8])
    for rank in (0, 1):
        uninterrupted = batches(rank)
        for step in (1, 5, 6, 7, 9):  # mid-epoch, an epoch's last (short) batch, an epoch's start
            resumed = batches(rank, resume_at=step, epochs=2)
            assert resumed == uninterrupted[step : step + len(resumed)], (rank, step)
