"""Fault injection: a run killed at every stage, then run again, ends as if never stopped.

Each run is a subprocess of ``python -m das_train`` that sends itself SIGKILL (a crash, the OOM
killer, a pre-empted node) or SIGINT (Ctrl-C) at one named point
(:mod:`das_train.core.fault_points`); the next run of the same command resumes. After one stop
at every point the run must finish with the table, rows and saved weights of a run that was
never stopped, with no duplicated row, no temporary file left, and no lock held.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from das_train.core.fault_points import FAULT_VARIABLE, POINTS

SETTINGS = ["recipe=gender_tiny", "progress=false", "logger=none", "model.max_steps=300",
            "trainer.max_steps=16", "trainer.batch_size=32", "task.n_train=128", "task.n_val=16",
            "task.n_test=64", "sweep.probe.max_epochs=2", "sweep.layers=[0,1]"]
"""Three groups (the embedding row and two layers), so there is a 'between groups'; 16 steps
of about 4 per epoch, so a fit stopped half way has checkpoints behind it."""


def _run(run_dir: Path, cache: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(FAULT_VARIABLE, None)
    if fault:
        env[FAULT_VARIABLE] = fault
    return subprocess.run([sys.executable, "-m", "das_train", *SETTINGS, f"run_dir={run_dir}", f"cache_dir={cache}"],
                          capture_output=True, text=True, timeout=600, env=env)


def _outcome(run_dir: Path) -> tuple[str, list[tuple], dict[str, dict[str, torch.Tensor]]]:
    """(table.csv, the results rows without their timing, every saved intervention's weights)."""
    with (run_dir / "results.csv").open() as handle:
        rows = [tuple(v for k, v in row.items() if k != "train_seconds") for row in csv.DictReader(handle)]
    weights = {p.name: load_file(str(p / "interventions.safetensors"))
               for p in sorted((run_dir / "interventions").iterdir())}
    return (run_dir / "table.csv").read_text(), sorted(rows), weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    base = tmp_path_factory.mktemp("uninterrupted")
    result = _run(base / "run", base / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return _outcome(base / "run")


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.name.endswith(".tmp")
                  or ".tmp" in p.suffixes)


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGINT"])
def test_a_run_stopped_at_every_stage_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, signal_name):
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    for point in POINTS:
        stopped = _run(run_dir, cache, f"{point}:{signal_name}")
        if signal_name == "SIGKILL":
            assert stopped.returncode == -signal.SIGKILL, (point, stopped.stderr[-3000:])
        else:
            assert stopped.returncode == 130, (point, stopped.stderr[-3000:])
            assert "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    finished = _run(run_dir, cache)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table, rows, weights = _outcome(run_dir)
    expected_table, expected_rows, expected_weights = uninterrupted
    assert table == expected_table
    assert rows == expected_rows and len(set(rows)) == len(rows)
    assert weights.keys() == expected_weights.keys()
    for name, tensors in weights.items():
        for key, value in tensors.items():
            torch.testing.assert_close(value, expected_weights[name][key], atol=1e-6, rtol=0, msg=name)
    assert _leftovers(run_dir) == [] and _leftovers(cache) == []
