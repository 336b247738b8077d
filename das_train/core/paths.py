"""Paths inside artifacts that strangers publish: a name read from one must not reach outside it.

A saved intervention's ``config.json`` names the files to read next (weights, a subfolder);
these checks refuse separators, ``..``, absolute paths and symlinks that lead out of the
artifact's folder, before anything is opened or downloaded.
"""

from __future__ import annotations

from pathlib import Path


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can be a single file or folder name: no separators, not ``.``/``..``."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and "\0" not in name


def require_relative(relative: str | Path, what: str) -> Path:
    """``relative`` as a path that cannot climb out of a folder: not absolute, no ``..``."""
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{what} {str(relative)!r} leaves its folder: absolute paths and '..' are not allowed")
    return path


def contained_path(root: Path, relative: str | Path, what: str) -> Path:
    """``root / relative``, refused unless it stays inside ``root`` once symlinks are resolved."""
    relative = require_relative(relative, what)
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{what} {str(relative)!r} resolves to {path.resolve()}, outside {root} (a symlink out)")
    return path
