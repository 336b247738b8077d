"""``job=export_mib``: a finished DAS sweep's trained sites, written for MIB's causal-variable track.

Reads a run directory (its ``config.yaml``, ``results*.csv`` and ``interventions/``), trains and
runs nothing, and writes a submission folder that MIB's ``verify_submission.py`` and
``evaluate_submission.py`` read::

    <mib.out>/
      README.md                                  what was exported, from which run, and how
      <TASK>_<MODEL>_<VARIABLE>/
        ResidualStream(Layer-<L>,Token-<id>)_featurizer
        ResidualStream(Layer-<L>,Token-<id>)_inverse_featurizer
        ResidualStream(Layer-<L>,Token-<id>)_indices

MIB's layer ``L`` of a residual-stream unit is the output of block ``L`` (its layer ``-1`` the
embeddings), so das_train's ``block_output`` at layer ``L`` is MIB's ``L`` and ``block_input``
at ``L`` is MIB's ``L - 1``. The token id is das_train's position name unless ``mib.positions``
maps it to the id of one of the MIB task's token positions (its ``TokenPosition.id``). The files
themselves are :mod:`das_train.training.mib_featurizer`'s, which names the MIB sources followed.
The folder is built under a temporary name and renamed into place, so it appears whole or not
at all.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from das_train.core.files import atomic_write_text, temporary_folder
from das_train.core.serialization import read_saved_document
from das_train.training import reports
from das_train.training import run_dir as run_dir_state
from das_train.training.mib_featurizer import MibFeatures, features_of, write_unit
from das_train.training.schema import ConfigError, MibConfig, RunConfig

MIB_FORMAT = ("MIB causal-variable track submission format of github.com/aaronmueller/MIB @ cc2a160 "
              "(MIB-causal-variable-track: README.md, verify_submission.py, evaluate_submission.py; "
              "featurizers as CausalAbstraction's neural/featurizers.py saves them)")
MIB_LAYER_OFFSET = {"block_output": 0, "block_input": -1}
"""MIB's residual-stream layer is das_train's layer plus this, per component."""
MIB_TASK_VARIABLES = {"ioi_task": ("output_token", "output_position"), "4_answer_MCQA": ("answer_pointer", "answer"),
                      "ARC_easy": ("answer_pointer", "answer"), "arithmetic": ("ones_carry",),
                      "ravel_task": ("Country", "Continent", "Language")}
MIB_MODELS = ("GPT2LMHeadModel", "Qwen2ForCausalLM", "Gemma2ForCausalLM", "LlamaForCausalLM")
"""The tasks, variables and models MIB's verify_submission.py accepts (it skips other folders)."""
UNIT_NAME_FORBIDDEN = (",", ")", "(", "/", os.sep, "\0")


@dataclass
class TrainedSite:
    """One (site, seed) of the run whose intervention was saved."""

    layer: int
    component: str
    position: str
    seed: int
    iia: float
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.component}-L{self.layer}-{self.position}"


def stored_config(run_dir: Path) -> dict[str, Any]:
    """The run's recorded config (``config.yaml``, or a shard's); refuses a non-sweep folder."""
    found = sorted(run_dir.glob("config*.yaml")) if run_dir.is_dir() else []
    if not found:
        raise ConfigError([f"run_dir={str(run_dir)!r} holds no config.yaml: it is not a das_sweep run directory "
                           "(run the sweep first, or give the run_dir it wrote)"])
    stored = yaml.safe_load(found[0].read_text()) or {}
    if stored.get("job", "das_sweep") != "das_sweep":
        raise ConfigError([f"run_dir={str(run_dir)!r} holds a {stored.get('job')!r} run; job=export_mib exports "
                           "the trained sites of a das_sweep run"])
    return stored


def trained_sites(run_dir: Path) -> list[TrainedSite]:
    """Every finished (site, seed) of the run's results files whose intervention is on disk."""
    found: dict[tuple[str, int], TrainedSite] = {}
    for results in sorted(run_dir.glob("results*.csv")):
        for row in reports.read_rows(results):
            if run_dir_state.missing_artifact(run_dir, row) is not None:
                continue
            site = TrainedSite(int(row["layer"]), str(row["component"]), str(row["position_name"]),
                               int(row["seed"]), float(row["iia"]), run_dir_state.intervention_folder(run_dir, row))
            found[(site.name, site.seed)] = site
    if not found:
        raise ConfigError([f"run_dir={str(run_dir)!r} has no trained site (no results row with its saved "
                           "interventions/<site>-s<seed>/); finish the sweep first"])
    return sorted(found.values(), key=lambda s: (s.component, s.layer, s.position, s.seed))


def chosen_sites(sites: list[TrainedSite], names: list[str] | None, seed: int | None) -> list[TrainedSite]:
    """One (site, seed) per site asked for: ``seed``'s, or the seed of highest IIA."""
    available = sorted({s.name for s in sites})
    unknown = [n for n in (names or []) if n not in available]
    if unknown:
        raise ConfigError([f"mib.sites: unknown site(s) {unknown}; trained sites of this run: {available}"])
    chosen = []
    for name in names or available:
        runs = [s for s in sites if s.name == name]
        if seed is not None:
            runs = [s for s in runs if s.seed == seed]
            if not runs:
                seeds = sorted(s.seed for s in sites if s.name == name)
                raise ConfigError([f"mib.seed={seed}: site {name} has no trained seed {seed}; it has {seeds}"])
        chosen.append(max(runs, key=lambda s: (s.iia, -s.seed)))
    return chosen


def unit_id(site: TrainedSite, positions: dict[str, str]) -> str:
    """MIB's residual-stream unit id, the stem of the unit's three files."""
    if site.component not in MIB_LAYER_OFFSET:
        raise ConfigError([f"site {site.name}: component {site.component!r} is not a residual-stream unit; MIB's "
                           f"residual-stream track takes {sorted(MIB_LAYER_OFFSET)} (give mib.sites to leave it out)"])
    token = positions.get(site.position, site.position)
    if any(c in token for c in UNIT_NAME_FORBIDDEN):
        raise ConfigError([f"mib.positions: token id {token!r} of position {site.position!r} must not hold any of "
                           f"{list(UNIT_NAME_FORBIDDEN)} (MIB parses the file name)"])
    return f"ResidualStream(Layer-{site.layer + MIB_LAYER_OFFSET[site.component]},Token-{token})"


def position_map(pairs: list[str]) -> dict[str, str]:
    """``mib.positions`` (``name:id`` pairs) as a mapping; refuses a pair it cannot read."""
    mapping = {}
    for pair in pairs:
        name, _, token = str(pair).partition(":")
        if not name or not token or name in mapping:
            raise ConfigError([f"mib.positions: cannot read {pair!r}; give each das_train position once, as "
                               "name:id, e.g. mib.positions=[last:last_token]"])
        mapping[name] = token
    return mapping


def read_features(site: TrainedSite) -> tuple[MibFeatures, dict[str, Any]]:
    """The site's saved intervention as MIB features, and its artifact's ``config.json``."""
    document, config = read_saved_document(site.folder)
    if len(config.representations) != 1:
        raise ConfigError([f"{site.folder}: holds {len(config.representations)} interventions; an MIB unit is one"])
    try:
        return features_of(config.representations[0].intervention), document
    except ValueError as err:
        raise ConfigError([f"site {site.name}: {err}"]) from None


def names_note(task: str, model: str, variable: str) -> str | None:
    """Why MIB's checker would skip this folder, if it would."""
    if task not in MIB_TASK_VARIABLES:
        return f"task {task!r} is not one of MIB's {sorted(MIB_TASK_VARIABLES)} (set mib.task)"
    if variable not in MIB_TASK_VARIABLES[task]:
        return f"variable {variable!r} is not one of {task}'s {list(MIB_TASK_VARIABLES[task])} (set mib.variable)"
    if model not in MIB_MODELS:
        return f"model {model!r} is not one of MIB's {list(MIB_MODELS)} (set mib.model)"
    return None


@dataclass
class ExportedUnit:
    unit: str
    site: TrainedSite
    features: MibFeatures


def readme(run_dir: Path, stored: dict[str, Any], folder: str, units: list[ExportedUnit], note: str | None) -> str:
    """The export's README.md: its source run, the format followed, and one row per unit."""
    lines = [
        "# MIB causal-variable track submission, exported by das_train", "",
        f"From the das_sweep run `{run_dir}` (recipe `{stored.get('recipe')}`, task `{stored.get('task', {}).get('name')}`, "
        f"intervention `{stored.get('intervention', {}).get('type')}`), with `python -m das_train job=export_mib`.", "",
        f"Format: {MIB_FORMAT}.", "",
        "Each unit's featurizer is MIB's `SubspaceFeaturizerModule` (features `x @ W`, error `x - x W W^T`) with its "
        "inverse `SubspaceInverseFeaturizerModule`; the indices are the features das_train's intervention interchanges. "
        "MIB's layer L is the output of block L (das_train's block_output L, or block_input L+1).", "",
        f"| `{folder}/` unit | das_train site | seed | IIA | features | indices |", "|---|---|---|---|---|---|",
    ]
    for u in units:
        size = len(u.features.indices)
        lines.append(f"| `{u.unit}` | {u.site.name} | {u.site.seed} | {u.site.iia:.3f} | "
                     f"{u.features.rotation.shape[1]} | {size} |")
    hardened = [u for u in units if u.features.hardened_from is not None]
    if hardened:
        worst = max(u.features.hardened_from for u in hardened)
        lines += ["", f"Boundless DAS masks are exported hard (a feature is swapped where the trained mask is above "
                      f"0.5); the softest mask value rounded was {worst:.3g} from 0 or 1."]
    if note:
        lines += ["", f"Note: MIB's verify_submission.py will skip this folder: {note}."]
    return "\n".join(lines) + "\n"


def output_folder(mib: MibConfig, run_dir: Path) -> Path:
    out = Path(mib.out) if mib.out else run_dir / "mib_export"
    if out.exists() and not mib.overwrite:
        raise ConfigError([f"mib.out={str(out)!r} exists; pass mib.overwrite=true to replace it, or another mib.out"])
    return out


def place(staging: Path, out: Path) -> None:
    """Renames the built folder into place; an existing ``out`` is set aside first, then removed."""
    if not out.exists():
        os.rename(staging, out)
        return
    aside = temporary_folder(out.parent, out.name)
    os.rename(out, aside)  # onto an empty folder: allowed, and atomic
    os.rename(staging, out)
    shutil.rmtree(aside, ignore_errors=True)


def run_export_mib(config: RunConfig, run_dir: Path) -> Path:
    """Writes the run's trained sites (one seed each) as an MIB submission folder; returns run_dir."""
    mib = config.mib
    stored = stored_config(run_dir)
    out = output_folder(mib, run_dir)
    positions = position_map(mib.positions)
    sites = chosen_sites(trained_sites(run_dir), mib.sites, mib.seed)
    units, models, seen = [], set(), {}
    for site in sites:
        unit = unit_id(site, positions)
        if unit in seen:
            raise ConfigError([f"sites {seen[unit]} and {site.name} are both MIB unit {unit}; keep one with mib.sites"])
        seen[unit] = site.name
        features, document = read_features(site)
        models.add(document.get("model", {}).get("class"))
        units.append(ExportedUnit(unit, site, features))
    task_name = stored.get("task", {}).get("name", "task")
    model = mib.model or sorted(str(m) for m in models)[0]
    task, variable = mib.task or task_name, mib.variable or task_name
    folder = f"{task}_{model}_{variable}"
    note = names_note(task, model, variable)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_folder(out.parent, out.name)
    try:
        for u in units:
            write_unit(staging / folder, u.unit, u.features)
        atomic_write_text(staging / "README.md", readme(run_dir, stored, folder, units, note))
        place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_summary(out / folder, units, note)
    return run_dir


def print_summary(folder: Path, units: list[ExportedUnit], note: str | None) -> None:
    """What was written where, the format followed, and what a reader must know about it."""
    for u in units:
        print(f"{u.site.name} seed {u.site.seed} (IIA {u.site.iia:.3f}) -> {folder / u.unit}_*", flush=True)
        if u.features.hardened_from:
            print(f"note: {u.site.name}'s Boundless DAS mask is exported hard; its softest value was "
                  f"{u.features.hardened_from:.3g} from 0 or 1", flush=True)
    print(f"wrote {len(units)} MIB unit(s) to {folder} ({MIB_FORMAT})", flush=True)
    if note:
        print(f"note: MIB's verify_submission.py will skip {folder.name}: {note}", flush=True)


__all__ = ["MIB_FORMAT", "TrainedSite", "run_export_mib", "trained_sites", "unit_id"]
