"""Named points where the fault-injection tests stop a run, as a crash or a Ctrl-C would.

A run survives being killed anywhere only if that is tried at the places where it matters:
while pairs are generated, while a fit is half done, between two groups' rows, in the middle
of writing the table or saving an intervention. Each such place calls :func:`fault_point` with
its name. Nothing happens unless ``DAS_TRAIN_FAULT`` names that point
(``DAS_TRAIN_FAULT=fit_step:SIGKILL``); then the process sends itself the signal there, once.
The variable is read per call, so a test sets it for one subprocess only; the cost when unset
is one dictionary lookup per point, and no point sits on a per-token or per-batch hot path
except the fit's step callback, which is installed only when the variable names it.
"""

from __future__ import annotations

import os
import signal

FAULT_VARIABLE = "DAS_TRAIN_FAULT"
"""``<point>:<signal name>``, e.g. ``probes:SIGINT``; unset in normal use."""

POINTS = ("model", "pairs", "probes", "fit_step", "between_groups", "save_intervention", "write_table",
          "write_heatmaps")
"""Every point a run passes, in the order of a sweep (tests iterate over them)."""

_fired: set[str] = set()


def requested_fault() -> tuple[str, signal.Signals] | None:
    """The (point, signal) that ``DAS_TRAIN_FAULT`` asks for, or ``None``."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return None
    point, _, name = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"{FAULT_VARIABLE}={spec!r}: unknown point {point!r}; points: {list(POINTS)}")
    try:
        return point, signal.Signals[name or "SIGKILL"]
    except KeyError:
        raise ValueError(f"{FAULT_VARIABLE}={spec!r}: unknown signal {name!r}") from None


def fault_point(point: str) -> None:
    """Sends this process the requested signal when ``DAS_TRAIN_FAULT`` names ``point`` (the
    first time only, so a handled SIGINT does not fire again on the way out)."""
    request = requested_fault()
    if request is None or request[0] != point or point in _fired:
        return
    _fired.add(point)
    os.kill(os.getpid(), request[1])
