"""``recipe=pairs_file`` runs as the shipped tasks do: a cut-off run resumes to the same table,
and an edited pair file is read again instead of being served from the pair cache.

The cache key of a pair file's pairs holds the file's content hash (``PairsTask.file_fingerprint``
from ``pair_files/reading.py``), not its path: the edit test keeps the path and changes the
content, so a key made from the path or the settings alone would reuse the stale pairs.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from datasets import load_from_disk

from das_train import cli
from das_train.data.pair_contract import BASE_LABEL, COUNTERFACTUAL_LABEL
from das_train.data.pair_files.reading import resolve_local
from das_train.training import run as run_module
from das_train.training.sweep import das_sweep

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

EXAMPLE = "pkg://das_train.recipes/data/animal_sounds.jsonl"


def small_overrides(tmp_path, name, *extra):
    """A short pairs_file run in ``tmp_path / name``; the tiny model and the pairs are cached
    in ``tmp_path / "cache"`` for every run of a test. The model trains a few steps only, so it
    is wrong on most pairs and every pair is kept (``task.filter_pairs=false``)."""
    return [f"run_dir={tmp_path / name}", f"cache_dir={tmp_path / 'cache'}", "progress=false", "logger=none",
            "model.max_steps=20", "trainer.max_steps=3", "task.n_train=32", "task.n_val=16", "task.n_test=32",
            "sweep.probe.max_epochs=1", "sweep.layers=[0]", "task.filter_pairs=false", *extra]


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # two runs of six sites (test_run covers resume by default on gender_tiny)
def test_a_cut_off_pairs_file_run_resumes_to_the_same_table(tmp_path, monkeypatch):
    cfg = cli.check("pairs_file", small_overrides(tmp_path, "run"))
    run_dir = run_module.run(cfg)
    table = (run_dir / "table.csv").read_text()
    rows = _rows(run_dir / "results.csv")
    assert len(rows) == 6  # the embedding row and layer 0 at animal, place and last
    assert {r["position_name"] for r in rows} == {"animal", "place", "last"}

    # Interrupted after two rows: a re-run trains only the missing ones, to the same table.
    with (run_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:2])
    trained = []
    original = das_sweep.fit_group
    monkeypatch.setattr(das_sweep, "fit_group", lambda *a, **k: trained.extend(s for s, _ in a[1]) or original(*a, **k))
    run_module.run(cfg)
    assert [(s.layer, s.component, s.position_name) for s in trained] == [
        (int(r["layer"]), r["component"], r["position_name"]) for r in rows[2:]
    ]
    assert (run_dir / "table.csv").read_text() == table


def _run_pairs(tmp_path, name, path):
    """(the run's dataset fingerprint, its cached test pairs) of a one-site run on ``path``."""
    overrides = small_overrides(tmp_path, name, f"task.path={path}",
                                "sweep.include_embeddings=false", "sweep.positions=[last]")
    run_dir = run_module.run(cli.check("pairs_file", overrides))
    fingerprint = json.loads((run_dir / "run_info.json").read_text())["dataset"]["fingerprint"]
    return fingerprint, load_from_disk(str(tmp_path / "cache" / "pairs" / f"pairs-{fingerprint[:16]}"))["test"]


def test_an_edited_pair_file_is_read_again_not_taken_from_the_cache(tmp_path):
    path = tmp_path / "pairs.jsonl"
    shutil.copy(resolve_local(EXAMPLE), path)
    first, pairs = _run_pairs(tmp_path, "before", path)
    assert pairs[COUNTERFACTUAL_LABEL] != pairs[BASE_LABEL]

    # The same path, new content: every interchange now leaves the answer as it was.
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "counterfactual_label": row["base_label"]}) + "\n" for row in rows))
    second, pairs = _run_pairs(tmp_path, "after", path)
    assert second != first
    assert pairs[COUNTERFACTUAL_LABEL] == pairs[BASE_LABEL]
