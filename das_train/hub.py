"""Publishing trained interventions: a folder anyone can load, and its round trip through the Hub.

A trained DAS direction means nothing on its own. To reuse or check it, a reader needs what it
was trained on (the base model and its revision, the task, the seed and fingerprint of the
counterfactual pairs), where it sits (the site), how well it did (IIA next to the probe), and
the exact config that reproduces it. This module writes all of that next to the weights, as the
``README.md`` model card the Hugging Face Hub shows, and moves the folder to and from the Hub:

- :func:`save_pretrained` writes the intervention files (``config.json`` and
  ``interventions.safetensors``, see :mod:`das_train.core.serialization`) plus the card;
- :func:`push_to_hub` uploads a saved folder, or an intervenable saved on the spot;
- :func:`from_pretrained` loads one back from a local folder or a Hub repo, on any machine;
- :func:`publish_run` publishes a finished sweep's run directory as one repo.

Publishing fails often for reasons outside the code (no token, offline, no write access), and a
failure must never lose a trained intervention: every error here is an ``OSError`` subclass
that says which of these it was and where the local files are kept. ``huggingface_hub`` is
imported when it is needed and looked up on the module at call time, so tests can replace
``HfApi`` and ``snapshot_download`` without touching the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from das_train.core.files import atomic_write, atomic_write_text, temporary_folder
from das_train.core.loaders import HubUnavailableError
from das_train.core.model import IntervenableModel
from das_train.core.paths import contained_path, require_relative
from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME, save_intervenable

CARD_NAME = "README.md"
HEATMAP_NAME = "heatmaps.png"
RUN_INFO_NAME = "run_info.json"
"""Optional file of a run directory: ``{"das_train_version": ..., "dataset": {"task": ...,
"seed": ..., "fingerprint": ..., "kept": {...}, "dropped": {...}}}``, read into the card."""
RUN_FILES = ("config.yaml", "table.md", "table.csv", "results.csv", HEATMAP_NAME, RUN_INFO_NAME)
"""What :func:`publish_run` uploads from a run directory, besides the card and interventions/."""
DEFAULT_TAGS = ("das_train", "interpretability", "das", "causal-abstraction", "interventions")
DEFAULT_COMMIT_MESSAGE = "Upload trained interventions with das_train"
# Temporary files (ours and the serializer's) start with a dot; they must never be uploaded.
HIDDEN_PATTERNS = [".*", "*/.*"]

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


def _das_train_version() -> str:
    import das_train

    return das_train.__version__


# -- the model card ---------------------------------------------------------------------------------


@dataclass
class ModelCard:
    """What a reader needs to trust and reuse published interventions; renders ``README.md``.

    Every field is optional: :func:`save_pretrained` fills what it can from the intervenable
    (base model, intervention type, sites) and :func:`publish_run` from the run directory. A
    field left empty is left out of the card rather than shown as a placeholder.
    """

    recipe: str | None = None
    """The recipe that trained the interventions (``python -m das_train recipe=...``)."""
    base_model: str | None = None
    """Hub repo id of the frozen model the interventions were trained on; ``None`` when the
    model did not come from the Hub (see ``base_model_description``)."""
    base_model_revision: str | None = None
    """Revision (branch, tag or commit) of ``base_model``: checkpoints of one repo differ."""
    base_model_description: str | None = None
    """How to get the model when it is not on the Hub, e.g. a tiny model trained on the spot."""
    model_class: str | None = None
    """The transformers class to load ``base_model`` with, used in the loading snippet."""
    task: str | None = None
    """The counterfactual task (causal model) the pairs came from."""
    dataset_seed: int | None = None
    """The seed the pairs were generated with."""
    dataset_fingerprint: str | None = None
    """Hash of every setting that decides the pairs (``PairDataModule.fingerprint()``)."""
    intervention_type: str | None = None
    """Class name(s) of the interventions, e.g. ``LowRankRotatedSpaceIntervention``."""
    sites: list[str] = field(default_factory=list)
    """Where the interventions act, e.g. ``block_output-L2-last``."""
    subfolders: list[str] = field(default_factory=list)
    """For a repo holding many interventions (a sweep): the folders to pass as ``subfolder``."""
    results_table: str | None = None
    """The IIA / probe table, in Markdown (a sweep's ``table.md``)."""
    heatmap: Path | None = None
    """An image of the results; copied into the repo as ``heatmaps.png``."""
    das_train_version: str = field(default_factory=_das_train_version)
    """The das_train version that wrote the files."""
    config_yaml: str | None = None
    """The resolved config that reproduces the run."""
    summary: str | None = None
    """A sentence or two of your own, shown first."""
    tags: list[str] = field(default_factory=list)
    """Extra Hub tags, added to ``DEFAULT_TAGS``."""
    license: str | None = None
    """SPDX id for the front matter, e.g. ``apache-2.0``."""

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_intervenable(cls, intervenable: IntervenableModel) -> ModelCard:
        """A card with what the intervenable itself knows: base model, intervention types, sites."""
        return cls().completed_from(intervenable)

    def completed_from(self, intervenable: IntervenableModel) -> ModelCard:
        """A copy with empty fields filled from ``intervenable``; fields already set are kept."""
        model = intervenable.model
        config = getattr(model, "config", None)
        name = getattr(config, "_name_or_path", None) or None
        module = type(model).__module__
        types = sorted({type(intervenable.interventions[k]).__name__ for k in intervenable.sorted_keys})
        sites = [f"{rep.component}-L{rep.layer} (unit {rep.unit})" for rep in intervenable.config.representations]
        updates: dict[str, Any] = {}
        # A local path is not a Hub id: it goes to the description, where it misleads no one.
        if self.base_model is None and name is not None and not Path(name).exists():
            updates["base_model"] = name
        if self.base_model_description is None and self.base_model is None and "base_model" not in updates:
            updates["base_model_description"] = f"a {type(model).__name__}" + (f" from {name}" if name else "")
        if self.model_class is None and module.startswith("transformers"):
            updates["model_class"] = type(model).__name__
        if self.intervention_type is None and types:
            updates["intervention_type"] = ", ".join(types)
        if not self.sites:
            updates["sites"] = sites
        return dataclasses.replace(self, **updates)

    @classmethod
    def from_saved(cls, directory: str | os.PathLike[str]) -> ModelCard:
        """A card from a saved folder's ``config.json`` alone (no model needed)."""
        document = json.loads((Path(directory) / CONFIG_NAME).read_text())
        model = document.get("model") or {}
        reps = (document.get("config") or {}).get("representations") or []
        types = sorted({r["type"] for r in document.get("interventions") or [] if r.get("type")})
        name = model.get("name_or_path") or None
        return cls(
            base_model=name,
            base_model_description=None if name else (f"a {model['class']}" if model.get("class") else None),
            model_class=model.get("class") if model.get("model_type") else None,
            intervention_type=", ".join(types) or None,
            sites=[f"{r.get('component')}-L{r.get('layer')} (unit {r.get('unit')})" for r in reps],
        )

    @classmethod
    def from_run(
        cls,
        config: Mapping[str, Any],
        results_table: str | None,
        heatmap: Path | None,
        subfolders: Sequence[str],
        run_info: Mapping[str, Any] | None = None,
        config_yaml: str | None = None,
    ) -> ModelCard:
        """A card for a sweep, from its resolved ``config.yaml`` (as a mapping) and results."""
        model = config.get("model") or {}
        task = config.get("task") or {}
        intervention = config.get("intervention") or {}
        info = run_info or {}
        dataset = info.get("dataset") or {}
        kind = model.get("kind")
        on_hub = kind == "hub" and bool(model.get("name"))
        if on_hub:
            description = None
        elif kind == "tiny":
            description = (
                f"a {model.get('n_layer')}-layer, {model.get('hidden')}-wide GPT-NeoX trained on the spot on "
                f"the task's sentences (seed {config.get('seed')}); running the recipe rebuilds it"
            )
        elif kind == "mlp":
            description = f"an MLP trained on the spot on the task (seed {config.get('seed')}); running the recipe rebuilds it"
        else:
            description = f"a model of kind {kind!r}" if kind else None
        sites = sorted({_site_of(folder) for folder in subfolders})
        seed = dataset.get("seed", config.get("seed"))
        return cls(
            recipe=config.get("recipe"),
            base_model=model.get("name") if on_hub else None,
            base_model_revision=model.get("revision") if on_hub else None,
            base_model_description=description,
            model_class="AutoModelForCausalLM" if on_hub else None,
            task=dataset.get("task") or task.get("name"),
            dataset_seed=int(seed) if seed is not None else None,
            dataset_fingerprint=dataset.get("fingerprint"),
            intervention_type=intervention.get("type"),
            sites=sites,
            subfolders=list(subfolders),
            results_table=results_table,
            heatmap=heatmap,
            das_train_version=info.get("das_train_version") or _das_train_version(),
            config_yaml=config_yaml,
        )

    # -- rendering --------------------------------------------------------------------------
    def front_matter(self) -> dict[str, Any]:
        """The card's YAML metadata: what the Hub indexes and filters on."""
        tags = list(dict.fromkeys([*DEFAULT_TAGS, *self.tags]))
        meta: dict[str, Any] = {"library_name": "das_train", "tags": tags}
        if self.base_model is not None:
            meta["base_model"] = self.base_model
        if self.license is not None:
            meta["license"] = self.license
        return meta

    def render(self, repo_id: str | None = None) -> str:
        """The ``README.md`` text; ``repo_id`` goes into the loading snippet when known."""
        import yaml

        front = yaml.safe_dump(self.front_matter(), sort_keys=False, default_flow_style=False)
        parts = [f"---\n{front}---\n", f"# {repo_id.split('/')[-1] if repo_id else 'Trained interventions'}\n"]
        parts.append(self._what_it_is())
        parts.append(self._provenance())
        parts.append(self._how_to_load(repo_id))
        if self.results_table:
            parts.append(f"## Results\n\n{self.results_table.strip()}\n")
        if self.heatmap is not None:
            parts.append(f"## Heatmap\n\n![IIA and probe accuracy per site]({HEATMAP_NAME})\n")
        if self.config_yaml:
            parts.append(f"## Config\n\nThe resolved config of the run:\n\n```yaml\n{self.config_yaml.strip()}\n```\n")
        return "\n".join(parts)

    def _what_it_is(self) -> str:
        kind = f"`{self.intervention_type}`" if self.intervention_type else "intervention"
        model = f"`{self.base_model}`" if self.base_model else (self.base_model_description or "a model")
        if len(self.subfolders) > 1:
            what = f"{len(self.subfolders)} trained {kind} interventions, one per site and seed,"
        elif len(self.sites) > 1:
            what = f"Trained {kind} interventions at {len(self.sites)} sites"
        else:
            what = f"A trained {kind}"
        text = (f"{what} on {model}" + (f" for the `{self.task}` task" if self.task else "")
                + (f", made by the das_train recipe `{self.recipe}`" if self.recipe else "") + ".")
        body = [self.summary.strip()] if self.summary else []
        body.append(text)
        explain = "An intervention rewrites the model's hidden representation at a site."
        if self.intervention_type and any(w in self.intervention_type for w in ("Rotated", "Mask")):
            explain += (" Distributed alignment search (DAS) learns a subspace there; swapping its "
                        "coordinates between a base and a source input changes the output as the "
                        "task's causal model predicts.")
        if self.results_table:
            explain += (" Interchange intervention accuracy (IIA) measures how often it does, on "
                        "held-out pairs; a linear probe at the same site, with a control task, is the "
                        "baseline.")
        body.append(explain)
        return "## What it is\n\n" + "\n\n".join(body) + "\n"

    def _provenance(self) -> str:
        rows: list[tuple[str, str]] = []
        if self.recipe:
            rows.append(("recipe", f"`{self.recipe}`"))
        if self.base_model:
            revision = f" at revision `{self.base_model_revision}`" if self.base_model_revision else ""
            rows.append(("base model", f"[`{self.base_model}`](https://huggingface.co/{self.base_model}){revision}"))
        elif self.base_model_description:
            rows.append(("base model", self.base_model_description))
        if self.task:
            rows.append(("task", f"`{self.task}`"))
        if self.dataset_seed is not None:
            rows.append(("dataset seed", str(self.dataset_seed)))
        rows.append(("dataset fingerprint", f"`{self.dataset_fingerprint}`" if self.dataset_fingerprint else "not recorded"))
        if self.intervention_type:
            rows.append(("intervention", f"`{self.intervention_type}`"))
        if self.sites:
            rows.append(("sites", ", ".join(f"`{s}`" for s in self.sites)))
        rows.append(("das_train version", self.das_train_version))
        lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        return "## Provenance\n\n" + "\n".join(lines) + "\n"

    def _how_to_load(self, repo_id: str | None) -> str:
        where = repo_id or "path/to/this/folder"
        lines = ["import das_train as pv", "from das_train.hub import from_pretrained"]
        if self.base_model and self.model_class:
            lines.append(f"from transformers import {self.model_class}")
            revision = f", revision={self.base_model_revision!r}" if self.base_model_revision else ""
            lines += ["", f"model = {self.model_class}.from_pretrained({self.base_model!r}{revision})"]
        else:
            lines += ["", f"model = ...  # {self.base_model_description or 'the model the interventions were trained on'}"]
        if self.subfolders:
            first = self.subfolders[0]
            lines += [
                "# one intervention per site and seed; pick its folder:",
                f"intervenable = from_pretrained({where!r}, model, subfolder={first!r})",
                "# or, from a local copy:",
                f"intervenable = pv.IntervenableModel.load({f'path/to/this/folder/{first}'!r}, model)",
            ]
        elif repo_id is not None:
            lines += [
                f"intervenable = from_pretrained({where!r}, model)  # loads on CPU, then moves to the model's device",
                "# or, from a local copy:",
                "intervenable = pv.IntervenableModel.load('path/to/this/folder', model)",
            ]
        else:
            lines += [
                "intervenable = pv.IntervenableModel.load('path/to/this/folder', model)",
                "# or, once pushed to the Hub (loads on CPU, then moves to the model's device):",
                "intervenable = from_pretrained('user/repo', model)",
            ]
        text = "## How to load\n\n```python\n" + "\n".join(lines) + "\n```\n"
        if self.subfolders:
            listed = "\n".join(f"- `{s}`" for s in self.subfolders)
            text += f"\nFolders (each holds `{CONFIG_NAME}` and `{WEIGHTS_NAME}`):\n\n{listed}\n"
        return text


def _site_of(folder: str) -> str:
    """``interventions/block_output-L2-last-s0`` -> ``block_output-L2-last`` (seed dropped)."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    stem, _, seed = name.rpartition("-s")
    return stem if stem and seed.isdigit() else name


# -- files ------------------------------------------------------------------------------------------


def _atomic_copy(source: Path, path: Path) -> None:
    if source.resolve() == path.resolve():
        return
    atomic_write(path, lambda tmp: shutil.copyfile(source, tmp))


def _write_card(directory: Path, card: ModelCard, repo_id: str | None) -> None:
    """README.md (and heatmaps.png when the card has an image), each written atomically."""
    if card.heatmap is not None:
        image = Path(card.heatmap)
        if not image.is_file():
            raise FileNotFoundError(f"the card's heatmap {image} does not exist")
        _atomic_copy(image, directory / HEATMAP_NAME)
    atomic_write_text(directory / CARD_NAME, card.render(repo_id))


def _save(intervenable: IntervenableModel, save_directory: Path, card: ModelCard | None,
          repo_id: str | None) -> Path:
    card = (card or ModelCard()).completed_from(intervenable)
    directory = Path(save_directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # Everything is written next to the target first, so a failure (an unsaveable function
    # intervention, a missing image, a full disk) leaves the target as it was.
    staging = temporary_folder(directory.parent, directory.name)
    try:
        save_intervenable(intervenable, str(staging))
        _write_card(staging, card, repo_id)
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
    return _save(intervenable, Path(save_directory), card, repo_id=None)


# -- the Hub --------------------------------------------------------------------------------------


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
    import importlib

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


def _publish_failure(err: BaseException) -> tuple[PublishFailure, str]:
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


def _upload(directory: Path, repo_id: str, token: str | None, private: bool, commit_message: str,
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
        reason, why = _publish_failure(huggingface_hub.utils.LocalTokenNotFoundError("no token"))
        raise failed(reason, why)
    try:
        api = huggingface_hub.HfApi(token=token)  # token=None: huggingface_hub's own lookup (HF_TOKEN, login)
        repo_url = api.create_repo(repo_id, exist_ok=True, private=private)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=str(directory), commit_message=commit_message,
            allow_patterns=allow_patterns, ignore_patterns=HIDDEN_PATTERNS,
        )
    except Exception as err:  # the reason is classified; the original stays as __cause__
        reason, why = _publish_failure(err)
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
            directory = _save(intervenable_or_directory, parent / repo_id.replace("/", "--"), card, repo_id)
        except BaseException:
            shutil.rmtree(parent, ignore_errors=True)  # nothing was saved, so nothing to keep
            raise
        url = _upload(directory, repo_id, token, private, commit_message, None,
                      f"das_train.hub.push_to_hub({str(directory)!r}, {repo_id!r})")
        shutil.rmtree(parent, ignore_errors=True)
        return url
    directory = Path(intervenable_or_directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no {CONFIG_NAME}; save the interventions there first "
                                "(das_train.hub.save_pretrained or IntervenableModel.save)")
    if card is not None or not (directory / CARD_NAME).exists():
        _write_card(directory, card or ModelCard.from_saved(directory), repo_id)
    return _upload(directory, repo_id, token, private, commit_message, None,
                   f"das_train.hub.push_to_hub({str(directory)!r}, {repo_id!r})")


def _download_failure(err: BaseException, revision: str | None) -> tuple[DownloadFailure, str]:
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
        reason, why = _download_failure(err, revision)
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


# -- a whole sweep ----------------------------------------------------------------------------------


def run_card(run_dir: str | os.PathLike[str]) -> ModelCard:
    """The card of a finished sweep, built from its ``config.yaml``, ``table.md`` and
    ``run_info.json`` (when the run wrote one)."""
    import yaml

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
    return ModelCard.from_run(config, table_path.read_text(), heatmap if heatmap.is_file() else None,
                              subfolders, run_info, config_yaml)


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
    return _upload(run_dir, repo_id, token, private, commit_message, allow,
                   f"das_train.hub.publish_run({str(run_dir)!r}, {repo_id!r})")


__all__ = [
    "HubDownloadError",
    "HubPublishError",
    "ModelCard",
    "from_pretrained",
    "publish_run",
    "push_to_hub",
    "run_card",
    "save_pretrained",
]
