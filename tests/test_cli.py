"""The command line: ``--help`` documents recipes and keys, one directory per run (Hydra's
included), multirun jobs kept apart unless they are shards of one sweep, and Ctrl-C / SIGTERM
stop a run with one line and the shell's exit status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from das_train import cli, usage
from das_train.training import schema

# A site or two of gender_tiny on a tiny model trained for a few steps: seconds per job.
QUICK = ["progress=false", "logger=none", "trainer.max_steps=5", "task.n_train=64", "task.n_val=16",
         "task.n_test=32", "sweep.layers=[0]", "sweep.include_embeddings=false", "sweep.probe.max_epochs=2",
         "model.max_steps=50"]


def das_train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "das_train", *args]


def run_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(das_train_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# -- --help ---------------------------------------------------------------------------------------


def test_help_lists_recipes_groups_every_key_and_the_run_directory(capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("--help must not compose a config or start Hydra")

    monkeypatch.setattr(cli, "check", no_work)
    monkeypatch.setattr(cli, "run_with_hydra", no_work)
    cli.main(["--help"])
    page = capsys.readouterr().out
    assert page.startswith("usage: python -m das_train")
    for recipe in cli.available_recipes():
        path = cli.recipes_dir() / f"{recipe}.yaml"
        assert f"  {recipe}  " in page and usage.first_comment_line(path) in page
    for group in cli.GROUPS:
        assert f"  {group}:\n" in page
    assert "    boundless             Boundless DAS" in page
    for key, kind, value, _doc in usage.schema_rows():
        assert f"  {key} " in page and f"{kind} = {value}" in page
    assert "  trainer.max_steps                int = 300\n      Optimizer steps per site." in page
    for topic in ("hydra.run.dir", "Resuming", "run the same command again", "sweep.shard", "130", "143"):
        assert topic.lower() in page.lower()


def test_every_schema_key_has_a_docstring_for_help():
    undocumented = [key for key, _, _, doc in usage.schema_rows() if not doc]
    nested = {key.rsplit(".", 1)[0] for key, *_ in usage.schema_rows() if "." in key}
    assert undocumented == [] and len(usage.schema_rows()) == len(schema.schema_keys() - nested)


def test_short_help_exits_0_and_a_recipe_shows_its_values(tmp_path):
    page = run_command("recipe=hierarchical_equality", "trainer.max_steps=7", "-h", cwd=tmp_path).stdout
    assert "recipe hierarchical_equality's values" in page
    assert "  trainer.max_steps                int = 7\n" in page
    assert "  model.kind                       str = mlp\n" in page
    assert not list(tmp_path.iterdir()), "--help wrote files"


# -- unknown keys, hydra.* overrides ---------------------------------------------------------------


def test_hydra_overrides_pass_through_and_unknown_keys_are_all_reported(capsys):
    passing = ["hydra.job.name=probe_job", "hydra.verbose=true", "hydra.run.dir=elsewhere",
               "+hydra.job.env_set.SOME_VAR=1"]
    assert cli.check("gender_tiny", passing).recipe == "gender_tiny"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trainer.max_step=3", "nope=1", "model=huge", *passing])
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert "unknown key 'trainer.max_step'" in message and "unknown key 'nope'" in message
    assert "model=huge: no such model config" in message and "hydra" not in message
    with pytest.raises(SystemExit) as exit_:
        cli.main(["hydra.job.env_set.SOME_VAR=1"])
    assert exit_.value.code == 2
    assert "use +hydra.job.env_set.SOME_VAR=1" in capsys.readouterr().err


def test_multirun_sweeps_are_checked_through_their_first_value():
    cfg = cli.check("gender_tiny", ["sweep.layers=[0],[1]", "sweep.shard=range(0,2)", "sweep.num_shards=2",
                                    "intervention=boundless,low_rank", "sweep.positions=[name,last]"])
    assert (list(cfg.sweep.layers), cfg.sweep.shard, list(cfg.sweep.positions)) == ([0], 0, ["name", "last"])
    assert cfg.intervention.type == "BoundlessRotatedSpaceIntervention"
    with pytest.raises(schema.ConfigError, match="'trainer.batch_size' = 'lots' has the wrong type"):
        cli.check("gender_tiny", ["trainer.batch_size=lots,8"])


def test_multirun_names_job_directories_by_swept_keys_but_shard():
    cfg = cli.check("gender_tiny", ["sweep.num_shards=2"])
    (exclude, hydra_dir) = cli.hydra_directory_overrides(
        cfg.sweep.num_shards, ["intervention=low_rank,boundless", "sweep.shard=0,1", "sweep.num_shards=2", "trainer.max_steps=5"], True)
    assert exclude == ("hydra.job.config.override_dirname.exclude_keys="
                       "['run_dir','sweep.num_shards','sweep.shard','trainer.max_steps']")
    assert hydra_dir == "hydra.output_subdir=.hydra/shard-${sweep.shard}"
    assert cli.hydra_directory_overrides(cli.check("gender_tiny", []).sweep.num_shards, ["trainer.max_steps=5"],
                                         False) == []


# -- one directory per run -------------------------------------------------------------------------


def test_hydra_run_dir_moves_everything_a_run_writes(tmp_path):
    run_command("hydra.run.dir=moved", f"cache_dir={tmp_path}/cache", "sweep.positions=[last]", *QUICK, cwd=tmp_path)
    moved = tmp_path / "moved"
    for name in ("config.yaml", "results.csv", "table.md", "heatmaps.png", ".hydra/config.yaml"):
        assert (moved / name).is_file(), name
    assert yaml.safe_load((moved / "config.yaml").read_text())["run_dir"] == "moved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "moved"]


def test_multirun_jobs_get_their_own_directory_and_shards_share_one(tmp_path):
    """intervention=low_rank,boundless x two shards: one directory per intervention, each
    holding both shards' results and the merged table."""
    run_command("-m", "run_dir=sweeps", f"cache_dir={tmp_path}/cache", "intervention=low_rank,boundless",
                "sweep.shard=0,1", "sweep.num_shards=2", "sweep.positions=[name,last]", *QUICK, cwd=tmp_path)
    jobs = {"low_rank": "LowRankRotatedSpaceIntervention", "boundless": "BoundlessRotatedSpaceIntervention"}
    assert sorted(p.name for p in (tmp_path / "sweeps").iterdir() if p.is_dir()) == [f"intervention={j}" for j in sorted(jobs)]
    for job, intervention_type in jobs.items():
        run_dir = tmp_path / "sweeps" / f"intervention={job}"
        for shard in (0, 1):
            config = yaml.safe_load((run_dir / f"config.shard-{shard}.yaml").read_text())
            assert config["intervention"]["type"] == intervention_type
            assert config["run_dir"] == f"sweeps/intervention={job}"
            assert (run_dir / f"results.shard-{shard}-of-2.csv").is_file()
            assert (run_dir / ".hydra" / f"shard-{shard}" / "overrides.yaml").is_file()
        assert len((run_dir / "table.csv").read_text().splitlines()) == 3  # header + 2 sites


# -- interrupts ------------------------------------------------------------------------------------


def press_ctrl_c() -> None:
    raise KeyboardInterrupt


def send_sigterm_to_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class SignalledWhileCollected:
    """Sends SIGTERM from its finalizer, where Python drops any exception the handler raises."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


def sigterm_inside_a_finalizer() -> None:
    SignalledWhileCollected()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the run goes on until the interrupt arrives again
        time.sleep(0.01)


def _fake_run(action):
    def run(cfg, validated=False):
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        action()

    return run


@pytest.mark.parametrize("action, status, name", [
    (press_ctrl_c, 130, "SIGINT"),
    (send_sigterm_to_self, 143, "SIGTERM"),
    (sigterm_inside_a_finalizer, 143, "SIGTERM"),
])
def test_an_interrupted_run_says_where_its_results_are(action, status, name, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", _fake_run(action))
    monkeypatch.setattr(sys, "argv", ["das_train"])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        cli.main([f"run_dir={tmp_path}/r", "progress=false"])
    assert exit_.value.code == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"das_train: interrupted ({name}); results so far are in {tmp_path}/r; run the same command again to resume")
    assert signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_during_a_real_run_exits_130_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    overrides = [o for o in QUICK if not o.startswith("trainer.max_steps=")]
    command = das_train_command("run_dir=r", "cache_dir=cache", "trainer.max_steps=100000", "sweep.positions=[last]",
                                *overrides)
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(240, process.kill)  # a run that ignores the signal fails, not hangs
    watchdog.start()
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("pairs kept"):  # the model is loaded; the sweep starts
            time.sleep(3)
            process.send_signal(signal.SIGINT)
            break
    output = "".join(lines) + process.stdout.read()
    watchdog.cancel()
    assert process.wait() == 130, output[-3000:]
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == (
        "das_train: interrupted (SIGINT); results so far are in r; run the same command again to resume")


# -- further DDP processes -------------------------------------------------------------------------


def test_processes_started_from_the_command_line_compose_the_same_recipe(tmp_path, monkeypatch):
    """Lightning's DDP launcher reruns ``sys.argv`` as Hydra saw it (no recipe=) in each further
    process; those must compose the parent's recipe, not the default one."""
    seen = {}

    def record_what_a_child_would_run(cfg, validated=False):
        recipe, overrides, _ = cli.split_arguments(sys.argv[1:])
        seen["recipe"] = cli.check(recipe, overrides).recipe

    monkeypatch.setattr(cli, "run", record_what_a_child_would_run)
    monkeypatch.setattr(sys, "argv", ["das_train"])
    cli.main(["recipe=hierarchical_equality", f"run_dir={tmp_path}/r"])
    assert seen["recipe"] == "hierarchical_equality"
    assert cli.RECIPE_OF_PARENT not in os.environ


# -- validated once --------------------------------------------------------------------------------


def _count_checks(monkeypatch) -> dict[str, int]:
    """Counts the schema's validation and the sweep's preflight wherever they are called from."""
    from das_train.training import preflight, validation
    from das_train.training import run as run_module

    counts = {"validate": 0, "preflight": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    validate, sweep_problems = counted("validate", validation.validate), counted("preflight", preflight.sweep_problems)
    for module in (cli, run_module):
        monkeypatch.setattr(module, "validate", validate)
    for module in (cli, preflight):
        monkeypatch.setattr(module, "sweep_problems", sweep_problems)
    monkeypatch.setitem(run_module.JOBS, "das_sweep", lambda cfg, run_dir: run_dir)
    return counts


def test_the_command_line_validates_a_run_once(tmp_path, monkeypatch):
    counts = _count_checks(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["das_train"])
    cli.main([f"run_dir={tmp_path}/r", "progress=false", "logger=none"])
    assert counts == {"validate": 1, "preflight": 1}


def test_run_called_from_python_validates_what_it_is_given(tmp_path, monkeypatch):
    from das_train.training import run as run_module

    counts = _count_checks(monkeypatch)
    run_module.run({"run_dir": str(tmp_path / "r"), "progress": False, "logger": {"kind": "none"}})
    assert counts == {"validate": 1, "preflight": 1}
    with pytest.raises(schema.ConfigError, match="'trainer.batch_size' = 0 must be positive"):
        run_module.run({"run_dir": str(tmp_path / "r"), "trainer": {"batch_size": 0}})
