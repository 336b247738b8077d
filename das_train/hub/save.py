"""Saving interventions with their card into a folder that appears whole or not at all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from das_train.core.files import atomic_write, atomic_write_text, temporary_folder
from das_train.core.model import IntervenableModel
from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME, save_intervenable
from das_train.hub.card import CARD_NAME, HEATMAP_NAME, VALIDITY_HEATMAP_NAME, ModelCard


def _atomic_copy(source: Path, path: Path) -> None:
    if source.resolve() == path.resolve():
        return
    atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def write_card(directory: Path, card: ModelCard, repo_id: str | None) -> None:
    """README.md (and the card's images: heatmaps.png, validity_heatmaps.png), each written atomically."""
    for image, name in ((card.heatmap, HEATMAP_NAME), (card.validity_heatmap, VALIDITY_HEATMAP_NAME)):
        if image is not None:
            if not Path(image).is_file():
                raise FileNotFoundError(f"the card's heatmap {image} does not exist")
            _atomic_copy(Path(image), directory / name)
    atomic_write_text(directory / CARD_NAME, card.render(repo_id))


def save_staged(intervenable: IntervenableModel, save_directory: Path, card: ModelCard | None,
          repo_id: str | None) -> Path:
    card = (card or ModelCard()).completed_from(intervenable)
    directory = Path(save_directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written next to the target first, so a failure (an unsaveable function
    # intervention, a missing image, a full disk) leaves the target as it was.
    staging = temporary_folder(directory.parent, directory.name)
    try:
        save_intervenable(intervenable, str(staging))
        write_card(staging, card, repo_id)
        if not directory.exists():
            os.rename(staging, directory)  # atomic: the folder appears whole or not at all
        else:
            # An existing folder may hold files of the user's: replace ours one by one, each
            # atomically, the weights before the config that describes them.
            order = [WEIGHTS_NAME, HEATMAP_NAME, CONFIG_NAME, CARD_NAME]
            for name in sorted(p.name for p in staging.iterdir()):
                if name not in order:
                    order.append(name)
            for name in order:
                if (staging / name).exists():
                    os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def save_pretrained(intervenable: IntervenableModel, save_directory: str | os.PathLike[str],
                    card: ModelCard | None = None) -> Path:
    """Writes ``config.json``, ``interventions.safetensors`` and a ``README.md`` model card.

    Fields the card leaves empty (base model, intervention types, sites) are filled from the
    intervenable; the card's heatmap, if any, is copied in as ``heatmaps.png``. The folder
    appears whole or not at all; into an existing folder, each of our files is replaced
    atomically and other files are left alone. Returns the directory.
    """
    return save_staged(intervenable, Path(save_directory), card, repo_id=None)
