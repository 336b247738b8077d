"""Uploading a saved folder (or an intervenable, saved on the spot) to the Hugging Face Hub.

``huggingface_hub`` is imported when an upload starts and looked up on the module at call time,
so tests can replace ``HfApi`` without touching the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from das_train.core.model import IntervenableModel
from das_train.core.serialization import CONFIG_NAME
from das_train.hub.card import CARD_NAME, ModelCard
from das_train.hub.errors import HubPublishError, PublishFailure, publish_failure
from das_train.hub.save import save_staged, write_card

DEFAULT_COMMIT_MESSAGE = "Upload trained interventions with das_train"
# Temporary files (ours and the serializer's) start with a dot; they must never be uploaded.
HIDDEN_PATTERNS = [".*", "*/.*"]


def upload(directory: Path, repo_id: str, token: str | None, private: bool, commit_message: str,
            allow_patterns: list[str] | None, retry_hint: str) -> str:
    """create_repo + upload_folder, one commit; on failure a HubPublishError naming the files."""
    import huggingface_hub

    def failed(reason: PublishFailure, why: str) -> HubPublishError:
        return HubPublishError(
            f"could not publish to the Hugging Face Hub repo {repo_id!r}: {why}. Nothing was "
            f"committed; the files are kept in {directory} (publish them later with {retry_hint}).",
            reason, repo_id, directory,
        )

    # Without a token, the Hub would answer 401 after a round trip; say so before any request.
    if token is None and huggingface_hub.get_token() is None:
        reason, why = publish_failure(huggingface_hub.utils.LocalTokenNotFoundError("no token"))
        raise failed(reason, why)
    try:
        api = huggingface_hub.HfApi(token=token)  # token=None: huggingface_hub's own lookup (HF_TOKEN, login)
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), commit_message=commit_message,
            allow_patterns=allow_patterns, ignore_patterns=HIDDEN_PATTERNS,
        )
    except Exception as err:  # the reason is classified; the original stays as __cause__
        reason, why = publish_failure(err)
        raise failed(reason, why) from err
    # The commit URL pins the exact revision uploaded; the repo URL is the fallback.
    return str(getattr(commit, "commit_url", None) or repo_url)


def push_to_hub(intervenable_or_directory: IntervenableModel | str | os.PathLike[str], repo_id: str,
                card: ModelCard | None = None, token: str | None = None, private: bool = False,
                commit_message: str = DEFAULT_COMMIT_MESSAGE) -> str:
    """Uploads trained interventions to ``repo_id`` (created if missing); returns the commit URL.

    Given an intervenable, it is saved with its card to a fresh temporary folder first, removed
    after a successful upload and kept (and named in the error) after a failed one. Given a
    folder written by :func:`save_pretrained` or ``IntervenableModel.save``, the folder is
    uploaded; a ``card``, or a folder without a README, gets a card written into it first.
    ``token`` defaults to huggingface_hub's own lookup (``HF_TOKEN``, then ``hf auth login``).

    Raises:
        HubPublishError: an ``OSError`` whose ``reason`` is ``"no token"``, ``"offline"``,
            ``"not authorized"`` or ``"other"`` and whose ``local_directory`` holds the files.
    """
    if isinstance(intervenable_or_directory, nn.Module):
        parent = Path(tempfile.mkdtemp(prefix="das_train-push-"))
        try:
            directory = save_staged(intervenable_or_directory, parent / repo_id.replace("/", "--"), card, repo_id)
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)  # nothing was saved, so nothing to keep
            raise
        url = upload(directory, repo_id, token, private, commit_message, None,
                      f"das_train.hub.push_to_hub({str(directory)!r}, {repo_id!r})")
        shutil.rmtree(parent, ignore_errors=True)
        return url
    directory = Path(intervenable_or_directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no {CONFIG_NAME}; save the interventions there first "
                                "(das_train.hub.save_pretrained or IntervenableModel.save)")
    if card is not None or not (directory / CARD_NAME).exists():
        write_card(directory, card or ModelCard.from_saved(directory), repo_id)
    return upload(directory, repo_id, token, private, commit_message, None,
                   f"das_train.hub.push_to_hub({str(directory)!r}, {repo_id!r})")
