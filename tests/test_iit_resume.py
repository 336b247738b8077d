"""Re-running an IIT job in the same run directory: nothing finished is done again, and a
training killed half way resumes from its checkpoint to the result of a run never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from das_train import cli
from das_train.core.fault_points import FAULT_VARIABLE
from das_train.training import iit_job
from das_train.training import run as run_module

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*")

SETTINGS = ["recipe=iit_hierarchical_equality", "progress=false", "logger=none", "model.hidden=32",
            "iit.blocks={WX:[0,8],YZ:[8,16]}", "iit.steps=20", "iit.eval_every=5", "iit.train_pairs=2048",
            "iit.eval_pairs=200", "trainer.max_steps=8"]
"""20 IIT steps of 8 batches per epoch (checkpoints every 5 steps), so a fit stopped half way
is mid-epoch with a checkpoint behind it."""
OUTPUTS = ("iit.csv", "iit_curve.csv")


def _run_here(run_dir) -> None:
    run_module.run(cli.check(SETTINGS[0].split("=")[1], [*SETTINGS[1:], f"run_dir={run_dir}"]))


def _outputs(run_dir) -> dict[str, str]:
    return {name: (run_dir / name).read_text() for name in OUTPUTS}


def test_a_finished_run_trains_and_evaluates_nothing_again(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _run_here(run_dir)
    first = _outputs(run_dir)

    def refuse(*args, **kwargs):
        raise AssertionError("finished work was done again")

    monkeypatch.setattr(iit_job, "train_model", refuse)
    monkeypatch.setattr(iit_job, "das_iia", refuse)
    _run_here(run_dir)
    assert _outputs(run_dir) == first
    # A run cut off after saving a model but before its row: the model is read back, not
    # trained again, and its evaluation gives the same row.
    (run_dir / "rows" / "no_iit.json").unlink()
    monkeypatch.undo()
    monkeypatch.setattr(iit_job, "train_model", refuse)
    _run_here(run_dir)
    assert _outputs(run_dir) == first


def _subprocess(run_dir, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(FAULT_VARIABLE, None)
    if fault:
        env[FAULT_VARIABLE] = fault
    return subprocess.run([sys.executable, "-m", "das_train", *SETTINGS, f"run_dir={run_dir}"],
                          capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_a_training_killed_half_way_resumes_to_the_uninterrupted_result(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    _run_here(uninterrupted)
    run_dir = tmp_path / "run"
    killed = _subprocess(run_dir, "fit_step:SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (run_dir / "checkpoints" / "iit" / "last.ckpt").is_file() and not (run_dir / "models").exists()
    finished = _subprocess(run_dir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "iit: resuming from" in finished.stderr + finished.stdout
    assert _outputs(run_dir) == _outputs(uninterrupted)
