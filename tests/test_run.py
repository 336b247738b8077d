"""The main job: recipes compose, bad configs are refused with every problem named, a small
sweep runs end to end and writes its table and heatmaps, and a re-run resumes."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch

from das_train import cli
from das_train.data.pair_datamodule import PairDataModule
from das_train.training import model_loading, samplers, task_loading
from das_train.training import run as run_module
from das_train.training.schema import ConfigError
from das_train.training.sweep import das_sweep, group_fit
from das_train.training.sweep import sites as sweep_sites
from das_train.training.sweep.cached_pairs import SplitReader
from das_train.training.sweep.group_fit import Sweep, fit_group
from das_train.training.sweep.probes import sweep_probes
from das_train.training.sweep.sites import SweepSite

RECIPES = cli.available_recipes()

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)


def small_overrides(run_dir, *extra):
    return [f"run_dir={run_dir}", f"cache_dir={run_dir}/cache", "progress=false", "logger=none",
            "trainer.max_steps=20", "task.n_train=128", "task.n_val=32", "task.n_test=64",
            "sweep.probe.max_epochs=3", *extra]


def small_sweep(tmp_path, name, *extra):
    """A small gender_tiny sweep in ``tmp_path / name`` (the tiny model cached in ``tmp_path``
    for every sweep of a test): its ``results.csv`` rows and each site's saved weights."""
    from safetensors.torch import load_file

    overrides = small_overrides(tmp_path / name, *extra)
    overrides = [o if not o.startswith("cache_dir=") else f"cache_dir={tmp_path}/cache" for o in overrides]
    run_dir = run_module.run(cli.check("gender_tiny", overrides))
    with (run_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    weights = {p.name: load_file(str(p / "interventions.safetensors"))
               for p in sorted((run_dir / "interventions").iterdir())}
    return rows, weights


def _recipe_yaml(recipe: str) -> dict:
    import yaml

    return yaml.safe_load((cli.recipes_dir() / f"{recipe}.yaml").read_text())


def _job(recipe: str) -> str:
    return _recipe_yaml(recipe).get("job", "das_sweep")


def _pairs_from_the_hub(recipe: str) -> bool:
    """A recipe whose pairs are a Hub dataset: offline, the command line's checks stop at reading
    them (tests/test_pair_recipes.py checks that message); only composing is tested here."""
    path = (_recipe_yaml(recipe).get("task") or {}).get("path")
    return bool(path) and not path.startswith("pkg://") and not Path(path).exists()


def test_every_recipe_is_documented_and_composes():
    assert set(RECIPES) >= {"gender_tiny", "gender_pythia", "capitals_gpt2", "hierarchical_equality"}
    for recipe in RECIPES:
        text = (cli.recipes_dir() / f"{recipe}.yaml").read_text()
        assert text.startswith("#") and f"recipe={recipe}" in text.split("defaults:")[0]
        cfg = cli.compose(recipe, []) if _pairs_from_the_hub(recipe) else cli.check(recipe, [])
        assert cfg.recipe == recipe


@pytest.mark.parametrize("recipe", [r for r in RECIPES if _job(r) != "steering" and not _pairs_from_the_hub(r)])
def test_every_recipe_instantiates_against_a_tiny_model(recipe, tmp_path):
    """Hub recipes swap their model for a tiny one of the same task; the rest is as shipped.
    Steering recipes have no task: tests/test_steering.py runs them on a tiny model."""
    overrides = small_overrides(tmp_path)
    cfg = cli.check(recipe, overrides)
    if cfg.model.kind == "hub":
        cfg = cli.check(recipe, overrides + ["model=tiny"])
    cfg = run_module.as_run_config(cfg)
    task = task_loading.load_task(cfg.task.name, cfg.task)
    model, tokenizer = model_loading.build_model(cfg, task) if cfg.model.kind != "mlp" else _small_mlp(task)
    datamodule = PairDataModule(task, tokenizer, n_train=64, n_val=16, n_test=32, batch_size=16, seed=0)
    datamodule.setup()
    spec = datamodule.spec()
    sites = sweep_sites.build_sites(cfg.sweep, spec, model_loading.number_of_layers(model))
    assert sites
    from das_train.training.das_module import DASModule

    site = sites[-1]
    module = DASModule(model, layer=site.layer, component=site.component, position=site.position,
                       intervention=cfg.intervention.type, low_rank_dimension=min(cfg.intervention.low_rank_dimension, 8),
                       lr=cfg.intervention.lr, is_language_model_task=spec.is_language_model_task)
    batch = next(iter(datamodule.train_dataloader()))
    assert module(batch).shape[0] == batch["counterfactual_label"].shape[0]


def _small_mlp(task):
    import das_train as pv

    _, _, model = pv.create_mlp_classifier(pv.MLPConfig(h_dim=16, n_layer=3, input_dim=16, activation_function="relu",
                                                          pdrop=0.0, squeeze_output=False), seed=0)
    return model.eval(), None


def test_bad_overrides_are_all_reported_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as err:
        cli.check("gender_tiny", ["trainer.max_step=3", "model=huge", "trainer.batch_size=lots",
                                  "logger.kind=slack", "task.n_train=-5"])
    message = str(err.value)
    for expected in (
        "unknown key 'trainer.max_step'; allowed under 'trainer': [",
        "model=huge: no such model config; available: ['gpt2', 'mlp', 'pythia_6_9b', 'tiny']",
        "'trainer.batch_size' = 'lots' has the wrong type",
        "'logger.kind' = 'slack' is not allowed; allowed: ['csv', 'wandb', 'tensorboard', 'none']",
        "'task.n_train' = -5 must be positive",
    ):
        assert expected in message
    assert not (tmp_path / "runs").exists()


def test_command_line_refuses_an_unknown_recipe_with_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "das_train", "recipe=nope", f"run_dir={tmp_path}/r"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown recipe 'nope'; available in " in result.stderr and "'gender_tiny'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_hub_recipe_offline_fails_fast_naming_offline_recipes(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cli.check("gender_pythia", small_overrides(tmp_path))
    from das_train.core.loaders import HubUnavailableError

    with pytest.raises(HubUnavailableError, match="Recipes that work offline: gender_tiny"):
        run_module.run(cfg)


def test_small_sweep_end_to_end_and_resume(tmp_path, monkeypatch):
    overrides = small_overrides(tmp_path, "sweep.layers=[0,1]", "sweep.positions=[name,last]")
    cfg = cli.check("gender_tiny", overrides)
    run_dir = run_module.run(cfg)
    for name in ("config.yaml", "results.csv", "table.csv", "table.md", "heatmaps.png"):
        assert (run_dir / name).exists(), name
    with (run_dir / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    # 2 embedding sites + 2 layers x 2 positions
    assert len(table) == 6
    assert all(0.0 <= float(row["iia"]) <= 1.0 and 0.0 <= float(row["probe_accuracy"]) <= 1.0 for row in table)
    assert "| emb | name (1) |" in (run_dir / "table.md").read_text()
    assert (run_dir / "interventions").is_dir()

    # Interrupted after some rows: a re-run trains only the missing ones.
    with (run_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    with (run_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:4])
    trained = []
    original = das_sweep.fit_group
    monkeypatch.setattr(das_sweep, "fit_group", lambda *a, **k: trained.extend(s for s, _ in a[1]) or original(*a, **k))
    run_module.run(cfg)
    assert [(s.layer, s.component, s.position) for s in trained] == [
        (int(r["layer"]), r["component"], int(r["position"])) for r in rows[4:]
    ]


class _Interrupt(Exception):
    pass


class _StopAt(lightning.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise _Interrupt


def small_gender_run(tmp_path):
    """(cfg, model, datamodule, spec) of a small gender_tiny run with 40 DAS steps, for tests
    that drive one site's or one group's fit by hand."""
    cfg = run_module.as_run_config(cli.check("gender_tiny", small_overrides(tmp_path, "trainer.max_steps=40")))
    task = task_loading.load_task("gender")
    model, tokenizer = model_loading.build_model(cfg, task)
    datamodule = PairDataModule(task, tokenizer, n_train=128, n_val=16, n_test=64, batch_size=16, seed=0)
    datamodule.setup()
    return cfg, model, datamodule, datamodule.spec()


def fit_by_hand(cfg, model, datamodule, spec, jobs, run_dir, batched=True):
    """The rows of the (site, seed) ``jobs`` fitted as one group outside a run, with their
    probes: a group of one job through the per-site module unless ``batched``."""
    splits = SplitReader(datamodule, spec.is_language_model_task)
    probes = sweep_probes(cfg.sweep.probe, model, spec, jobs, splits)
    sweep = Sweep(cfg, model, datamodule, spec, run_dir, splits, probes)
    return fit_group(sweep, jobs, batched)


def test_a_cut_off_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    cfg, model, datamodule, spec = small_gender_run(tmp_path)
    site = SweepSite(1, "block_output", 3, "last")
    real_make_trainer = group_fit.make_trainer

    def interrupted(*args, **kwargs):
        trainer = real_make_trainer(*args, **kwargs)
        trainer.callbacks.append(_StopAt(25))
        return trainer

    monkeypatch.setattr(group_fit, "make_trainer", interrupted)
    with pytest.raises(_Interrupt):
        fit_by_hand(cfg, model, datamodule, spec, [(site, 0)], tmp_path, batched=False)
    checkpoint = tmp_path / "checkpoints" / f"{site.key}-s0" / "last.ckpt"
    assert checkpoint.exists()
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 20
    monkeypatch.setattr(group_fit, "make_trainer", real_make_trainer)
    with caplog.at_level("INFO", logger="das_train"):
        (row,) = fit_by_hand(cfg, model, datamodule, spec, [(site, 0)], tmp_path, batched=False)
    assert "resuming from" in caplog.text
    assert 0.0 <= row["iia"] <= 1.0
    assert not checkpoint.exists()  # cleaned once the row exists


def test_wandb_logger_works_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = small_overrides(tmp_path, "sweep.layers=[0]", "sweep.positions=[last]",
                                "sweep.include_embeddings=false")
    overrides = [o for o in overrides if not o.startswith("logger=")] + ["logger=wandb"]
    run_dir = run_module.run(cli.check("gender_tiny", overrides))
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run was written"
    assert (run_dir / "table.csv").exists()


def test_same_seed_same_results(tmp_path):
    """Seeded end to end: two runs of one config in two directories give the same rows."""
    extra = ("sweep.layers=[1]", "sweep.positions=[last]", "sweep.include_embeddings=false")
    results = []
    for name in ("a", "b"):
        run_dir = run_module.run(cli.check("gender_tiny", small_overrides(tmp_path / name, *extra)))
        with (run_dir / "results.csv").open() as handle:
            results.append([{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(handle)])
    assert results[0] == results[1]


def test_boundless_variant_by_override(tmp_path):
    extra = ("intervention=boundless", "sweep.layers=[1]", "sweep.positions=[last]", "sweep.include_embeddings=false")
    run_dir = run_module.run(cli.check("gender_tiny", small_overrides(tmp_path, *extra)))
    with (run_dir / "results.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["intervention_size"] != ""  # the boundless boundary's size is reported


def test_sharded_sweep_merges_into_the_unsharded_table(tmp_path):
    """Two shards of one sweep write their rows apart; the merged table equals the unsharded one."""
    extra = ("sweep.layers=[0,1]", "sweep.positions=[name,last]", "sweep.include_embeddings=false")
    whole = run_module.run(cli.check("gender_tiny", small_overrides(tmp_path / "whole", *extra)))
    sharded = tmp_path / "sharded"
    for shard in (0, 1):
        overrides = small_overrides(sharded, *extra, f"sweep.shard={shard}", "sweep.num_shards=2")
        overrides = [o if not o.startswith("cache_dir=") else f"cache_dir={tmp_path}/whole/cache" for o in overrides]
        run_module.run(cli.check("gender_tiny", overrides))
    assert (sharded / "results.shard-0-of-2.csv").exists() and (sharded / "results.shard-1-of-2.csv").exists()

    def table(run_dir):
        with (run_dir / "table.csv").open() as handle:
            return list(csv.DictReader(handle))

    assert table(sharded) == table(whole)
    (sharded / "table.csv").unlink()
    run_module.run(cli.check("gender_tiny", small_overrides(sharded, *extra, "sweep.merge=true")))
    assert table(sharded) == table(whole)


def test_shard_index_is_checked():
    with pytest.raises(ConfigError, match=r"'sweep.shard' = 2 must be in 0..1"):
        cli.check("gender_tiny", ["sweep.shard=2", "sweep.num_shards=2"])


def _cli(run_dir, cache, *extra):
    # 63 test pairs: an odd split, which two processes cannot share evenly.
    positions = [e for e in extra if e.startswith("sweep.positions=")] or ["sweep.positions=[last]"]
    command = [sys.executable, "-m", "das_train", "recipe=gender_tiny", f"run_dir={run_dir}", f"cache_dir={cache}",
               "progress=false", "logger=none", "trainer.max_steps=12",
               "task.n_train=192", "task.n_val=32", "task.n_test=63", "sweep.probe.max_epochs=2",
               "sweep.layers=[1]", "sweep.include_embeddings=false", "trainer.accelerator=cpu",
               *positions, *[e for e in extra if not e.startswith("sweep.positions=")]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _ddp_outcome(run_dir, position_name="last"):
    """(IIA, test pairs evaluated, test pairs kept by the filter, learned weights) of one site."""
    import json

    from safetensors.torch import load_file

    with (run_dir / "results.csv").open() as handle:
        (row,) = [r for r in csv.DictReader(handle) if r["position_name"] == position_name]
    (saved,) = list((run_dir / "interventions").glob(f"*-{position_name}-s*"))
    kept = json.loads((run_dir / "run_info.json").read_text())["dataset"]["kept"]["test"]
    assert row.get("test_pairs"), "the sweep path that wrote this row did not count its test pairs"
    return (float(row["iia"]), int(row["test_pairs"]), kept,
            load_file(str(saved / "interventions.safetensors")))


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    """Two gloo processes with 8 pairs each per step see the rows one process sees in 16.

    Tolerance: learned weights within 1e-5 (only the all-reduce's summation order differs),
    IIA equal, and every test pair counted once: the split is odd-sized, where Lightning's
    DistributedSampler would have evaluated one pair twice.
    """
    cache = tmp_path / "cache"
    # With the BOS site beside it: a group whose untrained site DDP must not wait a gradient for.
    group = "sweep.positions=[bos,last]"
    _cli(tmp_path / "one", cache, group, "trainer.shuffle=false", "trainer.devices=1", "trainer.batch_size=16")
    _cli(tmp_path / "two", cache, group, "trainer.shuffle=false", "trainer.devices=2", "trainer.strategy=ddp",
         "trainer.batch_size=8")

    iia_one, pairs_one, kept, weights_one = _ddp_outcome(tmp_path / "one")
    iia_two, pairs_two, kept_two, weights_two = _ddp_outcome(tmp_path / "two")
    assert _ddp_outcome(tmp_path / "two", "bos")[0] == _ddp_outcome(tmp_path / "one", "bos")[0]
    assert kept == kept_two and kept % 2 == 1  # the case under test: an odd test split
    assert pairs_one == pairs_two == kept
    assert iia_one == iia_two
    assert weights_one.keys() == weights_two.keys()
    for key in weights_one:
        torch.testing.assert_close(weights_two[key], weights_one[key], atol=1e-5, rtol=0)
    assert not list((tmp_path / "two").glob("results.shard*"))  # one run directory, written once


def test_ddp_with_shuffled_training_counts_each_test_pair_once(tmp_path):
    """With trainer.shuffle=true Lightning hands the training split to its own shuffled
    DistributedSampler, so one and two processes train on different batches; a learning rate
    of 1e-12 keeps both interventions at their shared seeded start, so the IIA of the two runs
    must be equal, and an odd test split is still counted exactly once."""
    cache = tmp_path / "cache"
    common = ("trainer.shuffle=true", "trainer.max_steps=2", "intervention.lr=1e-12")
    _cli(tmp_path / "one", cache, *common, "trainer.devices=1", "trainer.batch_size=16")
    _cli(tmp_path / "two", cache, *common, "trainer.devices=2", "trainer.strategy=ddp", "trainer.batch_size=8")

    iia_one, pairs_one, kept, _ = _ddp_outcome(tmp_path / "one")
    iia_two, pairs_two, _, _ = _ddp_outcome(tmp_path / "two")
    assert kept % 2 == 1
    assert pairs_one == pairs_two == kept
    assert iia_two == iia_one


def test_rank_slices_cover_a_split_once_for_evaluation_and_evenly_for_training(monkeypatch):
    """Without processes: the slices every rank of a world of 3 would take."""
    seen_eval, seen_train = [], []
    for rank in range(3):
        monkeypatch.setattr(samplers.RankSliceSampler, "_world", staticmethod(lambda rank=rank: (rank, 3)))
        evaluation = samplers.RankSliceSampler(10, drop_remainder=False)
        training = samplers.RankSliceSampler(10)
        assert len(evaluation) == len(list(evaluation)) and len(training) == len(list(training)) == 3
        seen_eval += list(evaluation)
        seen_train += list(training)
    assert sorted(seen_eval) == list(range(10))  # each row once, none padded in
    assert sorted(seen_train) == list(range(9))  # the same number of steps on every rank
    assert isinstance(evaluation, torch.utils.data.DistributedSampler)  # Lightning keeps it


def test_a_hub_model_is_put_on_its_gpu_once_when_loaded(monkeypatch):
    """Before the pair filter and every site's fit: cuda:LOCAL_RANK, unless accelerate places
    the model or training runs on the CPU (no GPU needed: only the choice is checked)."""
    def config(*overrides):
        return run_module.as_run_config(cli.check("gender_pythia", list(overrides)))

    cfg = config()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert model_loading.frozen_model_device(cfg) == torch.device("cuda", 1)
    assert model_loading.frozen_model_device(config("model.device_map=auto")) is None
    assert model_loading.frozen_model_device(config("trainer.accelerator=cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_loading.frozen_model_device(cfg) is None


def test_publish_at_the_end_of_a_run(tmp_path, monkeypatch):
    """publish.repo_id hands the finished run directory to das_train.hub.publish_run."""
    import das_train.hub as hub

    calls = []
    monkeypatch.setattr(hub, "publish_run", lambda run_dir, repo_id, private=False: calls.append((run_dir, repo_id, private)) or "url")
    extra = ("sweep.layers=[0]", "sweep.positions=[last]", "sweep.include_embeddings=false", "publish.repo_id=me/gender")
    run_dir = run_module.run(cli.check("gender_tiny", small_overrides(tmp_path, *extra)))
    assert calls == [(run_dir, "me/gender", False)]
    info = (run_dir / "run_info.json").read_text()
    assert '"fingerprint"' in info and '"task": "gender"' in info


def test_iit_sites_each_train_their_own_copy_of_the_model(tmp_path):
    """IIT trains the model; a site must not start from the model an earlier site trained, nor
    leave it changed for the probes: the last position's row is the same whether the BOS site
    trained before it or not."""
    both, weights_both = small_sweep(tmp_path, "both", "intervention.iit=true", "trainer.max_steps=6",
                                     "sweep.layers=[1]", "sweep.include_embeddings=false",
                                     "sweep.positions=[bos,last]")
    alone, weights_alone = small_sweep(tmp_path, "alone", "intervention.iit=true", "trainer.max_steps=6",
                                       "sweep.layers=[1]", "sweep.include_embeddings=false",
                                       "sweep.positions=[last]")
    last_both = next(r for r in both if r["position_name"] == "last")
    (last_alone,) = alone
    for key in ("iia", "probe_accuracy", "control_accuracy", "test_pairs"):
        assert last_both[key] == last_alone[key], key
    name = next(n for n in weights_alone if n.endswith("-last-s0"))
    for key, value in weights_alone[name].items():
        torch.testing.assert_close(weights_both[name][key], value, atol=0, rtol=0)
