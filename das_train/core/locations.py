"""Turns the location and subspace forms users write into one canonical form, or says why not.

Accepted ``unit_locations`` (as in the seeds):

- ``{"sources->base": 3}``: position 3 in every source and in the base, for every intervention;
- ``{"base": 3}`` / ``{"base": [0, 1, 2, 3]}``: base positions only (constant or no source);
- ``{"sources->base": (6, 3)}``: a *tuple* is ``(source side, base side)``;
- a list of ints is several units; a list of lists is one list per example;
- ``([[[p]]] * n, [[[q]]] * n)``: one entry per intervention, ``None`` for those that take
  no source, each ``[batch][units]``;
- serial mode: ``{"source_0->source_1": 1, "source_1->base": 4}``, one key per step;
- unit ``h.pos``: each side is a pair ``(heads, positions)``, a tuple, or a two-element list
  ``[heads, positions]`` of ``[batch][units]`` lists as pyvene writes it
  (``([[[[1]] * b, [[4]] * b]], ...)``); three levels of nesting tell that list apart from a
  ``[batch][units]`` list, which has two.

Every list form becomes a ``(batch, units)`` LongTensor per intervention; a single example's
list is broadcast over the batch. Negative indices count from the end, as in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class LocationError(ValueError, IndexError):
    """A location or subspace that cannot be used; the message lists every problem found.

    Also an ``IndexError``: pyvene raises that for a location list shorter than the
    interventions it addresses, and pyvene programs (its own tests among them) catch it.
    """


@dataclass
class Location:
    """Where an intervention acts on one input: ``None`` fields mean every unit."""

    units: torch.Tensor | None  # (batch, units): positions, heads or time steps
    heads: torch.Tensor | None = None  # (batch, heads) for unit "h.pos"; units are positions


def _depth(value: Any) -> int:
    if isinstance(value, (list, tuple)):
        for item in value:
            if item is not None:
                return 1 + _depth(item)
        return 1
    return 0


def _has_top_level_none(value: Any) -> bool:
    return isinstance(value, list) and any(v is None for v in value)


def _per_intervention(spec: Any, count: int, units: list[str], what: str, errors: list[str]) -> list[Any]:
    """Splits one side's spec into one entry per intervention."""
    if spec is None:
        return [None] * count
    if isinstance(spec, torch.Tensor):
        spec = spec.tolist()
    if isinstance(spec, tuple) and all(u == "h.pos" for u in units):
        heads = _per_intervention(spec[0], count, ["h"] * count, what, errors)
        pos = _per_intervention(spec[1], count, ["pos"] * count, what, errors)
        return [None if h is None and p is None else (h, p) for h, p in zip(heads, pos)]
    if isinstance(spec, int) or _depth(spec) in (1, 2) and not _has_top_level_none(spec):
        return [spec] * count
    if isinstance(spec, (list, tuple)) and (_depth(spec) >= 3 or _has_top_level_none(spec)):
        if len(spec) != count:
            errors.append(
                f"{what}: a per-intervention location list has {len(spec)} entries for "
                f"{count} interventions"
            )
            return [None] * count
        return list(spec)
    errors.append(f"{what}: cannot read location {spec!r}")
    return [None] * count


def _to_tensor(spec: Any, batch_size: int, what: str, errors: list[str]) -> torch.Tensor | None:
    """int | [units] | [batch][units] -> (batch, units)."""
    if spec is None:
        return None
    if isinstance(spec, int):
        rows = [[spec]] * batch_size
    elif _depth(spec) == 1:
        rows = [list(spec)] * batch_size
    elif _depth(spec) == 2:
        rows = [list(r) for r in spec]
        if len(rows) == 1 and batch_size > 1:
            rows = rows * batch_size
    else:
        errors.append(f"{what}: expected an int, [units] or [batch][units], got {spec!r}")
        return None
    if len(rows) != batch_size:
        errors.append(f"{what}: {len(rows)} per-example lists for a batch of {batch_size}")
        return None
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        errors.append(
            f"{what}: every example needs the same, non-zero number of units; got lengths "
            f"{[len(r) for r in rows]}"
        )
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) for r in rows for x in r):
        errors.append(f"{what}: locations must be ints, got {rows!r}")
        return None
    return torch.tensor(rows, dtype=torch.long)


def _head_position_pair(entry: Any) -> tuple[Any, Any] | None:
    """``(heads, positions)`` from a tuple, or from pyvene's list ``[heads, positions]``."""
    if isinstance(entry, tuple) and len(entry) == 2:
        return entry
    if isinstance(entry, list) and len(entry) == 2 and _depth(entry) == 3:
        return entry[0], entry[1]
    return None


def _to_location(entry: Any, unit: str, batch_size: int, what: str, errors: list[str]) -> Location | None:
    if entry is None:
        return None
    if unit == "h.pos":
        pair = _head_position_pair(entry)
        if pair is None:
            errors.append(
                f"{what}: unit 'h.pos' needs a (heads, positions) tuple, or a list "
                f"[heads, positions] of [batch][units] lists; got {entry!r}"
            )
            return None
        heads = _to_tensor(pair[0], batch_size, f"{what} heads", errors)
        positions = _to_tensor(pair[1], batch_size, f"{what} positions", errors)
        return Location(units=positions, heads=heads)
    return Location(units=_to_tensor(entry, batch_size, what, errors))


def _split_pair(key: str, value: Any) -> tuple[Any, Any]:
    """A key's value as (source side, base side)."""
    if key.endswith("base") and "->" not in key:
        return None, value
    if isinstance(value, tuple) and len(value) == 2:
        return value
    return value, value


def _clean(key: str) -> str:
    return "".join(key.split())


def parse_unit_locations(
    unit_locations: dict[str, Any] | None,
    mode: str,
    units: list[str],
    groups: list[int],
    n_groups: int,
    batch_size: int,
    errors: list[str],
) -> tuple[list[Location | None], list[Location | None]]:
    """Returns (source locations, base locations), one entry per intervention.

    ``groups[i]`` is the source group of intervention ``i``; in serial mode the key
    ``source_g->...`` applies to the interventions of group ``g``.
    """
    count = len(units)
    sources: list[Location | None] = [None] * count
    bases: list[Location | None] = [None] * count
    if unit_locations is None:
        return sources, bases
    if not isinstance(unit_locations, dict):
        errors.append(
            f"unit_locations must be a dict such as {{'sources->base': 3}}, got "
            f"{type(unit_locations).__name__}"
        )
        return sources, bases
    for raw_key, value in unit_locations.items():
        key = _clean(str(raw_key))
        if mode == "parallel" or n_groups == 1 and key in ("sources->base", "base"):
            if key not in ("sources->base", "base"):
                errors.append(
                    f"unit_locations key {raw_key!r} is not allowed in {mode} mode; "
                    "allowed: 'sources->base', 'base'"
                )
                continue
            members = list(range(count))
        else:
            expected = {
                (f"source_{g}->source_{g + 1}" if g + 1 < n_groups else f"source_{g}->base"): g
                for g in range(n_groups)
            }
            if key not in expected:
                errors.append(
                    f"unit_locations key {raw_key!r} is not allowed in serial mode with "
                    f"{n_groups} source groups; allowed: {sorted(expected)}"
                )
                continue
            members = [i for i in range(count) if groups[i] == expected[key]]
        src_spec, base_spec = _split_pair(key, value)
        member_units = [units[i] for i in members]
        src_entries = _per_intervention(src_spec, len(members), member_units, f"{raw_key} (source)", errors)
        base_entries = _per_intervention(base_spec, len(members), member_units, f"{raw_key} (base)", errors)
        for j, i in enumerate(members):
            what = f"unit_locations[{raw_key!r}] intervention {i}"
            sources[i] = _to_location(src_entries[j], units[i], batch_size, what + " source", errors)
            bases[i] = _to_location(base_entries[j], units[i], batch_size, what + " base", errors)
    return sources, bases


def resolve_negative(loc: Location | None, sizes: dict[str, int | None], what: str, errors: list[str]) -> Location | None:
    """Checks ranges and turns negative indices into positive ones.

    ``sizes`` holds the length along the unit axis (``"units"``) and the head count
    (``"heads"``) when known; unknown sizes are checked inside the hook instead.
    """
    if loc is None:
        return None

    def fix(t: torch.Tensor | None, size: int | None, name: str) -> torch.Tensor | None:
        if t is None or size is None:
            return t
        bad = (t < -size) | (t >= size)
        if bool(bad.any()):
            errors.append(
                f"{what}: {name} {sorted(set(t[bad].tolist()))} out of range; allowed "
                f"0..{size - 1} (or -{size}..-1)"
            )
            return t
        return torch.where(t < 0, t + size, t)

    unit_name = "positions" if loc.heads is not None else sizes.get("unit_name", "units")
    return Location(
        units=fix(loc.units, sizes.get("units"), unit_name),
        heads=fix(loc.heads, sizes.get("heads"), "heads"),
    )


def split_subspaces(
    subspaces: Any, count: int, batch_size: int, errors: list[str]
) -> list[Any]:
    """One subspace spec per intervention: ``None``, or ``[batch][indices]``."""
    if subspaces is None:
        return [None] * count
    if isinstance(subspaces, torch.Tensor):
        subspaces = subspaces.tolist()
    if isinstance(subspaces, int):
        entries = [[[subspaces]] * batch_size] * count
    elif _depth(subspaces) == 1 and not _has_top_level_none(subspaces):
        entries = [[list(subspaces)] * batch_size] * count
    elif _depth(subspaces) == 2 and not _has_top_level_none(subspaces):
        entries = [subspaces] * count
    elif _depth(subspaces) == 3 or _has_top_level_none(subspaces):
        if len(subspaces) != count:
            errors.append(
                f"subspaces: a per-intervention list has {len(subspaces)} entries for "
                f"{count} interventions"
            )
            return [None] * count
        entries = list(subspaces)
    else:
        errors.append(f"subspaces: cannot read {subspaces!r}")
        return [None] * count
    out = []
    for i, entry in enumerate(entries):
        if entry is None:
            out.append(None)
            continue
        if isinstance(entry, int):
            entry = [[entry]]
        elif _depth(entry) == 1:
            entry = [list(entry)]
        rows = [list(r) for r in entry]
        if len(rows) == 1 and batch_size > 1:
            rows = rows * batch_size
        if len(rows) != batch_size:
            errors.append(f"subspaces of intervention {i}: {len(rows)} lists for a batch of {batch_size}")
            out.append(None)
            continue
        out.append(rows)
    return out
