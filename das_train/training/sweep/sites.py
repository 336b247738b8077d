"""The sites a DAS sweep visits: every (layer, position) of the config, plus the embedding row.

A :class:`SweepSite` is one cell of the results table. It is not the hook core's site
(:mod:`das_train.core.sites` resolves a (layer, component) to a module of a model); it names a
place in the sweep and the task position it stands at.
"""

from __future__ import annotations

from dataclasses import dataclass

from das_train.data.pair_contract import RowPosition, TaskSpec
from das_train.data.pair_inputs import Position
from das_train.training.schema import ConfigError, SweepConfig


@dataclass(frozen=True)
class SweepSite:
    """One swept place: a layer's component at one of the task's named positions."""

    layer: int
    component: str
    position: Position
    """The token position (counted from the end when negative) the task's name stands for, or
    a :class:`~das_train.data.pair_contract.RowPosition` that each pair's batch resolves."""
    position_name: str

    @property
    def table_position(self) -> int:
        """The site's ``position`` in result rows and resume keys (an int column): the index
        itself, or a RowPosition's column (:func:`build_sites` refuses a task where the two
        would collide)."""
        return self.position.column if isinstance(self.position, RowPosition) else self.position

    @property
    def key(self) -> str:
        """The site's name in file names and logs: ``block_output-L1-last``."""
        return f"{self.component}-L{self.layer}-{self.position_name}"


def build_sites(sweep: SweepConfig, spec: TaskSpec, n_layers: int) -> list[SweepSite]:
    """``sweep.layers`` x ``sweep.positions`` (all when unset), the embedding row first when
    ``sweep.include_embeddings``; an out-of-range layer or unknown position is refused."""
    problems = []
    layers = list(sweep.layers) if sweep.layers is not None else list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        problems.append(f"sweep.layers {bad} out of range; the model has layers 0..{n_layers - 1}")
    names = list(sweep.positions) if sweep.positions is not None else list(spec.positions)
    unknown = [n for n in names if n not in spec.positions]
    if unknown:
        problems.append(f"sweep.positions {unknown} unknown; the task's positions: {list(spec.positions)}")
    problems += table_position_clashes({n: spec.positions[n] for n in names if n in spec.positions})
    if problems:
        raise ConfigError(problems)
    sites = []
    if sweep.include_embeddings and spec.is_language_model_task:
        sites += [SweepSite(0, "block_input", spec.positions[n], n) for n in names]
    sites += [SweepSite(layer, sweep.component, spec.positions[n], n) for layer in layers for n in names]
    return sites


def table_position_clashes(positions: dict[str, Position]) -> list[str]:
    """A problem per RowPosition whose column equals another swept position's index: both would
    be one site in the results table (:attr:`SweepSite.table_position`)."""
    ints = {p: n for n, p in positions.items() if not isinstance(p, RowPosition)}
    return [f"sweep.positions: {name!r} (RowPosition column {p.column}) and {ints[p.column]!r} (index "
            f"{p.column}) would share the results table's position {p.column}; sweep one of them"
            for name, p in positions.items() if isinstance(p, RowPosition) and p.column in ints]


__all__ = ["SweepSite", "build_sites", "table_position_clashes"]
