"""The model card: what a reader needs to trust and reuse published interventions.

A trained DAS direction means nothing on its own. To reuse or check it, a reader needs what it
was trained on (the base model and its revision, the task, the seed and fingerprint of the
counterfactual pairs), where it sits (the site), how well it did (IIA next to the probe), and
the exact config that reproduces it: :class:`ModelCard` holds that and renders it as the
``README.md`` the Hugging Face Hub shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from das_train.core.checkpoint_folders import looks_local
from das_train.core.model import IntervenableModel
from das_train.core.serialization import CONFIG_NAME, WEIGHTS_NAME

CARD_NAME = "README.md"
HEATMAP_NAME = "heatmaps.png"
VALIDITY_HEATMAP_NAME = "validity_heatmaps.png"
DEFAULT_TAGS = ("das_train", "interpretability", "das", "causal-abstraction", "interventions")


def _das_train_version() -> str:
    """The installed das_train's version (the package metadata, so the hub needs nothing
    from the package root)."""
    return version("das_train")


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
    validity_heatmap: Path | None = None
    """The validity card's image (each featurizer's IIA on the changing pairs); copied into the
    repo as ``validity_heatmaps.png``."""
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
        on_hub = kind == "hub" and bool(model.get("name")) and not looks_local(model["name"])
        if on_hub:
            description = None
        elif kind == "hub" and model.get("name"):
            description = (f"the checkpoint folder {model['name']} (not on the Hub; run_info.json records "
                           "its files' fingerprint)")
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
        front = yaml.safe_dump(self.front_matter(), sort_keys=False, default_flow_style=False)
        parts = [f"---\n{front}---\n", f"# {repo_id.split('/')[-1] if repo_id else 'Trained interventions'}\n"]
        parts.append(self._what_it_is())
        parts.append(self._provenance())
        parts.append(self._how_to_load(repo_id))
        if self.results_table:
            parts.append(f"## Results\n\n{self.results_table.strip()}\n")
        if self.heatmap is not None:
            parts.append(f"## Heatmap\n\n![IIA and probe accuracy per site]({HEATMAP_NAME})\n")
        if self.validity_heatmap is not None:
            parts.append(f"## Validity card\n\n![IIA on the changing pairs, per featurizer]({VALIDITY_HEATMAP_NAME})\n")
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
