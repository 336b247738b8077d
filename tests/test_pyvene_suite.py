"""pyvene 0.1.8's own test suite, pointed at das_train, must not lose ground.

Runs scripts/pyvene_suite.py on the das_train side over pyvene's tests/ and checks the pass count
against the floor reached so far, and that every failure is listed in the script as an expected
difference or a known gap. pyvene's sources are not vendored: the test reads a pyvene checkout
(PYVENE_CHECKOUT, a work tree or a bare git directory; by default the local mirror) and skips,
saying so, when there is none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pyvene_suite.py"
CHECKOUT = Path(os.environ.get("PYVENE_CHECKOUT", "/work/.mirror/stanfordnlp+pyvene/repo"))
REV = os.environ.get("PYVENE_REV", "v0.1.8")
# Reached on pyvene 0.1.8's tests/ (72 tests; pyvene itself passes 68 on this stack): 47, plus
# the six InterventionUtilsTestCase direct-call cases fixed since.
PASS_FLOOR = 53


def _suite_module():
    spec = importlib.util.spec_from_file_location("pyvene_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there while it runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_pyvene_suite_on_das_train(tmp_path):
    if not CHECKOUT.exists():
        pytest.skip(
            f"no pyvene checkout at {CHECKOUT}; set PYVENE_CHECKOUT to a work tree or bare git dir"
        )
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        str(CHECKOUT),
        "--rev",
        REV,
        "--side",
        "das_train",
        "--only",
        "tests/",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
    results = json.loads(out.read_text())["das_train"]
    suite = _suite_module()
    passed = [name for name, r in results.items() if r["status"] == "pass"]
    unlisted = {
        name: r["error"]
        for name, r in results.items()
        if r["status"] != "pass" and suite.expected_reason(name) is None
    }
    assert not unlisted, f"failures not listed as expected differences or known gaps: {unlisted}"
    assert len(passed) >= PASS_FLOOR, f"{len(passed)} of {len(results)} pass, floor {PASS_FLOOR}"
