"""Uploading a finished sweep to the Hugging Face Hub when ``publish.repo_id`` asks for it.

The upload itself is :func:`das_train.hub.publish_run`, looked up on the module at call time
(so tests can replace it); this module only decides whether and from which process.
"""

from __future__ import annotations

from pathlib import Path

from das_train import hub
from das_train.training.ranks import is_global_zero
from das_train.training.schema import PublishConfig


def publish(settings: PublishConfig, run_dir: Path) -> None:
    """Uploads the finished sweep when ``publish.repo_id`` is set (token from HF_TOKEN).

    A failed upload raises with the reason and where the local files are; the results are on
    disk already, so nothing is lost.
    """
    if not settings.repo_id or not is_global_zero():
        return
    url = hub.publish_run(run_dir, settings.repo_id, private=settings.private)
    print(f"published {run_dir} to {url}", flush=True)


__all__ = ["publish"]
