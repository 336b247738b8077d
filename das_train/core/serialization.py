"""Saving and loading an IntervenableModel's interventions: JSON config plus safetensors.

Nothing loaded runs code: intervention types are looked up by class name in our registry,
weights are safetensors (or, for artifacts pyvene published, ``intkey_*.bin`` files read with
``torch.load(weights_only=True)``), and everything is loaded onto the CPU first, then moved to
the model's device. Files are written under temporary names and renamed, so a failure leaves
no half-written artifact.

Artifacts are checked before anything is built from them: a ``config.json`` of an unknown or
missing format is refused (it would otherwise load as an empty IntervenableModel that quietly
runs the plain model); the architecture recorded at saving (model type or class, and each
site's width) must match the model loaded onto; and no file read may lie outside the artifact's
directory (``..``, absolute names, symlinks out), since artifacts come from strangers.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from das_train.core.config import IntervenableConfig, RepresentationConfig
from das_train.core.fault_points import fault_point
from das_train.core.files import atomic_write
from das_train.core.paths import contained_path, is_plain_name
from das_train.core.pyvene_compat import pyvene_artifact_config
from das_train.interventions.base import INTERVENTION_REGISTRY, Intervention, LambdaIntervention

FORMAT = "das_train.intervenable/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "interventions.safetensors"


PYVENE_FORMAT = "pyvene (config.json with 'representations' and 'intervention_types', weights in intkey_<key>.bin)"
KNOWN_FORMATS = (FORMAT, PYVENE_FORMAT)


def architecture_record(intervenable) -> dict[str, Any]:
    """What an artifact must be loaded onto: the model's type (or class) and each site's width."""
    config = getattr(intervenable.model, "config", None)
    return {
        "model_class": type(intervenable.model).__name__,
        "model_type": getattr(config, "model_type", None),
        "site_widths": {entry.key: entry.site.width for entry in intervenable.wiring.entries},
    }


def check_architecture(config_path: Path, record: dict[str, Any] | None, model: nn.Module) -> None:
    """Refuses a model of another architecture than the artifact was saved on (the model type
    when both have one, else the class); an artifact saved before the record warns."""
    if record is None:
        warnings.warn(f"{config_path} records no architecture (saved by an older das_train); loading it "
                      "without checking it was trained on this kind of model", UserWarning, stacklevel=3)
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    saved_type, saved_class = record.get("model_type"), record.get("model_class")
    if saved_type is not None and model_type is not None:
        if saved_type != model_type:
            raise ValueError(f"{config_path} was saved on a {saved_type!r} model ({saved_class}); it cannot be "
                             f"loaded onto a {model_type!r} model ({type(model).__name__})")
    elif saved_class != type(model).__name__:
        raise ValueError(f"{config_path} was saved on a {saved_class}; it cannot be loaded onto a "
                         f"{type(model).__name__}")


def check_site_widths(config_path: Path, record: dict[str, Any] | None, wiring) -> None:
    """Refuses sites whose width on this model differs from the width they were trained at."""
    saved = (record or {}).get("site_widths") or {}
    wrong = [f"{entry.key}: saved {saved[entry.key]}, here {entry.site.width}" for entry in wiring.entries
             if entry.key in saved and saved[entry.key] != entry.site.width]
    if wrong:
        raise ValueError(f"{config_path}: the sites' widths differ on this model ({'; '.join(wrong)})")


def _model_identity(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {
        "class": type(model).__name__,
        "name_or_path": getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
        "model_type": getattr(config, "model_type", None),
    }


def intervenable_state(intervenable) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON document and the flat tensor dict that describe the interventions."""
    records = []
    tensors: dict[str, torch.Tensor] = {}
    first_key_of: dict[int, str] = {}
    for entry in intervenable.wiring.entries:
        intervention = entry.intervention
        if not is_plain_name(entry.key):
            raise ValueError(f"intervention key {entry.key!r} is not a plain name (no '/', '\\', '.' or '..')")
        if isinstance(intervention, LambdaIntervention):
            raise ValueError(f"{entry.key} is a plain function; functions cannot be saved")
        name = type(intervention).__name__
        if INTERVENTION_REGISTRY.get(name) is not type(intervention):
            raise ValueError(f"{entry.key}: {name} is not the registered class of that name")
        link = first_key_of.get(id(intervention))
        records.append(
            {"key": entry.key, "type": name, "init_args": intervention.init_args(), "shares_weights_with": link}
        )
        if link is not None:
            continue
        first_key_of[id(intervention)] = entry.key
        for param_name, tensor in intervention.state_dict().items():
            tensors[f"{entry.key}.{param_name}"] = tensor.detach().to("cpu").contiguous()
    config = intervenable.config.to_dict()
    document = {
        "format": FORMAT,
        "config": config,
        "interventions": records,
        "model": _model_identity(intervenable.model),
        "architecture": architecture_record(intervenable),
    }
    return document, tensors


def save_intervenable(intervenable, save_directory: str, save_to_hf_hub: bool = False,
                      hf_repo_name: str | None = None) -> None:
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    document, tensors = intervenable_state(intervenable)
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    fault_point("save_intervention")
    atomic_write(
        directory / CONFIG_NAME,
        lambda tmp: Path(tmp).write_text(json.dumps(document, indent=2, default=_json_default)),
    )
    if save_to_hf_hub:
        push_folder(directory, hf_repo_name)


def push_folder(directory: Path, repo_id: str | None) -> None:
    """Uploads a saved folder; the local files stay whatever happens.

    Without a repo id the folder's name is used (in the token owner's namespace), so the
    paper's ``save("./tmp/", save_to_hf_hub=True)`` runs as written.
    """
    repo_id = repo_id or Path(directory).resolve().name
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(directory), repo_id=repo_id)
    except Exception as err:  # offline, no token, no rights: the message says which
        raise OSError(
            f"could not upload {directory} to the Hugging Face Hub repo {repo_id!r} "
            f"({type(err).__name__}: {err}); the local files are kept in {directory}"
        ) from err


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, type):
        return value.__name__
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _restore(intervention: Intervention, state: dict[str, torch.Tensor], key: str) -> None:
    if "source_representation" in state and getattr(intervention, "source_representation", None) is None:
        intervention.set_source_representation(state["source_representation"])
    missing, unexpected = intervention.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{key}: saved weights do not fit {type(intervention).__name__}: "
                         f"missing {missing}, unexpected {unexpected}")


@dataclass
class SavedIntervenable:
    """A saved IntervenableModel read back: the config with its interventions built and loaded,
    and the architecture recorded at saving (``None`` for a pyvene artifact, which records none)."""

    config: IntervenableConfig
    config_path: Path
    architecture: dict[str, Any] | None

    def check_site_widths(self, wiring: Any) -> None:
        """Refuses sites whose width on this model differs from the width they were saved at."""
        check_site_widths(self.config_path, self.architecture, wiring)


def _local_directory(load_directory: str, local_directory: str | None, from_huggingface_hub: bool) -> Path:
    """``load_directory`` itself, or a Hub repo of that name downloaded to ``local_directory``."""
    directory = Path(load_directory)
    if not from_huggingface_hub and directory.exists():
        return directory
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(load_directory), local_dir=local_directory))
    except Exception as err:  # offline, unknown repo, no token: say which
        raise OSError(
            f"{load_directory!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({type(err).__name__}: {err})"
        ) from err


def _built_interventions(document: dict[str, Any], config: IntervenableConfig,
                         tensors: dict[str, torch.Tensor]) -> None:
    """Builds each saved intervention from its registered type and weights, into ``config``."""
    built: dict[str, Intervention] = {}
    for rep, record in zip(config.representations, document["interventions"]):
        if record["shares_weights_with"] is not None:
            intervention = built[record["shares_weights_with"]]
        else:
            cls = INTERVENTION_REGISTRY.get(record["type"])
            if cls is None:
                raise ValueError(
                    f"{record['key']}: intervention type {record['type']!r} is not registered; "
                    "import the module that defines it before loading"
                )
            intervention = cls(**{k: v for k, v in record["init_args"].items() if v is not None})
            prefix = record["key"] + "."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            _restore(intervention, state, record["key"])
        built[record["key"]] = intervention
        rep.intervention = intervention
        rep.intervention_type = None
    config.intervention_types = None


def read_saved(load_directory: str, model: nn.Module, local_directory: str | None = None,
               from_huggingface_hub: bool = False) -> SavedIntervenable:
    """Reads a saved IntervenableModel (ours or pyvene's) for ``model``, on the CPU."""
    directory = _local_directory(load_directory, local_directory, from_huggingface_hub)
    config_path = contained_path(directory, CONFIG_NAME, "the config file")
    document = json.loads(config_path.read_text())
    if artifact_format(config_path, document) == PYVENE_FORMAT:
        return SavedIntervenable(pyvene_artifact_config(directory, document), config_path, None)
    architecture = document.get("architecture")
    check_architecture(config_path, architecture, model)
    config = IntervenableConfig.from_dict(document["config"])
    tensors = load_file(str(contained_path(directory, WEIGHTS_NAME, "the weights file")), device="cpu")
    _built_interventions(document, config, tensors)
    return SavedIntervenable(config, config_path, architecture)


def read_saved_document(load_directory: str | Path) -> tuple[dict[str, Any], IntervenableConfig]:
    """A local das_train artifact's ``config.json`` and its config with the interventions built
    and loaded on the CPU, without a model: for exports that read the trained weights and never
    run the model (so its architecture is not checked here)."""
    directory = Path(load_directory)
    config_path = contained_path(directory, CONFIG_NAME, "the config file")
    document = json.loads(config_path.read_text())
    if artifact_format(config_path, document) != FORMAT:
        raise ValueError(f"{config_path} is a pyvene artifact; only das_train's own format ({FORMAT!r}) is read "
                         "without a model")
    config = IntervenableConfig.from_dict(document["config"])
    tensors = load_file(str(contained_path(directory, WEIGHTS_NAME, "the weights file")), device="cpu")
    _built_interventions(document, config, tensors)
    return document, config


def artifact_format(config_path: Path, document: Any) -> str:
    """Which of :data:`KNOWN_FORMATS` ``document`` (a parsed ``config.json``) is in; refuses any
    other, so a stray or empty config never loads as an IntervenableModel with no interventions."""
    if isinstance(document, dict) and document.get("format") == FORMAT:
        return FORMAT
    if (isinstance(document, dict) and "format" not in document and document.get("representations")
            and "intervention_types" in document):
        return PYVENE_FORMAT
    found = document.get("format") if isinstance(document, dict) else type(document).__name__
    raise ValueError(f"{config_path} is not a saved intervention: format {found!r}; known formats: "
                     f"{FORMAT!r}, or {PYVENE_FORMAT}")


__all__ = ["KNOWN_FORMATS", "SavedIntervenable", "read_saved", "read_saved_document", "save_intervenable",
           "RepresentationConfig"]
