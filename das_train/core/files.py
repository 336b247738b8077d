"""Writing files so that a failure never leaves a half-written one where a reader looks.

Every file or folder is first written under a hidden temporary name beside its target, then
renamed into place. The temporary name carries the writer's pid and host
(``.<name>.w<pid>-<host>.<random>.tmp``), so that a later run can tell the leftovers of a
killed writer (:func:`remove_stale_temporaries`) from the files of a live one. ``mkstemp`` and
``mkdtemp`` create 0600 files and 0700 folders; what we rename into place gets the mode an
ordinary ``open`` or ``mkdir`` would have given it under the process's umask.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("das_train")

TEMPORARY = re.compile(r"^\.(?P<name>.+)\.w(?P<pid>\d+)-(?P<host>[A-Za-z0-9_-]*)\.[A-Za-z0-9_]+\.tmp$")
"""A temporary name of ours: the target's name, the writer's pid and host, mkstemp's random part."""
UNTAGGED_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|png)$")
"""A temporary name written before names carried the writer (``.<name>.<random>.tmp``, and the
heatmaps' ``.heatmaps.<random>.png``)."""


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def _temporary_prefix(name: str) -> str:
    return f".{name}.w{os.getpid()}-{_host()}."


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_file(directory: Path, name: str) -> Path:
    """A new empty file beside ``directory / name`` for writing it atomically."""
    fd, path = tempfile.mkstemp(dir=directory, prefix=_temporary_prefix(name), suffix=".tmp")
    os.close(fd)
    return Path(path)


def remove_dead_siblings(directory: Path, name: str) -> None:
    """Removes the temporaries of ``directory / name`` whose writer on this host has died.

    Caches (the tiny model, the pairs) live outside any locked run directory and are shared by
    runs, so they are cleaned here, one target at a time, by the next writer of the same target;
    a tagged name says whose it is, so a live writer's folder is never touched."""
    prefix = f".{name}.w"
    for path in Path(directory).glob(f"{prefix}*.tmp"):
        if TEMPORARY.match(path.name) and is_stale_temporary(path, older_than=0.0):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            log.info("removed %s, left by a killed writer", path)


def temporary_folder(directory: Path, name: str) -> Path:
    """A new empty folder beside ``directory / name``, for building it before a rename; with
    the mode ``mkdir`` gives under the umask. Killed writers' folders for the same target go
    first (:func:`remove_dead_siblings`)."""
    remove_dead_siblings(directory, name)
    path = Path(tempfile.mkdtemp(dir=directory, prefix=_temporary_prefix(name), suffix=".tmp"))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Calls ``write(temporary_path)`` beside ``path``, then renames the result into place, with
    the mode ``open`` gives a new file under the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_file(path.parent, path.name)
    try:
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _writer_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def is_stale_temporary(path: Path, older_than: float) -> bool:
    """Whether ``path`` is a temporary file or folder no live process is writing: one of ours
    whose writer on this host has died, or an untagged one older than ``older_than`` (a time).
    A writer on another host (a shared file system) cannot be asked, so its files are left."""
    tagged = TEMPORARY.match(path.name)
    if tagged:
        return tagged["host"] == _host() and not _writer_is_alive(int(tagged["pid"]))
    return bool(UNTAGGED_TEMPORARY.match(path.name)) and path.lstat().st_mtime < older_than


def remove_stale_temporaries(root: Path, older_than: float | None = None) -> list[Path]:
    """Removes, under ``root``, the temporary files and folders a killed writer left behind
    (:func:`is_stale_temporary`); returns them. Call it while holding the run directory's lock."""
    older_than = time.time() if older_than is None else older_than
    removed = []
    for folder, subfolders, files in os.walk(root):
        for name in [*files, *subfolders]:
            path = Path(folder) / name
            if not is_stale_temporary(path, older_than):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
        # Other hidden folders (.hydra, a .git or .venv under a run_dir=.) are not ours to clean.
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
    if removed:
        log.info("removed %d temporary files left by killed writers under %s: %s", len(removed), root,
                 ", ".join(str(p.relative_to(root)) for p in removed))
    return removed
