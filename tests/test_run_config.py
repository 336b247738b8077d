"""The typed run config: a validated config becomes one RunConfig, once, and every job and check
reads typed parts of it, while what a run records (config.yaml, the fingerprint) stays the same
as the config it was given."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import das_train
from das_train import cli
from das_train.training import config_fingerprint as fingerprints
from das_train.training import run as run_module
from das_train.training import schema
from das_train.training.schema import ConfigError, RunConfig


def test_every_section_is_typed_and_its_values_kept_as_given():
    data = schema.complete({"intervention": {"lr": 1}, "sweep": {"layers": [2, 0], "probe": {"max_epochs": 3}}})
    config = RunConfig.from_data(OmegaConf.create(data))
    assert isinstance(config.sweep, schema.SweepConfig) and isinstance(config.sweep.probe, schema.ProbeConfig)
    assert config.sweep.layers == [2, 0] and type(config.sweep.layers) is list  # not a ListConfig
    assert config.sweep.probe.max_epochs == 3
    # 1 given for a float stays 1: converting it would change config.yaml and the fingerprint.
    assert config.intervention.lr == 1 and type(config.intervention.lr) is int
    assert config.as_data() == data


def test_a_key_left_out_takes_the_default_and_hydras_own_are_dropped():
    config = RunConfig.from_data({"seed": 3, "hydra": {"run": {"dir": "x"}}, "trainer": {"max_steps": 7}})
    assert config.seed == 3 and config.trainer.max_steps == 7
    assert config.trainer.batch_size == schema.TrainerConfig.batch_size
    assert config.as_data() == schema.complete({"seed": 3, "trainer": {"max_steps": 7}})


def test_a_section_that_is_no_mapping_is_named():
    with pytest.raises(ConfigError, match=r"'sweep.probe' = 3: expected a mapping with keys from \['max_epochs', "):
        RunConfig.from_data({"sweep": {"probe": 3}})


def test_the_typed_config_leaves_its_data_alone():
    config = RunConfig.from_data(schema.defaults())
    config.as_data()["sweep"]["seeds"].append(9)
    assert config.sweep.seeds == [0]
    given = schema.defaults()
    RunConfig.from_data(given).sweep.seeds.append(9)
    assert given["sweep"]["seeds"] == [0]


@pytest.mark.parametrize("recipe", ["gender_tiny", "steering_tiny", "causal_tracing", "hierarchical_equality"])
def test_what_a_run_records_is_the_config_it_was_given(recipe):
    """config.yaml's text and the results' fingerprint, from the typed config, equal those of
    the completed DictConfig they were written from before the config was typed."""
    cfg = cli.check(recipe, ["intervention.lr=1", "sweep.layers=[1]"])
    config = run_module.as_run_config(cfg)
    completed = OmegaConf.create(run_module.run_data(cfg))
    assert OmegaConf.to_yaml(config.as_data()) == OmegaConf.to_yaml(completed)
    assert fingerprints.config_fingerprint(config) == fingerprints.config_fingerprint(completed)
    assert fingerprints.config_fingerprint(config) == fingerprints.config_fingerprint(cfg)


def test_every_job_receives_the_typed_config(tmp_path, monkeypatch):
    seen = {}
    for job in run_module.JOBS:
        monkeypatch.setitem(run_module.JOBS, job, lambda config, run_dir: seen.setdefault("config", config) and run_dir)
    run_module.run({"job": "steering", "run_dir": str(tmp_path / "r"), "progress": False,
                    "steering": {"coefficient": [0.5, 1]}})
    config = seen["config"]
    assert isinstance(config, RunConfig) and isinstance(config.steering, schema.SteeringConfig)
    assert config.steering.coefficient == [0.5, 1] and config.run_dir == str(tmp_path / "r")
    assert (tmp_path / "r" / "config.yaml").read_text() == OmegaConf.to_yaml(config.as_data())


HYDRA_CONFIG_MODULES = {"training/run.py", "training/config_fingerprint.py", "training/run_dir.py"}
"""Where a DictConfig may still be handled: run()'s entry, which receives Hydra's composed
config, and the fingerprint and run-directory checks, which read stored config.yaml files."""


def test_only_the_entry_and_stored_configs_handle_a_dictconfig():
    """Everything past run()'s entry receives typed parts, so no other module imports DictConfig
    to annotate, build or check for one."""
    package = Path(das_train.__file__).parent
    uses = re.compile(r"^from omegaconf import .*\bDictConfig\b|omegaconf\.DictConfig", re.MULTILINE)
    handling = {path.relative_to(package).as_posix() for path in package.rglob("*.py") if uses.search(path.read_text())}
    assert handling <= HYDRA_CONFIG_MODULES, sorted(handling - HYDRA_CONFIG_MODULES)
