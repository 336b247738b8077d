"""Why publishing or fetching failed, in words a user can act on.

Publishing fails often for reasons outside the code (no token, offline, no write access), and a
failure must never lose a trained intervention: every error here is an ``OSError`` subclass
that says which of these it was (and, for an upload, where the local files are kept).
huggingface_hub's exception types are imported when a failure is classified, so the hub layer
loads without it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Literal

from das_train.core.loaders import HubUnavailableError

PublishFailure = Literal["no token", "offline", "not authorized", "other"]
DownloadFailure = Literal["offline", "not found", "unreachable", "other"]


class HubPublishError(OSError):
    """An upload failed; ``reason`` says why and ``local_directory`` holds the files, unchanged.

    An ``OSError`` (as huggingface_hub's own token and connection errors are), so code that
    already catches ``OSError`` around I/O keeps working.
    """

    def __init__(self, message: str, reason: PublishFailure, repo_id: str, local_directory: Path) -> None:
        super().__init__(message)
        self.reason: PublishFailure = reason
        self.repo_id = repo_id
        self.local_directory = local_directory


class HubDownloadError(HubUnavailableError):
    """A repo could not be fetched; ``reason`` says why (offline and not cached, not found, ...)."""

    def __init__(self, message: str, reason: DownloadFailure, repo_id: str) -> None:
        super().__init__(message)
        self.reason: DownloadFailure = reason
        self.repo_id = repo_id


def _offline_mode() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or flag


def _causes(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_connection_error(err: BaseException) -> bool:
    """Whether the Hub was out of reach, whichever HTTP client huggingface_hub uses."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module, name in (("httpx", "TransportError"), ("requests.exceptions", "ConnectionError"),
                         ("requests.exceptions", "Timeout")):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return any(isinstance(e, tuple(kinds)) for e in _causes(err))


def _http_status(err: BaseException) -> int | None:
    from huggingface_hub.utils import HfHubHTTPError

    for e in _causes(err):
        if isinstance(e, HfHubHTTPError) and getattr(e, "response", None) is not None:
            return int(e.response.status_code)
    return None


def publish_failure(err: BaseException) -> tuple[PublishFailure, str]:
    from huggingface_hub.utils import LocalTokenNotFoundError, OfflineModeIsEnabled

    if any(isinstance(e, LocalTokenNotFoundError) for e in _causes(err)):
        return "no token", ("no Hugging Face token was found: pass token=..., set the HF_TOKEN "
                            "environment variable, or run `hf auth login`")
    if any(isinstance(e, OfflineModeIsEnabled) for e in _causes(err)):
        return "offline", "offline mode is on (HF_HUB_OFFLINE is set); unset it on a machine with a network"
    status = _http_status(err)
    if status in (401, 403):
        return "not authorized", (f"the Hub refused the token (HTTP {status}): it is invalid, read-only, "
                                  "or has no write access to the repo's namespace")
    if _is_connection_error(err):
        return "offline", f"the Hub cannot be reached ({type(err).__name__}: {err})"
    return "other", f"{type(err).__name__}: {err}"


def download_failure(err: BaseException, revision: str | None) -> tuple[DownloadFailure, str]:
    from huggingface_hub.utils import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = _causes(err)
    if any(isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for e in chain) and _offline_mode():
        return "offline", ("HF_HUB_OFFLINE is set and the repo is not in the local cache; unset it on a "
                           "machine with a network, or pass a local directory")
    if any(isinstance(e, GatedRepoError) for e in chain):
        return "not found", "the repo is gated: accept its terms on the Hub and pass a token"
    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return "not found", f"the repo has no revision {revision!r}"
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return "not found", "no such repo, or it is private and the token (if any) cannot read it"
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain) or _is_connection_error(err):
        return "unreachable", f"the Hub cannot be reached and the repo is not cached ({type(err).__name__})"
    return "other", f"{type(err).__name__}: {err}"
