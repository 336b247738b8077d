"""The extra sweeps the validity card runs beside the main one, each a config derived from it.

Two of the card's columns cannot be read off the main sweep's activations: Boundless DAS
trains an intervention of another kind, and the random-init control runs DAS on a network with
fresh weights. Each is a whole DAS sweep of its own, on the same task, pairs, sites and seeds,
in a folder of the main run directory (``<run_dir>/<name>``), so it resumes, and is refused on
a config change, exactly as the main sweep is. Deriving its config here, in one place, makes
the card and the run that fills it agree on where the rows are and which fingerprint they
carry.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from das_train.training import config_fingerprint as fingerprints
from das_train.training import run_dir as run_dir_state
from das_train.training.schema import ConfigError, InterventionConfig, RunConfig, typed

COMPANIONS = ("boundless", "random_init")
"""The companion sweeps, in the order they run; each one's rows are in ``<run_dir>/<name>``."""
BOUNDLESS_GROUP = ("conf", "intervention", "boundless.yaml")
"""The config group option ``intervention=boundless``: the one statement of Boundless DAS's
settings, read as the command line composes it (over the schema's defaults)."""


def boundless_intervention() -> InterventionConfig:
    """The intervention section ``intervention=boundless`` gives on the command line."""
    path = importlib.resources.files("das_train").joinpath(*BOUNDLESS_GROUP)
    values = OmegaConf.to_container(OmegaConf.create(path.read_text()), resolve=True)
    return typed(InterventionConfig, values, "intervention")


def companion_configs(config: RunConfig) -> dict[str, RunConfig]:
    """The companion sweeps ``config`` asks for, by name (in :data:`COMPANIONS` order).

    ``random_init`` (``sweep.random_init_control``): the DAS sweep on the re-initialised model.
    ``boundless`` (``boundless`` in ``sweep.methods``, unless the main sweep is Boundless DAS
    already): the sweep with ``intervention=boundless``. Each trains ``das`` only (the untrained
    featurizers are the main sweep's), asks for no companion of its own, publishes nothing (the
    main run uploads its whole directory) and resumes whatever the main run's ``resume`` says:
    ``resume=fresh`` has already set the main directory aside, companions and all.
    """
    configs = {}
    boundless = boundless_intervention()
    if "boundless" in config.sweep.methods and config.intervention.type != boundless.type:
        configs["boundless"] = _derived(config, "boundless", intervention=boundless)
    if config.sweep.random_init_control:
        configs["random_init"] = _derived(config, "random_init",
                                          model=dataclasses.replace(config.model, random_init=True))
    return configs


def _derived(config: RunConfig, name: str, **changes: Any) -> RunConfig:
    sweep = dataclasses.replace(config.sweep, methods=["das"], random_init_control=False)
    return dataclasses.replace(config, sweep=sweep, publish=dataclasses.replace(config.publish, repo_id=None),
                               run_dir=str(Path(config.run_dir) / name), resume="auto", **changes)


def companion_config(config: RunConfig, name: str) -> RunConfig:
    """The config of companion ``name``; a name that is none, or one ``config`` does not ask
    for, is a :class:`ConfigError` saying which are run and what turns the others on."""
    if name not in COMPANIONS:
        raise ConfigError([f"no companion sweep {name!r}; allowed: {list(COMPANIONS)}"])
    configs = companion_configs(config)
    if name not in configs:
        raise ConfigError([f"companion sweep {name!r} is not run by this config (it runs {list(configs)}): "
                           "'random_init' needs sweep.random_init_control=true, 'boundless' needs boundless "
                           "in sweep.methods and an intervention.type other than Boundless DAS"])
    return configs[name]


def companion_rows(config: RunConfig, name: str) -> list[dict[str, Any]]:
    """The finished rows of companion ``name`` (one per site and seed done so far), read from
    its folder with its own config's fingerprint, so rows of an earlier, other companion config
    are never taken for its results."""
    companion = companion_config(config, name)
    return run_dir_state.finished_rows(Path(companion.run_dir), fingerprints.config_fingerprint(companion))


__all__ = ["COMPANIONS", "boundless_intervention", "companion_config", "companion_configs", "companion_rows"]
