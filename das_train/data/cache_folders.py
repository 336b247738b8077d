"""Folders of cached pairs and models written whole or not at all.

Pairs and tiny models are cached on disk and found again by name, so a run cut off while
writing one must not leave a half-written folder where the next run would load it, and two
runs racing to write the same cache must both end with one complete copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from das_train.core.fault_points import fault_point
from das_train.core.files import temporary_folder


def write_folder_atomically(target: Path, write: Callable[[Path], None], fault: str) -> bool:
    """Calls ``write(folder)`` on a temporary sibling of ``target``, then renames it into place.

    Args:
        target: the folder to create.
        write: fills the folder it is given.
        fault: the name of the fault point between writing and renaming (tests cut runs there).

    Returns True when this call's folder landed; False when a concurrent writer's did first.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_folder(target.parent, target.name)
    try:
        write(staging)
        fault_point(fault)
        os.rename(staging, target)
        return True
    except OSError:
        if not target.is_dir():  # a concurrent run that won the rename is fine; anything else is not
            raise
        return False
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
