"""A pair file as ``datasets`` tables, whatever it is stored as: JSON lines, CSV, Parquet, a
``save_to_disk`` folder, a ``.pt`` file of pyvene-style tensors, or a Hub dataset id.

Each table comes back with the split its container names (a DatasetDict's ``validation``,
say), so a dataset published with splits keeps them. A content fingerprint goes with them:
cached pairs are reused only while the file is unchanged.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from das_train.data.pair_files.errors import PairFileError

SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class PairTables:
    """The tables of one pair file: ``{split or None: table}`` (None: the file has no splits)."""

    source: str
    tables: dict[str | None, Dataset]
    fingerprint: str


PACKAGE_PREFIX = "pkg://"


def read_tables(path: str) -> PairTables:
    """The tables at ``path`` (a file, a ``save_to_disk`` folder or a Hub dataset id)."""
    local = resolve_local(path)
    if local.is_dir():
        return PairTables(path, _split_tables(load_from_disk(str(local))), _folder_fingerprint(local))
    if local.is_file():
        return PairTables(path, {None: _read_file(local)}, _file_fingerprint(local))
    if local.suffix in (*SUFFIXES, ".pt") or path.count("/") != 1:
        raise PairFileError(path, [f"no such file or folder (from {Path.cwd()}); give task.path a .jsonl, "
                                   ".json, .csv, .parquet or .pt file, a save_to_disk folder or a Hub "
                                   "dataset id such as owner/name"])
    return _read_hub(path)


def resolve_local(path: str) -> Path:
    """``path`` as a local path: ``~`` expanded, and ``pkg://PACKAGE/FILE`` (Hydra's spelling)
    a file shipped inside an installed package, so a recipe's example data is found from any
    working directory, in a checkout or from a wheel."""
    if not path.startswith(PACKAGE_PREFIX):
        return Path(path).expanduser()
    package, _, inside = path[len(PACKAGE_PREFIX):].partition("/")
    try:
        return Path(str(importlib.resources.files(package).joinpath(inside)))
    except ModuleNotFoundError as err:
        raise PairFileError(path, [f"no installed package {package!r} to read {inside!r} from"]) from err


def _read_file(path: Path) -> Dataset:
    if path.suffix == ".pt":
        return _read_tensors(path)
    kind = SUFFIXES.get(path.suffix)
    if kind is None:
        raise PairFileError(str(path), [f"unknown file type {path.suffix!r}; allowed: {[*SUFFIXES, '.pt']}"])
    if path.stat().st_size == 0:
        raise PairFileError(str(path), ["the file is empty: no pairs to read"])
    try:
        return {"json": Dataset.from_json, "csv": Dataset.from_csv, "parquet": Dataset.from_parquet}[kind](
            str(path), keep_in_memory=True
        )
    except Exception as err:  # the readers raise many kinds; the user needs the file and the cause
        raise PairFileError(str(path), [f"cannot be read as {kind}: {err}"]) from err


def _read_tensors(path: Path) -> Dataset:
    """A ``.pt`` file of pyvene-style tensors: a dict of equal-length columns, loaded without
    running code (``weights_only``)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise PairFileError(str(path), [f"a .pt pair file must hold a dict of columns, found {type(data).__name__}"])
    columns = {k: v.tolist() if isinstance(v, torch.Tensor) else list(v) for k, v in data.items()}
    return Dataset.from_dict(columns)


def _split_tables(data: Dataset | DatasetDict) -> dict[str | None, Dataset]:
    if isinstance(data, DatasetDict):
        return dict(data.items())
    return {None: data}


def _read_hub(dataset_id: str) -> PairTables:
    offline = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
    if offline:
        raise PairFileError(dataset_id, [f"not a local file or folder, and the Hub is off ({offline[0]} is set): "
                                         "download the dataset where the Hub is reachable (save_to_disk) and "
                                         "give task.path that folder"])
    name, _, config = dataset_id.partition(":")  # owner/name:config picks one of a dataset's configs
    try:
        data = load_dataset(name, config or None)
    except Exception as err:  # network, missing repo, gated: all mean the pairs are unavailable
        raise PairFileError(dataset_id, [f"not a local file or folder, and loading it from the Hub failed: {err}"]) from err
    fingerprint = "|".join(f"{name}:{table._fingerprint}" for name, table in sorted(data.items()))
    return PairTables(dataset_id, _split_tables(data), f"hub:{dataset_id}:{fingerprint}")


def _file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and modification times of a saved dataset's files (its Arrow files can be
    large; a rewrite changes their times)."""
    stats = sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256(repr(stats).encode()).hexdigest()
