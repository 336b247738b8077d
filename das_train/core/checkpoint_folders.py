"""Local ``save_pretrained`` folders given where a Hub id is expected.

A name that looks like a path must never reach the Hub: a typo in a folder name would
otherwise be sent to the network as a repository id and come back, a minute later, as a
"repository not found". So the path is recognised first, checked on disk (all missing parts
named at once), and identified by what it holds, because a folder has no revision: the same
path may hold other weights tomorrow.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""One of these marks a folder with weights (the index files name the shards of a big model)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""One of these marks a folder with a tokenizer (fast, SentencePiece, BPE or WordPiece)."""
LOCAL_PREFIXES = ("/", "./", "../", "~")


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a path on this machine rather than a Hub id: it starts like
    a path or it exists. (A Hub id is ``owner/name`` or ``name``, never with a leading ``/``.)"""
    return (
        name.startswith(LOCAL_PREFIXES) or name in (".", "..") or Path(name).expanduser().exists()
    )


def folder_path(name: str) -> Path:
    """The absolute folder ``name`` points to (``~`` expanded)."""
    return Path(name).expanduser().resolve()


def checkpoint_folder_problems(name: str) -> list[str]:
    """Everything that keeps the folder ``name`` from loading as a causal LM with its tokenizer;
    empty when it can be tried. Only the file names are read."""
    folder = folder_path(name)
    if not folder.exists():
        return [
            f"{name!r} looks like a local path, but {folder} does not exist (a Hub id is "
            "'owner/name', with no leading /, ./ or ~)"
        ]
    if not folder.is_dir():
        return [
            f"{folder} is a file; a checkpoint is the folder model.save_pretrained(folder) writes"
        ]
    present = {p.name for p in folder.iterdir()}
    problems = []
    if CONFIG_FILE not in present:
        problems.append(
            f"{folder} has no {CONFIG_FILE} (the model's config): save the model with "
            "model.save_pretrained(folder)"
        )
    if not present.intersection(WEIGHT_FILES):
        problems.append(
            f"{folder} has no weights (one of {', '.join(WEIGHT_FILES)}): save the model "
            "with model.save_pretrained(folder)"
        )
    if not present.intersection(TOKENIZER_FILES):
        problems.append(
            f"{folder} has no tokenizer (one of {', '.join(TOKENIZER_FILES)}): save it "
            "into the same folder with tokenizer.save_pretrained(folder)"
        )
    return problems


def checkpoint_identity(name: str) -> dict:
    """What names the model a folder holds: its path, the sizes of its config and weight files,
    and a fingerprint of those names and sizes and of the config's text. The weights are not
    read (they may be many gigabytes), so the fingerprint tells apart another architecture,
    shape, dtype or config, but not another training of the same shape."""
    folder = folder_path(name)
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.name == CONFIG_FILE
        or p.name in WEIGHT_FILES
        or p.name.endswith(".safetensors")
        or p.name.endswith(".bin")
    )
    sizes = {n: (folder / n).stat().st_size for n in names}
    digest = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode())
    config = folder / CONFIG_FILE
    if config.is_file():
        digest.update(config.read_bytes())
    return {"folder": str(folder), "files": sizes, "fingerprint": digest.hexdigest()[:12]}


__all__ = ["checkpoint_folder_problems", "checkpoint_identity", "folder_path", "looks_local"]
