"""Publishing a finished sweep's run directory as one repo, with a card built from its results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from das_train.core.files import atomic_write_text
from das_train.core.serialization import CONFIG_NAME
from das_train.hub.card import CARD_NAME, HEATMAP_NAME, VALIDITY_HEATMAP_NAME, ModelCard
from das_train.hub.push import DEFAULT_COMMIT_MESSAGE, upload

RUN_INFO_NAME = "run_info.json"
"""Optional file of a run directory: ``{"das_train_version": ..., "dataset": {"task": ...,
"seed": ..., "fingerprint": ..., "kept": {...}, "dropped": {...}}}``, read into the card."""
RUN_FILES = ("config.yaml", "table.md", "table.csv", "results.csv", HEATMAP_NAME, VALIDITY_HEATMAP_NAME, RUN_INFO_NAME)
"""What :func:`publish_run` uploads from a run directory, besides the card and interventions/."""


def run_card(run_dir: str | os.PathLike[str]) -> ModelCard:
    """The card of a finished sweep, built from its ``config.yaml``, ``table.md`` and
    ``run_info.json`` (when the run wrote one)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    table_path = run_dir / "table.md"
    missing = [p.name for p in (config_path, table_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} has no {' or '.join(missing)}: is it a finished sweep's run "
                                "directory? (running the recipe again resumes a cut-off sweep)")
    config_yaml = config_path.read_text()
    config = yaml.safe_load(config_yaml) or {}
    subfolders = sorted(f"interventions/{p.parent.name}" for p in run_dir.glob(f"interventions/*/{CONFIG_NAME}"))
    if not subfolders:
        raise FileNotFoundError(f"{run_dir / 'interventions'} holds no saved interventions")
    info_path = run_dir / RUN_INFO_NAME
    run_info = json.loads(info_path.read_text()) if info_path.is_file() else None
    heatmap = run_dir / HEATMAP_NAME
    card = ModelCard.from_run(config, table_path.read_text(), heatmap if heatmap.is_file() else None,
                              subfolders, run_info, config_yaml)
    validity = run_dir / VALIDITY_HEATMAP_NAME
    card.validity_heatmap = validity if validity.is_file() else None
    return card


def publish_run(run_dir: str | os.PathLike[str], repo_id: str, token: str | None = None,
                private: bool = False, commit_message: str = DEFAULT_COMMIT_MESSAGE) -> str:
    """Publishes a finished sweep as one repo; returns the commit URL.

    Uploads every ``interventions/<site>-s<seed>/`` folder, ``config.yaml``, ``table.md``,
    ``table.csv``, ``results.csv``, ``heatmaps.png`` and ``run_info.json`` (those present), and
    a ``README.md`` card built from them, which is also written into ``run_dir``. Checkpoints,
    logs and temporary files stay local. Files are uploaded from ``run_dir`` in place (a
    sweep's interventions may be large), so a failed upload leaves them there.

    Raises:
        HubPublishError: as :func:`push_to_hub`.
        FileNotFoundError: ``run_dir`` is not a finished sweep (no config.yaml, table.md or
            saved interventions).
    """
    run_dir = Path(run_dir)
    card = run_card(run_dir)
    atomic_write_text(run_dir / CARD_NAME, card.render(repo_id))
    allow = [CARD_NAME, *RUN_FILES, "interventions/*"]
    return upload(run_dir, repo_id, token, private, commit_message, allow,
                   f"das_train.hub.publish_run({str(run_dir)!r}, {repo_id!r})")
