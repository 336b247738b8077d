"""What makes a run directory safe to resume: one config, one writer, only whole results.

A run directory accumulates results across restarts, so everything in it must belong to one
experiment. This module

- compares the result-affecting settings of the configs stored in it (``config.yaml``,
  ``config.shard-<i>.yaml``) with the new run's and refuses a different one before any work,
  unless ``resume=fresh`` sets the old contents aside (:func:`check_stored_configs`);
- stamps every result row with a short fingerprint of those settings, so a row of another
  config is never taken for a finished site (:func:`config_fingerprint`);
- lets one process at a time write a results file (:func:`hold_lock`), and at start removes
  the temporary files a killed writer left (:func:`das_train.core.files.remove_stale_temporaries`);
- counts a site as finished only when its row and its saved intervention are both there
  (:func:`finished_rows`), and refuses to merge shards while one's sites are missing
  (:func:`merge_problems`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from das_train.core.files import atomic_write_text, remove_stale_temporaries
from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME
from das_train.training import reports
from das_train.training.config_fingerprint import (
    config_fingerprint,
    result_settings,
    written_fingerprint,
)
from das_train.training.schema import ConfigError, RunConfig

log = logging.getLogger("das_train")

PLAN_NAME = "sweep_plan.json"


class RunDirLocked(RuntimeError):
    """Another live process is writing the same results file of this run directory."""


def stored_config_files(run_dir: Path) -> list[Path]:
    """The configs earlier runs stored in ``run_dir``: the unsharded one and every shard's."""
    return [path for path in [run_dir / "config.yaml", *sorted(run_dir.glob("config.shard-*.yaml"))]
            if path.is_file()]


def config_changes(stored: DictConfig | dict[str, Any], current: DictConfig | dict[str, Any]) -> list[str]:
    """``key: stored -> now`` for every result-affecting setting that differs."""
    old, new = result_settings(stored), result_settings(current)
    return [f"{key}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}"
            for key in sorted(set(old) | set(new)) if old.get(key, "(absent)") != new.get(key, "(absent)")]


def _load_stored(path: Path) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))  # read back as run() dumped it
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError([f"{path}: cannot be read as a stored config ({err}); move it away or use resume=fresh"]) from err
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: holds no config mapping; move it away or use resume=fresh"])
    return data


RESULT_PATTERNS = ("results*.csv", "table.csv", "table.md", "heatmaps.png", "validity_heatmaps.png", "outcomes",
                   "random_init", "boundless", "tracing.*", "steering.*",
                   "interventions", "checkpoints")
"""What a run leaves that a run of another config must not be mixed with (checkpoints too: a
cut-off fit resumes from them)."""


def holds_results(run_dir: Path) -> bool:
    return any(any(run_dir.glob(pattern)) for pattern in RESULT_PATTERNS)


def check_stored_configs(run_dir: Path, config: RunConfig, restamp: bool = False) -> None:
    """Refuses, before any work, a run whose results would differ from those stored in
    ``run_dir``: names every file and setting that differs, and how to go on. A stored config
    with no results beside it (its run was refused, or stopped before any) protects nothing.

    With ``restamp`` (the writer, holding the lock), the rows and the sweep plan of an equal
    config stamped with its fingerprint as written (:func:`written_fingerprint`, a run directory
    from before configs were completed with their defaults) take this config's, so they resume
    instead of being trained again."""
    if not holds_results(run_dir):
        return
    current = config.as_data()
    problems = []
    for path in stored_config_files(run_dir):
        stored = _load_stored(path)
        changes = config_changes(stored, current)
        if changes:
            problems.append(f"{path} was written by a run with other settings (stored -> now): "
                            + "; ".join(changes))
        elif restamp and written_fingerprint(stored) != config_fingerprint(current):
            _restamp(run_dir, path, written_fingerprint(stored), config_fingerprint(current))
    if problems:
        problems.append(f"resuming would mix results of two configs in {run_dir}. Give another run_dir=... "
                        "to keep both, or add resume=fresh to move the old contents aside into "
                        f"{run_dir}/previous-<time>/ and start anew")
        raise ConfigError(problems)


def _restamp(run_dir: Path, config_file: Path, old: str, new: str) -> None:
    name = config_file.name
    if name.startswith("config.shard-"):
        shard = name.removeprefix("config.shard-").removesuffix(".yaml")
        files = sorted(run_dir.glob(f"results.shard-{shard}-of-*.csv"))
    else:
        files = [run_dir / "results.csv"]
    for results in (path for path in files if path.is_file()):
        rows = reports.read_rows(results)
        stamped = [row for row in rows if row.get("config_fingerprint") == old]
        for row in stamped:
            row["config_fingerprint"] = new
        if stamped:
            reports.write_rows(results, rows)
            log.info("%s: %d rows of this config (stamped %s before defaults were filled in) now carry %s",
                     results, len(stamped), old, new)
    plan_file = run_dir / PLAN_NAME
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        if plan.get("config_fingerprint") == old:
            plan["config_fingerprint"] = new
            atomic_write_text(plan_file, json.dumps(plan, indent=1))


def stored_fingerprint(results_file: Path) -> str | None:
    """The fingerprint of the config stored beside a results file, for its rows written before
    rows carried one; ``None`` when that config is gone."""
    name = results_file.name
    if name.startswith("results.shard-"):
        config = results_file.with_name(f"config.shard-{name.split('-')[1]}.yaml")
    else:
        config = results_file.with_name("config.yaml")
    return config_fingerprint(_load_stored(config)) if config.is_file() else None


def lock_path(results_file: Path) -> Path:
    return results_file.with_name(results_file.name + ".lock")


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written who it is"


@contextlib.contextmanager
def hold_lock(results_file: Path) -> Iterator[None]:
    """Holds the exclusive lock of ``results_file`` (a ``.lock`` file beside it) for the block.

    One per results file, so the shards of a sweep run side by side. ``flock`` belongs to the
    open file, so the kernel releases it when the holder dies, however it dies: a lock file left
    on disk never blocks a later run. Raises :class:`RunDirLocked` at once, naming the holder.
    """
    path = lock_path(results_file)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirLocked(
                f"{results_file.parent} is in use: {results_file.name} is being written by {_holder(path)} "
                f"(lock {path}). Wait for it to finish, or give another run_dir=..."
            ) from None
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _busy_locks(run_dir: Path, own: Path) -> list[str]:
    """The other lock files of ``run_dir`` that a live process holds."""
    busy = []
    for path in sorted(run_dir.glob("*.lock")):
        if path == own:
            continue
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(f"{path.name} (held by {_holder(path)})")
        finally:
            os.close(fd)
    return busy


def set_aside(run_dir: Path, own_lock: Path, keep: Sequence[Path] = ()) -> Path | None:
    """``resume=fresh``: moves what ``run_dir`` holds into ``run_dir/previous-<time>/``, by
    renames (nothing is copied or deleted), so the run starts anew; returns that folder.

    Left in place: lock files, earlier ``previous-*`` folders, Hydra's files of this very run
    (``.hydra``, its log), and ``keep`` (a cache_dir inside run_dir, which is keyed by what it
    holds). Refused while another process writes to run_dir (another shard's lock is held).
    """
    busy = _busy_locks(run_dir, own_lock)
    if busy:
        raise RunDirLocked(f"resume=fresh cannot set {run_dir} aside while other processes write to it: "
                           + ", ".join(busy))
    stay = {Path(p).resolve() for p in keep}
    moving = [entry for entry in sorted(run_dir.iterdir())
              if not (entry.name.endswith(".lock") or entry.name.startswith("previous-") or entry.name == ".hydra"
                      or entry.suffix == ".log" or entry.resolve() in stay)]
    if not moving:
        return None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    previous = run_dir / f"previous-{stamp}"
    previous.mkdir()
    for entry in moving:
        os.rename(entry, previous / entry.name)
    log.warning("resume=fresh: moved the earlier contents of %s into %s", run_dir, previous)
    return previous


@contextlib.contextmanager
def prepared(config: RunConfig, run_dir: Path, results_file: Path, writer: bool) -> Iterator[None]:
    """The run directory made safe for this run, for the run's duration.

    The ``writer`` (global rank 0) takes the results file's lock, sets the old contents aside
    (``resume=fresh``) or refuses another config, and removes what killed writers left. Other
    ranks only check the config, as rank 0 does, so that all stop alike.
    """
    fresh = config.resume == "fresh"
    if not writer:
        if not fresh:
            check_stored_configs(run_dir, config)
        yield
        return
    with hold_lock(results_file):
        if fresh:
            set_aside(run_dir, lock_path(results_file), keep=[Path(config.cache_dir)])
        else:
            check_stored_configs(run_dir, config, restamp=True)
        remove_stale_temporaries(run_dir)
        yield


# -- finished sites ---------------------------------------------------------------------------------


def site_key(row: dict[str, Any]) -> tuple[int, str, int, int]:
    return row["layer"], row["component"], row["position"], row["seed"]


def intervention_folder(run_dir: Path, row: dict[str, Any]) -> Path:
    """Where the sweep saved the intervention of a result row (``<site.key>-s<seed>``)."""
    return run_dir / "interventions" / f"{row['component']}-L{row['layer']}-{row['position_name']}-s{row['seed']}"


def missing_artifact(run_dir: Path, row: dict[str, Any]) -> str | None:
    """Which file of a finished row's saved intervention is gone, if one is."""
    folder = intervention_folder(run_dir, row)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (folder / name).is_file():
            return str(folder / name)
    return None


def file_rows(results_file: Path, fingerprint: str) -> list[dict[str, Any]]:
    """A results file's valid rows (:func:`reports.read_rows`), each with its config's
    fingerprint: rows written before rows carried one take the config stored beside the file."""
    rows = reports.read_rows(results_file)
    legacy = [row for row in rows if "config_fingerprint" not in row]
    if legacy:
        stored = stored_fingerprint(results_file)
        if stored is None:
            log.warning("%s: %d rows carry no config fingerprint and the config beside them is gone; "
                        "they are not counted", results_file, len(legacy))
        for row in legacy:
            row["config_fingerprint"] = stored or reports.UNKNOWN_CONFIG
    others = sum(row["config_fingerprint"] != fingerprint for row in rows)
    if others:
        log.warning("%s: %d rows of another config are ignored (this config's fingerprint is %s)",
                    results_file, others, fingerprint)
    return rows


def results_files(run_dir: Path) -> list[Path]:
    return [run_dir / "results.csv", *sorted(run_dir.glob("results.shard-*-of-*.csv"))]


def finished_rows(run_dir: Path, fingerprint: str,
                  by_file: dict[Path, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """One row per finished (site, seed) of this config, from every results file of run_dir
    (or from ``by_file``, their rows read already by :func:`file_rows`).

    A site counts only with this config's fingerprint and with its saved intervention in place
    (a deleted one is redone, and the log says so).
    """
    by_file = by_file if by_file is not None else {p: file_rows(p, fingerprint) for p in results_files(run_dir)}
    finished: dict[tuple, dict[str, Any]] = {}
    for path, rows in by_file.items():
        for row in rows:
            if row["config_fingerprint"] != fingerprint:
                continue
            gone = missing_artifact(run_dir, row)
            if gone is not None:
                log.warning("%s-L%d-%s seed %d is run again: its row is in %s but %s is gone", row["component"],
                            row["layer"], row["position_name"], row["seed"], path.name, gone)
                continue
            finished[site_key(row)] = row
    return list(finished.values())


def resume_rows(run_dir: Path, results_file: Path, fingerprint: str) -> tuple[list[dict[str, Any]], set[tuple]]:
    """(the rows ``results_file`` keeps, the (site, seed) keys finished in any results file).

    The kept rows are the file's own, less this config's rows that are to be redone; rows of
    another config stay in the file, uncounted, rather than be deleted.
    """
    by_file = {path: file_rows(path, fingerprint) for path in results_files(run_dir)}
    by_file.setdefault(results_file, [])
    finished = finished_rows(run_dir, fingerprint, by_file)
    done = {site_key(row) for row in finished}
    kept = [row for row in by_file[results_file] if row["config_fingerprint"] != fingerprint or site_key(row) in done]
    return kept, done


# -- the plan of a sweep, for merging its shards --------------------------------------------------


def write_plan(run_dir: Path, fingerprint: str, jobs: Sequence[tuple[Any, int]]) -> None:
    """Records every (site, seed) of the sweep in its fixed order, so a merge can tell which are
    missing and which shard owns each (job ``k`` belongs to shard ``k % num_shards``)."""
    plan = {"config_fingerprint": fingerprint,
            "jobs": [{"layer": s.layer, "component": s.component, "position": s.table_position,
                      "position_name": s.position_name, "seed": seed} for s, seed in jobs]}
    atomic_write_text(run_dir / PLAN_NAME, json.dumps(plan, indent=1))


def _shard_counts(run_dir: Path) -> set[int]:
    counts = set()
    for path in run_dir.glob("config.shard-*.yaml"):
        counts.add(int(_load_stored(path).get("sweep", {}).get("num_shards", 1)))
    return counts


def merge_problems(run_dir: Path, fingerprint: str, rows: Sequence[dict[str, Any]]) -> list[str]:
    """What keeps ``sweep.merge`` from writing a whole table: every site of the plan with no
    row, and the shard that owns it. No plan (an older sweep) cannot be checked: logged."""
    path = run_dir / PLAN_NAME
    if not path.is_file():
        log.warning("%s has no %s (written by sweeps since das_train records it), so the merge cannot "
                    "check that every site is there", run_dir, PLAN_NAME)
        return []
    plan = json.loads(path.read_text())
    if plan["config_fingerprint"] != fingerprint:
        return [f"{path} is the plan of another config (fingerprint {plan['config_fingerprint']}, "
                f"this one {fingerprint})"]
    have = {site_key(row) for row in rows}
    counts = sorted(_shard_counts(run_dir)) or [1]
    problems = []
    for index, job in enumerate(plan["jobs"]):
        if site_key(job) in have:
            continue
        owners = " or ".join(f"shard {index % n} of {n} (results.shard-{index % n}-of-{n}.csv)" for n in counts)
        problems.append(f"{job['component']}-L{job['layer']}-{job['position_name']} seed {job['seed']}: "
                        f"no result; it belongs to {owners}")
    if problems:
        problems.append(f"{len(problems)} of {len(plan['jobs'])} site runs are missing, so no table was written: "
                        "run the shards named above again (they resume), then merge")
    return problems
