"""``scripts/check_big_model.py``: its CPU path runs and prints the table; its full-size model
is Pythia-6.9B's (checked on the ``meta`` device, where nothing is allocated)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_big_model.py"


def load_script():
    spec = importlib.util.spec_from_file_location("check_big_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_run_trains_and_prints_step_time_and_memory(tmp_path):
    out = tmp_path / "table.md"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--steps", "3", "--warmup", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = dict(line.strip("|").split("|", 1) for line in out.read_text().splitlines()[2:])
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["steps timed"] == "3 (after 1 warm-up)"
    assert rows["step time, median"].endswith(" ms") and float(rows["step time, median"].split()[0]) > 0
    assert rows["peak memory"].endswith("GiB")
    # The recipe's set-up: its intervention, batch size and bf16 autocast with fp32 parameters.
    assert rows["intervention"].startswith("LowRankRotatedSpaceIntervention (rank 1) at block_output, layer 2")
    assert rows["batch"] == "32 pairs x 3 tokens"
    assert rows["model dtype / precision"] == "bfloat16 / bf16-mixed"
    assert rows["intervention parameter dtypes"] == "float32"
    assert out.read_text().strip() in result.stdout


def test_full_size_model_has_pythia_6_9b_parameter_count():
    script = load_script()
    model = script.build_model(script.PYTHIA_6_9B, torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 6_857_302_016  # EleutherAI/pythia-6.9b
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
