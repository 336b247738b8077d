"""The run directory never mixes, loses or half-trusts results: another config is refused (or
set aside with resume=fresh), bad result rows are dropped and redone, a missing shard or a
deleted intervention is noticed, one writer at a time, no leftover temporary files, and
files get the umask's mode."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from omegaconf import OmegaConf

import das_train as pv
from das_train import cli
from das_train.core import files
from das_train.data.pair_datamodule import _save_atomically
from das_train.data.tiny_lm import save_pretrained_atomically
from das_train.hub import save_pretrained
from das_train.training import config_fingerprint as fingerprints
from das_train.training import reports, schema
from das_train.training import run as run_module
from das_train.training import run_dir as run_dir_state
from das_train.training.schema import ConfigError, RunConfig
from das_train.training.sweep import das_sweep
from das_train.training.validity import columns as card_columns

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)

TWO_SITES = ("sweep.layers=[1]", "sweep.positions=[name,last]", "sweep.include_embeddings=false")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache (the tiny model, the pairs) for every sweep of this file."""
    return tmp_path_factory.mktemp("cache")


def config(run_dir, cache, *extra):
    """Two sites of a 2-layer model that is trained briefly (its pairs unfiltered): what is
    tested here is the bookkeeping, not what DAS finds."""
    return cli.check("gender_tiny", [
        f"run_dir={run_dir}", f"cache_dir={cache}", "progress=false", "logger=none", "model.n_layer=2",
        "model.hidden=32", "model.max_steps=100", "task.filter_pairs=false", "trainer.max_steps=4",
        "task.n_train=64", "task.n_val=16", "task.n_test=32", "sweep.probe.max_epochs=1", *TWO_SITES, *extra])


def sweep(run_dir, cache, *extra):
    return run_module.run(config(run_dir, cache, *extra))


def results(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory, cache):
    return sweep(tmp_path_factory.mktemp("finished") / "run", cache)


@pytest.fixture
def finished(finished_once, tmp_path):
    """A copy of a finished two-site sweep (run_dir does not change results, so it resumes)."""
    return Path(shutil.copytree(finished_once, tmp_path / "run"))


@pytest.fixture
def trained(monkeypatch):
    """The (site key, seed) of every site the sweep trains from here on."""
    seen = []
    group = das_sweep.fit_group
    monkeypatch.setattr(das_sweep, "fit_group",
                        lambda *a, **k: seen.extend((s.key, seed) for s, seed in a[1]) or group(*a, **k))
    return seen


# -- 1. another config -----------------------------------------------------------------------------


def test_result_settings_leave_out_only_what_cannot_change_a_result():
    base = cli.check("gender_tiny", [])
    neutral = cli.check("gender_tiny", [
        "progress=false", "logger=none", "publish.repo_id=me/x", "cache_dir=/elsewhere", "run_dir=/other",
        "resume=fresh", "trainer.devices=2", "trainer.num_nodes=2", "trainer.strategy=ddp",
        "trainer.accelerator=gpu", "sweep.shard=1", "sweep.num_shards=2", "sweep.merge=true",
        "sweep.batched=false", "sweep.sites_per_pass=3", "sweep.probe.tables_mib=7"])
    assert run_dir_state.config_changes(base, neutral) == []
    assert fingerprints.config_fingerprint(base) == fingerprints.config_fingerprint(neutral)
    other = cli.check("gender_tiny", ["trainer.max_steps=5", "intervention.low_rank_dimension=2", "seed=3",
                                      "sweep.layers=[1]", "intervention=boundless"])
    changes = run_dir_state.config_changes(base, other)
    for expected in ("trainer.max_steps: 300 -> 5", "intervention.low_rank_dimension: 1 -> 2", "seed: 0 -> 3",
                     "sweep.layers: None -> [1]",
                     "intervention.type: 'LowRankRotatedSpaceIntervention' -> 'BoundlessRotatedSpaceIntervention'"):
        assert expected in changes
    assert fingerprints.config_fingerprint(base) != fingerprints.config_fingerprint(other)


def test_resume_with_another_config_is_refused_before_any_work_and_fresh_sets_it_aside(finished, cache, trained):
    run_dir = finished
    before = (run_dir / "results.csv").read_text()
    trained.clear()
    with pytest.raises(ConfigError) as err:
        sweep(run_dir, cache, "trainer.max_steps=5", "intervention.low_rank_dimension=2")
    message = str(err.value)
    assert "trainer.max_steps: 4 -> 5" in message and "intervention.low_rank_dimension: 1 -> 2" in message
    assert "run_dir=" in message and "resume=fresh" in message
    assert trained == [] and (run_dir / "results.csv").read_text() == before

    # Settings that do not change results resume: nothing is trained again.
    sweep(run_dir, cache, "sweep.batched=false", "trainer.accelerator=cpu", "sweep.probe.tables_mib=5")
    assert trained == [] and (run_dir / "results.csv").read_text() == before

    sweep(run_dir, cache, "trainer.max_steps=5", "resume=fresh")
    (previous,) = run_dir.glob("previous-*")
    assert (previous / "results.csv").read_text() == before and (previous / "interventions").is_dir()
    assert sorted(trained) == [("block_output-L1-last", 0), ("block_output-L1-name", 0)]
    stored = fingerprints.config_fingerprint(config(run_dir, cache, "trainer.max_steps=5"))
    assert {row["config_fingerprint"] for row in results(run_dir / "results.csv")} == {stored}


def test_a_stored_config_without_results_beside_it_protects_nothing(tmp_path, cache):
    """A run refused for a bad setting has written its config.yaml but no result: the next
    run may use other settings. Once a result (or a checkpoint) is there, it may not."""
    cfg = RunConfig.from_data(config(tmp_path, cache))
    (tmp_path / "config.yaml").write_text("trainer:\n  max_steps: 7\n")
    run_dir_state.check_stored_configs(tmp_path, cfg)
    for result in ("checkpoints", "results.shard-1-of-2.csv"):
        (tmp_path / result).mkdir()
        with pytest.raises(ConfigError, match="trainer.max_steps: 7 -> 4"):
            run_dir_state.check_stored_configs(tmp_path, cfg)
        (tmp_path / result).rmdir()


def test_rows_of_another_config_are_never_counted_and_old_files_still_resume(finished, cache, trained):
    run_dir = finished
    # A results.csv written before rows carried a fingerprint belongs to the stored config.
    rows = results(run_dir / "results.csv")
    with (run_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=reports.ROW_FIELDS[:-1], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    trained.clear()
    sweep(run_dir, cache)
    assert trained == []

    # With the stored config gone, the check cannot refuse; the fingerprints still keep the
    # low-rank rows out of the boundless sweep and its table.
    (run_dir / "config.yaml").unlink()
    reports.write_rows(run_dir / "results.csv", rows)
    sweep(run_dir, cache, "intervention=boundless")
    assert len(trained) == 2
    table = results(run_dir / "table.csv")
    assert len(table) == 2 and all(row["seeds"] == "1" for row in table)
    boundless = {row["iia"] for row in results(run_dir / "results.csv")
                 if row["config_fingerprint"] != rows[0]["config_fingerprint"]}
    assert len(results(run_dir / "results.csv")) == 4  # the old rows are kept, not counted
    assert {f"{float(r['iia']):.6f}" for r in table} == {f"{float(v):.6f}" for v in boundless}


def test_a_run_directory_from_before_configs_held_their_defaults_resumes_without_training(finished, cache, trained):
    """An older das_train stored the config as its YAML spelled it (keys at their defaults left
    out) and stamped rows with that config's fingerprint: the same experiment resumes, its rows
    restamped, instead of being refused or trained again."""
    run_dir = finished
    stored = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    defaults = schema.defaults()
    for section in ("model", "intervention", "sweep"):
        for key in [k for k, v in stored[section].items() if defaults[section].get(k, object()) == v][:3]:
            del stored[section][key]
    old = fingerprints.written_fingerprint(stored)
    new = fingerprints.config_fingerprint(stored)
    assert old != new and new == fingerprints.config_fingerprint(config(run_dir, cache))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(stored)))
    rows = reports.read_rows(run_dir / "results.csv")
    reports.write_rows(run_dir / "results.csv", [{**row, "config_fingerprint": old} for row in rows])
    plan = json.loads((run_dir / "sweep_plan.json").read_text())
    (run_dir / "sweep_plan.json").write_text(json.dumps({**plan, "config_fingerprint": old}))

    trained.clear()
    sweep(run_dir, cache)
    assert trained == []
    assert {row["config_fingerprint"] for row in results(run_dir / "results.csv")} == {new}
    assert json.loads((run_dir / "sweep_plan.json").read_text())["config_fingerprint"] == new


# -- 2. results.csv integrity ------------------------------------------------------------------------


def _row(layer, iia="0.916", probe="1.0", seed=0, fingerprint="0123456789ab"):
    """A results.csv record in ROW_FIELDS' order, the validity card's fields left empty."""
    card = [""] * len(card_columns.FIELDS)
    return [str(layer), "block_output", "3", "last", str(seed), iia, probe, "0.5", "0.5", *card, "", "1.5", "32",
            fingerprint]


def test_bad_rows_are_dropped_with_file_and_line_and_duplicates_kept_once(tmp_path, caplog):
    path = tmp_path / "results.csv"
    lines = [",".join(reports.ROW_FIELDS)]
    lines.append(",".join(_row(0)))
    lines.append(",".join(_row(1)[:4]))  # cut early: fields missing
    lines.append(",".join(_row(2, probe="nan")))
    lines.append(",".join(_row(3)).replace("3,block", "x,block", 1))  # layer not a number
    lines.append(",".join(_row(0, iia="0.5")))  # the same site written twice: the later is kept
    lines.append(",".join(_row(4, fingerprint="0123456789ab")))
    lines.append(",".join(_row(5, iia="0.916"))[: -len("0.916,0.5,0.5,,1.5,32,0123456789ab") + 3])  # cut: 0.9
    path.write_text("\r\n".join(lines))
    with caplog.at_level(logging.WARNING, logger="das_train"):
        rows = reports.read_rows(path)
    assert [(r["layer"], r["iia"]) for r in rows] == [(0, 0.5), (4, 0.916)]
    for line, words in ((3, "fields missing"), (4, "probe_accuracy is 'nan'"), (5, "layer 'x' is not an integer"),
                        (6, "a second row"), (8, "cut off")):
        assert f"{path} line {line}: " in caplog.text and words in caplog.text, (line, words)


def test_a_row_cut_at_its_last_field_is_dropped_too(tmp_path):
    """A cut number still parses (0.916 -> 0.9); only the missing line end tells."""
    path = tmp_path / "results.csv"
    good = ",".join(_row(0)) + "\r\n"
    path.write_text(",".join(reports.ROW_FIELDS) + "\r\n" + good + ",".join(_row(1, fingerprint="0123456789ab"))[:-2])
    assert [r["layer"] for r in reports.read_rows(path)] == [0]
    path.write_text(",".join(reports.ROW_FIELDS) + "\r\n" + good)
    assert [r["layer"] for r in reports.read_rows(path)] == [0]


def test_a_truncated_results_file_is_redone_not_reported(finished, cache, trained):
    run_dir = finished
    text = (run_dir / "results.csv").read_text()
    (run_dir / "results.csv").write_text(text[: text.rindex(",") - 3])  # the last row cut in its test_pairs
    trained.clear()
    sweep(run_dir, cache)
    assert trained == [("block_output-L1-last", 0)]
    assert len(results(run_dir / "results.csv")) == 2


# -- 3. shards -----------------------------------------------------------------------------------------


def test_merge_with_a_missing_shard_is_refused_and_shards_are_not_counted_twice(tmp_path, cache, trained):
    run_dir = tmp_path / "run"
    sweep(run_dir, cache, "sweep.shard=0", "sweep.num_shards=2")
    with pytest.raises(ConfigError) as err:
        sweep(run_dir, cache, "sweep.merge=true")
    message = str(err.value)
    assert "block_output-L1-last seed 0: no result; it belongs to shard 1 of 2 (results.shard-1-of-2.csv)" in message
    assert "block_output-L1-name" not in message
    assert not (run_dir / "table.csv").exists()

    sweep(run_dir, cache, "sweep.shard=1", "sweep.num_shards=2")
    sweep(run_dir, cache, "sweep.merge=true")
    trained.clear()
    sweep(run_dir, cache)  # unsharded, after the shards: finds every site finished
    assert trained == []
    assert [row["seeds"] for row in results(run_dir / "table.csv")] == ["1", "1"]


def test_shards_of_differing_configs_are_refused(tmp_path, cache):
    run_dir = tmp_path / "run"
    sweep(run_dir, cache, "sweep.shard=0", "sweep.num_shards=2")
    with pytest.raises(ConfigError, match=r"config.shard-0.yaml was written by a run with other settings.*"
                                          r"trainer.max_steps: 4 -> 6"):
        sweep(run_dir, cache, "sweep.shard=1", "sweep.num_shards=2", "trainer.max_steps=6")
    assert not (run_dir / "results.shard-1-of-2.csv").exists()


def test_rows_of_a_lost_config_stay_in_the_file_uncounted(tmp_path):
    """An old results.csv (no fingerprint column) whose config.yaml is gone: its rows are of no
    known config, so they are not counted, and rewriting the file keeps them as such."""
    row = dict(zip(reports.ROW_FIELDS, _row(0)))
    with (tmp_path / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=reports.ROW_FIELDS[:-1], extrasaction="ignore")
        writer.writeheader()
        writer.writerow(row)
    kept, done = run_dir_state.resume_rows(tmp_path, tmp_path / "results.csv", "0123456789ab")
    assert done == set() and [r["config_fingerprint"] for r in kept] == ["unknown"]
    reports.write_rows(tmp_path / "results.csv", kept)
    assert [r["config_fingerprint"] for r in reports.read_rows(tmp_path / "results.csv")] == ["unknown"]


def test_rows_are_deduplicated_across_results_files(tmp_path):
    run_dir = tmp_path
    row = dict(zip(reports.ROW_FIELDS, _row(0)))
    for name in ("results.csv", "results.shard-0-of-2.csv"):
        reports.write_rows(run_dir / name, [row])
    folder = run_dir_state.intervention_folder(run_dir, reports.read_rows(run_dir / "results.csv")[0])
    folder.mkdir(parents=True)
    (folder / "interventions.safetensors").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    assert len(run_dir_state.finished_rows(run_dir, "0123456789ab")) == 1


# -- 4. a deleted intervention -------------------------------------------------------------------------


def test_a_deleted_intervention_is_redone_and_the_log_says_why(finished, cache, trained, caplog):
    run_dir = finished
    weights = run_dir / "interventions" / "block_output-L1-name-s0" / "interventions.safetensors"
    config_file = run_dir / "interventions" / "block_output-L1-last-s0" / "config.json"
    weights.unlink()
    config_file.unlink()
    with caplog.at_level(logging.WARNING, logger="das_train"):
        sweep(run_dir, cache)
    assert sorted(trained) == [("block_output-L1-last", 0), ("block_output-L1-name", 0)]
    assert weights.exists() and config_file.exists()
    for site, gone in (("name", weights), ("last", config_file)):
        assert f"block_output-L1-{site} seed 0 is run again: its row is in results.csv but {gone} is gone" in caplog.text
    assert len(results(run_dir / "results.csv")) == 2


# -- 5. one writer -----------------------------------------------------------------------------------------


HOLDER = """
import sys, time
from pathlib import Path
from das_train.training.run_dir import hold_lock
with hold_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(results_file):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(results_file)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_at_once_and_a_killed_one_blocks_nobody(tmp_path, cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = _holder(run_dir / "results.csv")
    try:
        start = time.monotonic()
        with pytest.raises(run_dir_state.RunDirLocked) as err:
            sweep(run_dir, cache)
        assert time.monotonic() - start < 10
        assert f"pid {holder.pid} on " in str(err.value) and "since 20" in str(err.value)
        assert not (run_dir / "config.yaml").exists()
        # Another shard's results file has its own lock, but may not set the live one aside.
        shard = run_dir / "results.shard-1-of-2.csv"
        with run_dir_state.hold_lock(shard):
            with pytest.raises(run_dir_state.RunDirLocked, match=f"results.csv.lock \\(held by pid {holder.pid} "):
                run_dir_state.set_aside(run_dir, run_dir_state.lock_path(shard))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run_dir / "results.csv.lock").exists()  # the file stays; the kernel dropped the lock
    with run_dir_state.hold_lock(run_dir / "results.csv"):
        pass


# -- 6. leftover temporary files ---------------------------------------------------------------------------


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temporary_files_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = files.temporary_file(tmp_path, "results.csv").name.replace(f".w{os.getpid()}-", f".w{_dead_pid()}-")
    (tmp_path / dead).write_text("half")
    live = files.temporary_file(tmp_path, "table.csv")
    (tmp_path / "sub").mkdir()
    folder = files.temporary_folder(tmp_path / "sub", "block_output-L1-last-s0")
    dead_folder = folder.with_name(folder.name.replace(f".w{os.getpid()}-", f".w{_dead_pid()}-"))
    folder.rename(dead_folder)
    (dead_folder / "interventions.safetensors").write_bytes(b"x")
    untagged = tmp_path / ".heatmaps.abcd1234.png"
    untagged.write_bytes(b"x")
    os.utime(untagged, (time.time() - 60, time.time() - 60))
    (tmp_path / ".git").mkdir()
    not_ours = tmp_path / ".git" / ".index.abcd1234.tmp"  # a run_dir=. must leave other tools' files
    not_ours.write_text("x")
    os.utime(not_ours, (time.time() - 60, time.time() - 60))
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([tmp_path / dead, dead_folder, untagged])
    assert live.exists() and not_ours.exists() and not dead_folder.exists()
    assert (tmp_path / "sub").exists()


def test_a_run_removes_what_a_killed_writer_left(finished, cache):
    run_dir = finished
    left = run_dir / "interventions" / "block_output-L1-last-s0" / f".interventions.safetensors.w{_dead_pid()}-{files._host()}.abcd_123.tmp"
    left.write_bytes(b"half")
    sweep(run_dir, cache)
    assert not left.exists()


# -- 7. the umask -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_get_the_umasks_mode(tmp_path, gpt2, umask, file_mode, folder_mode):
    old = os.umask(umask)
    try:
        files.atomic_write_text(tmp_path / "table.md", "x")
        reports.write_heatmaps(tmp_path, [{"layer": 0, "component": "block_output", "position": 1,
                                           "position_name": "last", "iia": 0.5, "probe_accuracy": 0.5}], "t")
        model = pv.IntervenableModel({"layer": 0, "component": "block_output",
                                      "intervention_type": pv.LowRankRotatedSpaceIntervention,
                                      "low_rank_dimension": 1}, gpt2)
        save_pretrained(model, str(tmp_path / "saved"))
        save_pretrained_atomically(gpt2, tmp_path / "cache" / "model")
        _save_atomically(DatasetDict({"train": Dataset.from_dict({"x": [1]})}), tmp_path / "cache" / "pairs")
    finally:
        os.umask(old)
    for folder in (tmp_path / "cache" / "model", tmp_path / "cache" / "pairs"):
        assert stat.S_IMODE(folder.stat().st_mode) == folder_mode, folder
    for path in (tmp_path / "table.md", tmp_path / "heatmaps.png", tmp_path / "saved" / "interventions.safetensors",
                 tmp_path / "saved" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    assert stat.S_IMODE((tmp_path / "saved").stat().st_mode) == folder_mode

