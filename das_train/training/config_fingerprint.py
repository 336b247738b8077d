"""Which settings of a run's config can change its results, and the short fingerprint that names
them.

A run directory accumulates results across restarts (:mod:`das_train.training.run_dir`); each
result row is stamped with this fingerprint so that a row of another experiment is never taken
for a finished site. Settings are compared with every key the config leaves out at its schema
default, so a config spelled out in full and one that leaves defaults out name the same
experiment.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from das_train.training import schema

NEUTRAL_KEYS = (
    "recipe", "progress", "logger", "publish", "cache_dir", "run_dir", "resume",
    "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.accelerator",
    "sweep.shard", "sweep.num_shards", "sweep.merge", "sweep.batched", "sweep.sites_per_pass",
    "sweep.probe.tables_mib", "sweep.random_init_control", "sweep.bootstrap",
)
"""Settings (or whole sections) that change where and how a run goes, not its results: a run
directory may be resumed with other values of these. DDP gives the table of one process, and
the batched sweep that of one site at a time. The random-init control only adds a companion
sweep (with a fingerprint of its own) and the bootstrap only the table's intervals, so a
finished sweep takes them on without training its sites again."""
OTHER_JOBS_SECTIONS = {"das_sweep": ("tracing", "steering", "iit"), "causal_tracing": ("steering", "iit"),
                       "steering": ("tracing", "iit"), "iit": ("tracing", "steering", "sweep", "mib")}
"""Sections a job never reads, so that changing them cannot change its results (and a section
added for a new job leaves the fingerprints of the other jobs' runs as they were)."""
FINGERPRINT_LENGTH = 12


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return {key.rstrip("."): value for key, value in flat.items()}


def _is_neutral(key: str, job: str) -> bool:
    covered = (*NEUTRAL_KEYS, *OTHER_JOBS_SECTIONS.get(job, ()))
    return any(key == name or key.startswith(name + ".") for name in covered) or key.startswith("hydra.")


def _settings_as_written(data: dict[str, Any]) -> dict[str, Any]:
    job = data.get("job", "das_sweep")
    return {key: value for key, value in _flat(data).items() if not _is_neutral(key, job)}


Config = schema.RunConfig | DictConfig | dict[str, Any]
"""A run's typed config, or config data: composed by Hydra, or read back from a stored
``config.yaml`` (which may lack keys added since, or hold keys since removed)."""


def result_settings(config: Config) -> dict[str, Any]:
    """The config's settings that can change a result, as ``{dotted.key: value}``, with every key
    the config leaves out at its schema default: a config stored before a key existed, or before
    configs were completed with the defaults, names the same experiment as one that spells the
    default out."""
    if isinstance(config, schema.RunConfig):
        data = config.as_data()
    else:
        data = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    return _settings_as_written(schema.complete(data))


def _digest(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:FINGERPRINT_LENGTH]


def config_fingerprint(config: Config) -> str:
    """12 hex digits naming the config's result-affecting settings (:func:`result_settings`)."""
    return _digest(result_settings(config))


def written_fingerprint(data: dict[str, Any]) -> str:
    """The fingerprint a stored config had when rows were stamped from it as written, without the
    defaults it leaves out (how das_train stamped rows before configs were completed)."""
    return _digest(_settings_as_written(data))
