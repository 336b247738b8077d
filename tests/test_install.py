"""das_train as a user installs it: a wheel in a fresh virtual environment, run from another
directory, with its recipes found inside the package, a user's own recipe folder or file, and a
``tasks.py`` of the user's in the working directory that must not shadow the task plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["progress=false", "logger=none", "model.max_steps=150", "trainer.max_steps=5", "task.n_train=64",
         "task.n_val=16", "task.n_test=32", "sweep.probe.max_epochs=1", "sweep.layers=[0]",
         "sweep.positions=[last]", "sweep.include_embeddings=false"]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(python of a fresh venv holding only the das_train wheel, a directory outside the
    checkout). The venv reaches the test environment's dependencies through a ``.pth`` path,
    which Python appends to ``sys.path`` without running the editable install's finder there,
    so ``das_train`` can only come from the wheel."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(base / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (base / "dist").glob("das_train-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return python, elsewhere


def _run(python: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env or {})}
    environment.pop("PYTHONPATH", None)
    return subprocess.run([str(python), "-m", "das_train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=environment)


def test_the_wheel_holds_recipes_and_tasks_and_runs_from_another_directory(wheel_env):
    python, elsewhere = wheel_env
    where = subprocess.run([str(python), "-c", "import das_train, das_train.cli as c; "
                            "print(das_train.__file__); print(c.available_recipes())"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert str(ROOT) not in where.splitlines()[0]  # the installed copy, not the checkout
    assert "'gender_tiny'" in where and "'hierarchical_equality'" in where
    # A user's own tasks.py beside them must not shadow das_train's task plugins.
    (elsewhere / "tasks.py").write_text("raise RuntimeError('the user module was imported')\n")
    result = _run(python, elsewhere, "recipe=gender_tiny", "run_dir=out", "cache_dir=cache", *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    main_table, card = (elsewhere / "out" / "table.md").read_text().split("## Validity card")
    assert main_table.count("| L0 |") == 1 and card.count("| L0 |") == 1  # the site, in both tables
    assert (elsewhere / "out" / "validity_heatmaps.png").is_file()


def test_a_users_own_recipe_folder_and_recipe_file(wheel_env):
    python, elsewhere = wheel_env
    own = elsewhere / "my_recipes"
    own.mkdir(exist_ok=True)
    recipe = textwrap.dedent("""\
        # My own copy of the default, with another name.
        #   python -m das_train recipe=mine
        defaults:
          - /base
          - /model: tiny
          - /task: gender
          - /intervention: low_rank
          - /trainer: cpu
          - /logger: none
          - /sweep: default
          - _self_
        recipe: mine
        hydra:
          searchpath:
            - pkg://das_train.conf
        """)
    (own / "mine.yaml").write_text(recipe)
    by_folder = _run(python, elsewhere, "recipe=mine", "run_dir=mine_out", "cache_dir=cache", *SHORT,
                     env={"DAS_TRAIN_RECIPES": str(own)})
    assert by_folder.returncode == 0, by_folder.stderr[-3000:]
    by_path = _run(python, elsewhere, f"recipe={own / 'mine.yaml'}", "run_dir=path_out", "cache_dir=cache", *SHORT)
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    assert (elsewhere / "path_out" / "table.md").read_text() == (elsewhere / "mine_out" / "table.md").read_text()
    missing = _run(python, elsewhere, "recipe=nothing_here", env={"DAS_TRAIN_RECIPES": str(own)})
    assert missing.returncode == 2 and "unknown recipe 'nothing_here'" in missing.stderr
    assert str(own) in missing.stderr and "'mine'" in missing.stderr


def test_the_wheel_runs_the_pair_file_recipe_on_its_shipped_example(wheel_env):
    """The pair-file reader's package and the example file (read as pkg://das_train.recipes/...)
    are inside the wheel, so recipe=pairs_file runs from any directory."""
    python, elsewhere = wheel_env
    result = _run(python, elsewhere, "recipe=pairs_file", "run_dir=pairs_out", "cache_dir=cache", *SHORT,
                  "sweep.positions=[animal,last]")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (elsewhere / "pairs_out" / "table.md").read_text()
    assert "| L0 | animal (0) |" in table and "| L0 | last (-1) |" in table
