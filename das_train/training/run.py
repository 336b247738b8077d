"""``run(cfg)``: the one entry point of every job, called by the command line and by tests.

It completes the composed config with the schema's defaults, validates it (unless the
command line already has: a config is validated once), turns it into the typed
:class:`~das_train.training.schema.RunConfig` once, prepares the run directory (locked against
a second writer, cleared of killed writers' temporary files) and hands the job to its module:
the DAS sweep (:mod:`das_train.training.sweep.das_sweep`), causal tracing
(:mod:`das_train.training.tracing`), steering (:mod:`das_train.training.steering`), interchange
intervention training (:mod:`das_train.training.iit_job`) or the MIB export of a finished sweep
(:mod:`das_train.training.mib_export`, which only reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from das_train.training import preflight
from das_train.training import run_dir as run_dir_state
from das_train.training.iit_job import run_iit
from das_train.training.mib_export import run_export_mib
from das_train.training.outputs import results_path, setup_output
from das_train.training.ranks import is_global_zero
from das_train.training.schema import ConfigError, RunConfig, complete
from das_train.training.steering import run_steering
from das_train.training.sweep.das_sweep import run_das_sweep
from das_train.training.tracing import run_tracing
from das_train.training.validation import validate

JOBS = {"das_sweep": run_das_sweep, "causal_tracing": run_tracing, "steering": run_steering,
        "export_mib": run_export_mib, "iit": run_iit}
"""Each ``job`` value's runner: ``(config, run_dir) -> run_dir``."""
READ_ONLY_JOBS = ("export_mib",)
"""Jobs that only read a finished run's directory: it is not prepared (that would check it against
this job's config and record this config over the run's own); they change nothing of it."""


def run_data(cfg: Any, validated: bool = False) -> dict[str, Any]:
    """A composed config as plain data (Hydra's own settings dropped), every key the recipe
    leaves out taken from the schema; checked against the schema unless ``validated``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    data = complete(data)
    problems = [] if validated else validate(data)
    if problems:
        raise ConfigError(problems)
    return data


def as_run_config(cfg: Any, validated: bool = False) -> RunConfig:
    """The typed config of a composed one (:func:`run_data`): what every job and the functions
    it calls receive; tests build one from a recipe to call those functions directly."""
    return RunConfig.from_data(run_data(cfg, validated))


def run(cfg: Any, validated: bool = False) -> Path:
    """Runs the job described by ``cfg`` (a composed recipe); returns the run directory.

    ``validated=True`` says the caller (the command line) has already run the schema's and the
    sweep's checks on this very config, so they are not run twice; a library caller leaves it
    false. Runs only while the run directory is :func:`~das_train.training.run_dir.prepared`:
    locked against a second writer, holding nothing of another config, cleared of killed
    writers' temporary files.
    """
    config = as_run_config(cfg, validated)
    if config.job in READ_ONLY_JOBS:
        return JOBS[config.job](config, Path(config.run_dir))
    if config.job == "das_sweep" and not config.sweep.merge and not validated:
        preflight.check_sweep(config)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results_file = results_path(run_dir, config.sweep)
    with run_dir_state.prepared(config, run_dir, results_file, writer=is_global_zero()):
        setup_output(config, run_dir)
        return JOBS[config.job](config, run_dir)


__all__ = ["JOBS", "READ_ONLY_JOBS", "as_run_config", "run", "run_data"]
