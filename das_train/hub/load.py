"""Loading published interventions from a local folder or a Hub repo, on any machine.

``huggingface_hub`` is imported when a download starts and looked up on the module at call
time, so tests can replace ``snapshot_download`` without touching the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from das_train.core.model import IntervenableModel
from das_train.core.paths import contained_path, require_relative
from das_train.core.serialization import CONFIG_NAME
from das_train.hub.card import CARD_NAME
from das_train.hub.errors import HubDownloadError, download_failure


def _download(repo_id: str, revision: str | None, subfolder: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise FileNotFoundError(f"{repo_id!r} is neither a local directory nor a Hub repo id ({err})") from err
    # A sweep's repo holds one folder per site and seed: fetch only the one asked for.
    allow = [f"{subfolder.strip('/')}/*", CARD_NAME] if subfolder else None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=allow))
    except Exception as err:  # classified below; the original stays as __cause__
        reason, why = download_failure(err, revision)
        raise HubDownloadError(f"{repo_id!r} is not a local directory and cannot be fetched from the Hugging Face Hub: {why}", reason, repo_id) from err


def from_pretrained(repo_or_dir: str | os.PathLike[str], model: nn.Module, revision: str | None = None,
                    subfolder: str | None = None) -> IntervenableModel:
    """Loads published interventions around ``model``, from a local folder or a Hub repo.

    A path that exists is read as is; anything else is a repo id fetched with
    ``snapshot_download`` (which uses the local cache, so a repo fetched once loads offline).
    Tensors are read onto the CPU and moved to the model's device, so a folder saved on a GPU
    loads on a CPU-only machine. ``subfolder`` picks one intervention of a published sweep
    (``interventions/<site>-s<seed>``).

    Raises:
        HubDownloadError: an ``OSError`` whose ``reason`` says offline, not found or unreachable.
        FileNotFoundError: the folder holds no saved interventions (the message lists those
            it does hold, for a sweep).
    """
    if subfolder is not None:
        require_relative(subfolder, "subfolder")  # before any download
    local = Path(repo_or_dir)
    if local.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {local} is a local directory")
        root = local
    else:
        root = _download(str(repo_or_dir), revision, subfolder)
    folder = contained_path(root, subfolder, "subfolder") if subfolder else root
    if not (folder / CONFIG_NAME).is_file():
        found = sorted(str(p.parent.relative_to(root)) for p in root.glob(f"**/{CONFIG_NAME}"))
        hint = f"; it holds saved interventions in: {found} (pass one as subfolder=...)" if found else ""
        raise FileNotFoundError(f"{repo_or_dir!s}{'/' + subfolder if subfolder else ''} holds no {CONFIG_NAME}{hint}")
    return IntervenableModel.load(str(folder), model)
