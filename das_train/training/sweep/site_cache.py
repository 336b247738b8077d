"""What the frozen model computes once for a whole sweep, and running it from a layer upward.

A per-site DAS loop runs the frozen model twice per training step, on the source and on the
base, although nothing below the intervened layer changes while an intervention trains. For a
group of sites at one (layer, component), :func:`collect_layer` runs the model once on each
distinct input of a split (pairs share bases and sources) and keeps, per distinct input:

- its input to the layer's block (a base's *frozen prefix*), or the block's output where the
  site is that output, so training can start at the block, or above it, instead of at the
  embeddings (:class:`~das_train.training.sweep.prefix_skip.PrefixSkip`);
- the component's activation at each swept position: a source's is what an interchange
  writes in. A per-row position (RowPosition) is read at each input's own token index.

:func:`collect_base_sites` reads many sites of any layers the same way, one forward per chunk
of distinct bases, for the sweep's probes. Each collection pass stops right after the deepest
site it reads (nothing above it is needed). Activations are kept on CPU in the model's dtype:
the training cache one layer at a time, the probes' tables within a memory budget, so a big
model's sweep never holds every layer's activations at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from das_train.core.devices import input_device
from das_train.core.hooks import HookSet, StopForward, as_3d, read_hooked
from das_train.core.sites import resolve_site, table_for
from das_train.data.pair_inputs import Position, model_inputs, row_indices, side_positions

Batch = Mapping[str, torch.Tensor]


def batched_sites_supported(model: nn.Module, layer: int, component: str) -> str | None:
    """``None`` when a site group at (layer, component) can run cached and batched, else why not.

    The batched path needs the model's block at every layer (to skip the frozen prefix) and a
    component that is a whole module input or output (not a slice of fused columns or heads).
    """
    table = table_for(model)
    if table is None:
        return f"{type(model).__name__} has no architecture table"
    if table.recurrent:
        return f"{table.name} is recurrent (its layer is called once per time step)"
    if "block_input" not in table.components:
        return f"the {table.name} table has no block_input component"
    site = resolve_site(model, layer, component, "pos")
    if site.columns is not None or site.n_heads is not None:
        return f"{component} is a slice of its module's activation (columns or heads)"
    return None


def starts_after_block(model: nn.Module, layer: int, component: str) -> bool:
    """Whether the site is block ``layer``'s whole output, so a cached copy of it can stand in
    for the block itself: training then starts above the block instead of re-running it."""
    site = resolve_site(model, layer, component, "pos")
    block = resolve_site(model, layer, "block_input", "pos").module
    return site.module is block and site.hook == "output" and site.columns is None and site.n_heads is None


def block_modules(model: nn.Module, up_to: int) -> list[nn.Module]:
    """The blocks of layers ``0 .. up_to`` (the modules ``block_input`` hooks)."""
    return [resolve_site(model, layer, "block_input", "pos").module for layer in range(up_to + 1)]


@dataclass
class LayerActivations:
    """One split's activations at one (layer, component), stored once per distinct input.

    Counterfactual datasets reuse their inputs: ``gender_tiny``'s 2,000 training pairs have 480
    distinct sentences among their 4,000 bases and sources. What the frozen model computes on an
    input does not depend on the pair it is in, so the tables hold one row per distinct input
    and each pair points into them (``base_row``, ``source_row``).
    """

    prefix_table: torch.Tensor | None
    """``(U, seq, d)`` or ``(U, d)``: each distinct input's input to the layer's block, as the
    block saw it, or its output where the site is the block's output (:func:`starts_after_block`);
    ``None`` when not kept."""
    site_table: torch.Tensor
    """``(U, P, w)``: each distinct input's component activation at the P swept positions."""
    base_row: torch.Tensor
    """``(N,)`` int64: the row of each pair's base in the tables, in the split's row order."""
    source_row: torch.Tensor
    """``(N,)`` int64: the row of each pair's source in the tables."""

    @property
    def prefix(self) -> torch.Tensor | None:
        """``(N, seq, d)`` the bases' input to the block, one row per pair (a copy)."""
        return None if self.prefix_table is None else self.prefix_table[self.base_row]

    @property
    def base(self) -> torch.Tensor:
        """``(N, P, w)`` the bases' component activations, one row per pair (a copy)."""
        return self.site_table[self.base_row]

    @property
    def source(self) -> torch.Tensor:
        """``(N, P, w)`` the sources' component activations, one row per pair (a copy)."""
        return self.site_table[self.source_row]


def site_index(positions: Sequence[Position], seq: int, rows: int,
               row_positions: torch.Tensor | None) -> torch.Tensor:
    """``(rows, P)``: each input's token index of each of ``positions`` in a sequence of
    ``seq``. A shared index is the same in every row; a RowPosition is read from the inputs'
    ``row_positions`` ``(rows, columns)``; ``None`` (vector tasks) is the whole activation, a
    one-position sequence."""
    columns = []
    for position in positions:
        concrete = row_indices(0 if position is None else position, row_positions)
        if isinstance(concrete, int):
            if not -seq <= concrete < seq:
                raise IndexError(f"position {concrete} out of range for a sequence of {seq}")
            columns.append(torch.full((rows,), concrete % seq, dtype=torch.long))
        else:
            bad = concrete[(concrete < 0) | (concrete >= seq)]
            if len(bad):
                raise IndexError(f"{position}: indices {bad.tolist()} out of range for a sequence of {seq}")
            columns.append(concrete.long().cpu())
    return torch.stack(columns, dim=1)


def gather_sites(acts: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``(rows, P, w)``: row ``i``'s activation at token ``index[i, k]`` for each ``k`` of
    ``acts`` ``(rows, seq, w)`` (a copy of the values, no arithmetic)."""
    index = index.to(acts.device)
    return acts[torch.arange(len(acts), device=acts.device)[:, None], index]


class DistinctInputs:
    """The distinct model inputs among a split's bases and sources, and where each pair's are.

    An input is its model keyword tensors' row (token ids, mask and position ids, or
    embeddings), compared by value, so the same sentence padded the same way is one input
    wherever it appears. Where pairs name per-row positions, an input is also its row of them
    (:func:`~das_train.data.pair_inputs.side_positions`), kept in :attr:`positions`, so each
    distinct input has one token index per RowPosition.
    """

    def __init__(self, batches: Iterable[Batch], is_language_model_task: bool,
                 sides: Sequence[str] = ("base", "source")) -> None:
        self.rows: dict[str, list[torch.Tensor]] = {}
        position_rows: list[torch.Tensor] = []
        self.batch_size = 0
        index: dict[bytes, int] = {}
        pointers: dict[str, list[int]] = {side: [] for side in sides}
        for batch in batches:
            for side in sides:
                inputs = model_inputs(batch, side, is_language_model_task)
                positions = side_positions(batch, side)
                names = sorted(inputs)
                size = len(inputs[names[0]])
                self.batch_size = max(self.batch_size, size)
                # Each row's bytes, all keyword tensors (and positions) side by side: one key per input.
                keyed = [inputs[name] for name in names] + ([] if positions is None else [positions])
                keys = torch.cat([t.reshape(size, -1).contiguous().cpu().view(torch.uint8) for t in keyed],
                                 dim=1).numpy()
                for i in range(size):
                    key = keys[i].tobytes()
                    if key not in index:
                        index[key] = len(index)
                        for name in names:
                            self.rows.setdefault(name, []).append(inputs[name][i])
                        if positions is not None:
                            position_rows.append(positions[i])
                    pointers[side].append(index[key])
        if not pointers[sides[0]]:
            raise ValueError("the batches were empty")
        self.count = len(index)
        self.positions = torch.stack(position_rows).cpu() if position_rows else None
        """``(count, columns)``: each distinct input's RowPosition indices, or ``None``."""
        self.row = {side: torch.tensor(rows, dtype=torch.long) for side, rows in pointers.items()}
        """Per side, ``(N,)``: the distinct input each pair's base (or source) is."""

    def chunks(self) -> Iterator[dict[str, torch.Tensor]]:
        """The distinct inputs in batches of the split's batch size, in order of first use."""
        for inputs, _ in self.chunks_with_positions():
            yield inputs

    def chunks_with_positions(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """:meth:`chunks`, each with its inputs' rows of :attr:`positions` (``None`` if none)."""
        for start in range(0, self.count, self.batch_size):
            stop = start + self.batch_size
            inputs = {name: torch.stack(rows[start:stop]) for name, rows in self.rows.items()}
            yield inputs, None if self.positions is None else self.positions[start:stop]


def run_until_read(model: nn.Module, inputs: Mapping[str, torch.Tensor],
                   readers: Sequence[tuple[nn.Module, str, Any]]) -> None:
    """One forward of ``inputs`` (moved to the model's input device) with each ``(module,
    hook, read)`` reader hooked; a reader raises :class:`StopForward` once nothing above it is
    needed, which ends the pass there."""
    device = input_device(model)
    with HookSet() as hooks:
        for module, hook, read in readers:
            hooks.add(module, hook, read)
        try:
            model(**{k: v.to(device) for k, v in inputs.items()})
        except StopForward:
            pass


@torch.no_grad()
def collect_layer(
    model: nn.Module,
    layer: int,
    component: str,
    positions: Sequence[Position],
    batches: Iterable[Batch] | DistinctInputs,
    is_language_model_task: bool = True,
    keep_prefix: bool = True,
) -> LayerActivations:
    """Runs each distinct base and source input up to the site once; see the module docstring.

    ``batches`` are a split's pair batches, or their :class:`DistinctInputs` already found
    (bases and sources), which a sweep finds once for all its layers.

    The prefix is the block's input, or for a block-output site the site's whole activation
    (:func:`starts_after_block`). ``keep_prefix=False`` keeps none (a layer-0 block input has
    no prefix to skip), so it is never held.
    """
    block = resolve_site(model, layer, "block_input", "pos")
    site = resolve_site(model, layer, component, "pos")
    after_block = starts_after_block(model, layer, component)
    found: dict[str, torch.Tensor] = {}

    def read_prefix(module, args, kwargs, output):
        found["prefix"] = read_hooked(args, kwargs, output).detach()

    def read_site(module, args, kwargs, output):
        value = read_hooked(args, kwargs, output).detach()
        if after_block:
            found["prefix"] = value
        found["site"] = as_3d(value)
        raise StopForward

    distinct = batches if isinstance(batches, DistinctInputs) else DistinctInputs(batches, is_language_model_task)
    if set(distinct.row) != {"base", "source"}:
        raise ValueError(f"collect_layer needs the distinct inputs of both sides, got {sorted(distinct.row)}")
    prefixes, sites = RowBuffer(distinct.count), RowBuffer(distinct.count)
    readers = [(site.module, site.hook, read_site)]
    if keep_prefix and not after_block:
        readers.insert(0, (block.module, "input", read_prefix))
    for chunk, row_positions in distinct.chunks_with_positions():
        found.clear()
        run_until_read(model, chunk, readers)
        if "site" not in found:
            raise RuntimeError(f"the forward pass never reached {site.description}")
        acts = found["site"]  # (chunk, seq, w)
        index = site_index(positions, acts.shape[1], len(acts), row_positions)  # (chunk, P)
        sites.add(gather_sites(acts, index).cpu())  # (chunk, P, w)
        if keep_prefix:
            prefixes.add(found["prefix"].cpu())
    return LayerActivations(prefixes.result() if keep_prefix else None, sites.result(),
                            distinct.row["base"], distinct.row["source"])


@torch.no_grad()
def collect_base_sites(
    model: nn.Module,
    sites: Sequence[tuple[int, str, Position]],
    bases: DistinctInputs,
) -> list[tuple[list[int], torch.Tensor]]:
    """Every ``(layer, component, position)`` site's activation on each distinct input of
    ``bases``, all in one forward per chunk of inputs (stopped once the deepest site is read):
    what a sweep's probes read.

    Returns the sites grouped by width, in order of their first site: each group's indices
    into ``sites`` and its ``(S, U, w)`` table, filled in place, so the probes of a group read
    it as it is (never stacked into a second copy). ``bases.row["base"]`` is each pair's row.
    """
    by_hook: dict[tuple[int, str], list[int]] = {}
    for i, (layer, component, _) in enumerate(sites):
        by_hook.setdefault((layer, component), []).append(i)
    found: dict[tuple[int, str], torch.Tensor] = {}
    groups: dict[int, tuple[list[int], torch.Tensor]] = {}
    slot: dict[int, tuple[int, int]] = {}  # site -> (width, its slice in the width's table)
    filled = 0

    def reader(key: tuple[int, str]):
        def read(module, args, kwargs, output):
            found[key] = as_3d(read_hooked(args, kwargs, output)).detach()
            if len(found) == len(by_hook):
                raise StopForward

        return read

    readers = []
    for key in by_hook:
        site = resolve_site(model, key[0], key[1], "pos")
        readers.append((site.module, site.hook, reader(key)))
    for chunk, row_positions in bases.chunks_with_positions():
        found.clear()
        run_until_read(model, chunk, readers)
        missing = sorted(set(by_hook) - set(found))
        if missing:
            raise RuntimeError(f"the forward pass never reached {missing}")
        if not groups:  # the first chunk gives every site's width: allocate the tables
            for i, (layer, component, _) in enumerate(sites):
                acts = found[(layer, component)]
                members = groups.setdefault(acts.shape[-1], ([], acts))[0]
                slot[i] = (acts.shape[-1], len(members))
                members.append(i)
            groups = {w: (members, torch.empty(len(members), bases.count, w, dtype=like.dtype))
                      for w, (members, like) in groups.items()}
        for key, members in by_hook.items():
            acts = found[key]  # (chunk, seq, w)
            index = site_index([sites[i][2] for i in members], acts.shape[1], len(acts), row_positions)
            picked = gather_sites(acts, index).cpu()  # (chunk, members, w)
            for j, i in enumerate(members):
                width, k = slot[i]
                groups[width][1][k, filled : filled + len(picked)] = picked[:, j]
        filled += len(next(iter(chunk.values())))
    return list(groups.values())


class RowBuffer:
    """Batches of rows gathered into one tensor, allocated at the first batch and filled in
    place, so a layer's cache never exists twice (pieces plus their concatenation)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.filled = 0
        self.out: torch.Tensor | None = None

    def add(self, piece: torch.Tensor) -> None:
        if self.out is None:
            self.out = piece.new_empty((self.rows, *piece.shape[1:]))
        if self.filled + len(piece) > self.rows:
            raise ValueError(f"more than the {self.rows} rows announced")
        self.out[self.filled : self.filled + len(piece)] = piece
        self.filled += len(piece)

    def result(self) -> torch.Tensor:
        if self.filled != self.rows:
            raise ValueError(f"{self.filled} rows gathered, {self.rows} announced")
        return self.out


__all__ = ["DistinctInputs", "LayerActivations", "RowBuffer", "batched_sites_supported", "block_modules", "collect_base_sites",
           "collect_layer", "gather_sites", "run_until_read", "site_index", "starts_after_block"]
