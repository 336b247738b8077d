"""The sites a DAS sweep visits: every (layer, position) of the config, plus the embedding row.

A :class:`SweepSite` is one cell of the results table. It is not the hook core's site
(:mod:`das_train.core.sites` resolves a (layer, component) to a module of a model); it names a
place in the sweep and the task position it stands at.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from das_train.data.pair_contract import TaskSpec
from das_train.training.schema import ConfigError


@dataclass(frozen=True)
class SweepSite:
    """One swept place: a layer's component at one of the task's named positions."""

    layer: int
    component: str
    position: int
    """The token position (counted from the end when negative) the task's name stands for."""
    position_name: str

    @property
    def key(self) -> str:
        """The site's name in file names and logs: ``block_output-L1-last``."""
        return f"{self.component}-L{self.layer}-{self.position_name}"


def build_sites(cfg: DictConfig, spec: TaskSpec, n_layers: int) -> list[SweepSite]:
    """``sweep.layers`` x ``sweep.positions`` (all when unset), the embedding row first when
    ``sweep.include_embeddings``; an out-of-range layer or unknown position is refused."""
    problems = []
    layers = list(cfg.sweep.layers) if cfg.sweep.layers is not None else list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        problems.append(f"sweep.layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    names = list(cfg.sweep.positions) if cfg.sweep.positions is not None else list(spec.positions)
    unknown = [n for n in names if n not in spec.positions]
    if unknown:
        problems.append(f"sweep.positions {unknown} unknown; the task's positions: {list(spec.positions)}")
    if problems:
        raise ConfigError(problems)
    sites = []
    if cfg.sweep.include_embeddings and spec.is_language_model_task:
        sites += [SweepSite(0, "block_input", spec.positions[n], n) for n in names]
    sites += [SweepSite(layer, cfg.sweep.component, spec.positions[n], n) for layer in layers for n in names]
    return sites


__all__ = ["SweepSite", "build_sites"]
