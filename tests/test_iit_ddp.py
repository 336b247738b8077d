"""The IIT job (``job=iit``) in two processes (DDP, gloo on CPU) gives what it gives in one.

One process trains with ``iit.batch_size=32`` and ``trainer.batch_size=32`` (the DAS fits), two
with 16 each: both loaders are shuffled by a seeded order that the ranks deal between them
(:class:`~das_train.training.samplers.RankShuffleSampler`), so each DDP step sees the rows of one
process's step. 200 training pairs make 7 steps an epoch (the last one of 8 rows, 4 a rank), and
12 IIT steps (8 DAS steps) cross into the second epoch. Compared:

- ``iit.csv`` (task accuracy, neuron-aligned IIA, DAS IIA), ``iit.md``, ``iit_curve.csv`` and the
  rows exactly;
- the losses the logger recorded for both trainings (the mean over the ranks is the loss of one
  process's whole batch);
- each trained model's predictions on the held-out inputs within 1e-5, and its weights (MLP within
  1e-5; tiny LM see ``WEIGHTS_ATOL``);
- each DAS rotation's interchanged subspace (its projector ``R_k R_k^T``) within 1e-5. Not the
  stored matrix: a full rotation of 32 interchanging 8 coordinates learns nothing about rotations
  inside those 8 or inside the other 24 (they leave the loss unchanged), and Adam turns the
  all-reduce's rounding noise along them into steps of up to the learning rate;
- the files: the two-process run directory holds what the one-process one holds (rank 0 alone
  writes results, models, checkpoints and logs; nothing left half-written), plus only Hydra's
  log of rank 1.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from das_train import cli
from das_train.core.model import IntervenableModel
from das_train.training import run as run_module
from das_train.training.iit_job import iit_module, iit_subject
from das_train.training.iit_outputs import TRAININGS

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

COMMON = ("progress=false", "logger=csv", "trainer.accelerator=cpu", "trainer.shuffle=false", "iit.steps=12",
          "iit.eval_every=4", "iit.train_pairs=200", "iit.eval_pairs=100", "trainer.max_steps=8")
ONE = ("trainer.devices=1", "iit.batch_size=32", "trainer.batch_size=32")
TWO = ("trainer.devices=2", "trainer.strategy=ddp", "iit.batch_size=16", "trainer.batch_size=16")
RECIPES = {
    # A map set on the command line: the DDP process Lightning starts reads it back too.
    "iit_hierarchical_equality": ("model.hidden=32", "iit.blocks={WX:[0,8],YZ:[8,16]}"),
    "iit_gender_tiny": (),
}
WEIGHTS_ATOL = {"iit_hierarchical_equality": 1e-5, "iit_gender_tiny": 1e-3}
"""The tiny LM has weights whose gradient is zero but for rounding (its attention's key biases,
which add one constant to every score of a query; a unit of layer 2's MLP that no input
activates): Adam turns the all-reduce's different rounding there into steps of up to the
learning rate (0.003), about 1e-4 after 12 steps. Its other weights agree within 1e-5, and its
predictions (compared within 1e-5) do not depend on those."""
RANK_ONE_LOG = "train_ddp_process_1.log"
"""Hydra's log of the process Lightning starts for rank 1, its only file."""
COMPARED_TEXTS = ("iit.csv", "iit.md", "iit_curve.csv", "rows/iit.json", "rows/no_iit.json")


def _run(run_dir: Path, recipe: str, *overrides: str) -> None:
    command = [sys.executable, "-m", "das_train", f"recipe={recipe}", f"run_dir={run_dir}", *COMMON,
               *RECIPES[recipe], *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def _config(recipe: str):
    return run_module.as_run_config(cli.check(recipe, [*COMMON, *RECIPES[recipe], *ONE]))


def _interchanged_subspace(intervention) -> torch.Tensor:
    """The projector onto the rotated coordinates the intervention interchanges."""
    rotation = intervention.rotate_layer.weight.detach()
    k = getattr(intervention, "interchange_dim", None) or rotation.shape[1]
    return rotation[:, :k] @ rotation[:, :k].T


def _assert_same_models_and_rotations(recipe: str, one: Path, two: Path) -> None:
    config = _config(recipe)
    subject = iit_subject(config)
    factual = subject.data(config).factual
    for training in TRAININGS:
        model_one, model_two = (subject.read_model(run / "models" / training) for run in (one, two))
        weights_one, weights_two = model_one.state_dict(), model_two.state_dict()
        for key in weights_one:
            torch.testing.assert_close(weights_two[key], weights_one[key], atol=WEIGHTS_ATOL[recipe], rtol=0,
                                       msg=lambda m, key=key, training=training: f"{training} {key}: {m}")
        predictions = [iit_module(config, subject, model.eval(), training).predict(factual).detach()
                       for model in (model_one, model_two)]
        torch.testing.assert_close(predictions[1], predictions[0], atol=1e-5, rtol=0)
        for folder in sorted((one / "interventions").glob(f"das-{training}-*")):
            loaded = [IntervenableModel.load(str(run / "interventions" / folder.name), model_one)
                      for run in (one, two)]
            (key,) = loaded[0].interventions
            torch.testing.assert_close(_interchanged_subspace(loaded[1].interventions[key]),
                                       _interchanged_subspace(loaded[0].interventions[key]), atol=1e-5, rtol=0,
                                       msg=lambda m, name=folder.name: f"{name}: {m}")


def _assert_same_logged_losses(one: Path, two: Path) -> None:
    for training in TRAININGS:
        rows = []
        for run in (one, two):
            with (run / "logs" / training / "metrics.csv").open() as handle:
                rows.append(list(csv.DictReader(handle)))
        assert rows[0] and [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]]
        for row_one, row_two in zip(*rows, strict=True):
            for key, value in row_one.items():
                if key.startswith("train/") and value:
                    assert abs(float(row_two[key]) - float(value)) < 1e-5, (training, key, row_one, row_two)


def test_a_ddp_process_reads_a_map_set_on_the_command_line_as_the_first_process_does():
    """Lightning starts rank 1 with the command line Hydra was given: a map set whole arrives
    as its delete and add halves (``cli.whole_maps``), which must read as the map itself."""
    given = ["iit.blocks={WX:[0,8],YZ:[8,16]}"]
    child = cli.whole_maps(given)
    assert child[0] == "~iit.blocks"
    for overrides in (given, child):
        assert run_module.as_run_config(cli.check("iit_hierarchical_equality", overrides)).iit.blocks == {
            "WX": [0, 8], "YZ": [8, 16]}


# The tiny LM's pair of runs takes about 30 s.
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r == "iit_gender_tiny" else r
                                    for r in RECIPES])
def test_the_iit_job_gives_the_same_outputs_in_two_processes(recipe, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, recipe, *ONE)
    _run(two, recipe, *TWO)
    for name in COMPARED_TEXTS:
        assert (two / name).read_text() == (one / name).read_text(), name
    _assert_same_logged_losses(one, two)
    _assert_same_models_and_rotations(recipe, one, two)
    assert _files(two) == _files(one) | {RANK_ONE_LOG}
