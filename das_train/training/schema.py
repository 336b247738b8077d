"""The typed shape of a run's config, and the check that reports every problem at once.

Recipes and config groups are YAML; these dataclasses say which keys exist, their types and
allowed values, with a docstring per field. :func:`validate` compares a composed config with
them and returns every unknown key, wrong type and bad value, so a run fails before any work
with one message that names them all.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

MODEL_KINDS = ("tiny", "hub", "mlp")
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("csv", "wandb", "tensorboard", "none")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")


@dataclass
class ModelConfig:
    kind: str = "tiny"
    """``tiny`` (a GPT-NeoX trained on the task on the spot), ``hub`` (from the Hub) or ``mlp``."""
    name: str | None = None
    """Hub model id (kind=hub)."""
    revision: str = "main"
    """Hub revision (kind=hub), recorded with the results."""
    dtype: str = "float32"
    """Weights' dtype: float32, bfloat16 or float16."""
    device_map: str | None = None
    """For a frozen model larger than one device (kind=hub): ``auto`` spreads its layers over
    the visible GPUs (and CPU) with accelerate; the intervention trains on one device in fp32."""
    n_layer: int = 4
    """Layers of a model trained on the spot."""
    hidden: int = 64
    """Width of a model trained on the spot."""
    heads: int = 4
    """Attention heads of a tiny model."""
    max_steps: int = 3000
    """Upper bound on the steps that train a model on the spot (it stops once perfect)."""


@dataclass
class TaskConfig:
    name: str = "gender"
    """A module of ``tasks/`` holding one CounterfactualTask."""
    n_train: int = 2000
    """Counterfactual pairs to train interventions on."""
    n_val: int = 256
    """Pairs for validation during training."""
    n_test: int = 512
    """Held-out pairs that IIA and probe accuracy are reported on."""
    filter_pairs: bool = True
    """Keep only pairs the frozen model gets right on base and source."""


@dataclass
class InterventionConfig:
    type: str = "LowRankRotatedSpaceIntervention"
    """A trainable intervention from das_train's registry."""
    low_rank_dimension: int = 1
    """k of a low-rank rotation; the interchanged size of a full rotation."""
    lr: float = 0.01
    """Adam's learning rate."""
    boundary_penalty: float = 0.0
    """Weight of the boundless boundary's sparsity penalty."""
    temperature_start: float = 50.0
    """Boundless temperature at step 0."""
    temperature_end: float = 0.1
    """Boundless temperature at the last step."""
    iit: bool = False
    """Interchange intervention training: update the model too."""


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    """Lightning accelerator: cpu, gpu, auto."""
    devices: int = 1
    """Devices per node."""
    num_nodes: int = 1
    """Nodes (SLURM or torchrun)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, ..."""
    precision: str = "32-true"
    """Lightning precision."""
    max_steps: int = 300
    """Optimizer steps per site."""
    batch_size: int = 64
    """Pairs per step and per device."""
    shuffle: bool = True
    """Shuffle training pairs; off, N devices with batch_size/N see one device's batches."""


@dataclass
class LoggerConfig:
    kind: str = "csv"
    """csv, wandb, tensorboard or none."""
    project: str = "das_train"
    """Weights & Biases project."""


@dataclass
class ProbeConfig:
    max_epochs: int = 40
    """Epochs of linear-probe training."""
    lr: float = 0.01
    """The probe's learning rate."""
    weight_decay: float = 0.0
    """The probe's weight decay."""
    tables_mib: float = 1024
    """With sweep.batched: most memory the probes' activation tables (one row per distinct
    base input per site) hold at once; beyond it the sites are collected and fitted in waves,
    one more pass over the training inputs each."""


@dataclass
class SweepConfig:
    component: str = "block_output"
    """The component swept over layers."""
    layers: list[int] | None = None
    """Layers to sweep; null means every layer."""
    positions: list[str] | None = None
    """Named positions to sweep; null means every position of the task."""
    include_embeddings: bool = True
    """Also sweep layer 0's block input (the embedding row)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds per site; the table reports mean and spread over them."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Linear-probe settings."""
    shard: int = 0
    """Which share of the sites this job runs (0 .. num_shards-1); e.g. with Hydra's
    ``-m sweep.shard=0,1,2,3 sweep.num_shards=4`` or one SLURM array task each."""
    num_shards: int = 1
    """How many jobs share the sweep; each writes results.shard-<i>-of-<n>.csv and
    config.shard-<i>.yaml. Shards of differing result-affecting settings are refused (see
    ``resume``); a site finished by any shard, or by an unsharded run, is counted once."""
    merge: bool = False
    """Only build the table and heatmaps from the shards' results already in run_dir. Refused,
    writing no table, while a site of the sweep (its plan, sweep_plan.json) has no result: the
    error names each missing site and the shard that owns it."""
    batched: bool = True
    """Train the sites of a layer together on cached activations (same results as one site at
    a time, several times faster); false trains and probes each site on its own."""
    sites_per_pass: int | str | None = "auto"
    """With batched: how many of a layer's sites share one forward pass. ``auto`` fits as many
    as keep no more activations for the backward than the run's costliest one-site step
    (measured on a batch), the bound of a per-site loop; a number fixes it; null puts all of a
    layer's sites in one pass (fastest on small models, most memory). Gradients are accumulated
    over a step's passes, so results do not depend on it."""
    skip_shared_prefix: bool = True
    """Test untrained, rather than train, the sites where every pair's base and source agree on
    all positions up to the site's (a BOS token, a template's fixed opening): there an
    interchange returns the base whatever its parameters, so the IIA is the same and training
    would only follow rounding noise (das_train/training/shared_prefix.py). Causal models, DAS
    interventions without a boundary penalty; the log names the sites."""


@dataclass
class TracingConfig:
    components: list[str] = field(default_factory=lambda: ["block_output", "mlp_activation", "attention_output"])
    """Components restored one (layer, position) at a time (Meng et al.'s three streams)."""
    window: int = 10
    """Layers restored together around each layer for every component but block_output."""
    noise_scale: float = 3.0
    """Noise on the subject's embeddings, in multiples of the embeddings' standard deviation."""
    samples: int = 10
    """Noise samples per fact; the restored probability is their mean."""
    facts: int = 20
    """How many facts are traced (the heatmaps average them)."""


@dataclass
class SteeringConfig:
    word: str = "happy"
    """The word whose input embedding is added (for a BPE, the first token of " word")."""
    coefficient: float | list[float] = 0.3
    """Scale of the embedding; a list gives one steered column per coefficient."""
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time there was a"])
    """Prompts to continue, each once plainly and once per coefficient."""
    max_new_tokens: int = 32
    """Tokens generated per continuation."""
    do_sample: bool = False
    """Sample (seeded by ``seed`` and the prompt's index) instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (do_sample only)."""
    top_k: int = 0
    """Sample from the k likeliest tokens only; 0 means from all (do_sample only)."""
    samples: int = 1
    """Continuations per prompt (do_sample only): more give a steadier measured fraction."""
    intervene_on_prompt: bool = False
    """Also add the embedding at every prompt position; false steers the decoding steps only,
    as in the paper's Figure 1 and pyvene's default."""


@dataclass
class PublishConfig:
    repo_id: str | None = None
    """Hub repo to publish the finished sweep to (the token comes from HF_TOKEN, never the
    config, which is uploaded with the run)."""
    private: bool = False
    """Create the repo private."""


@dataclass
class RunConfig:
    recipe: str = "gender_tiny"
    """The recipe's name (a YAML file in recipes/)."""
    job: str = "das_sweep"
    """``das_sweep`` (DAS and probes over sites), ``causal_tracing`` (Meng et al. 2022) or
    ``steering`` (a word's embedding added at every decoding step, the paper's Figure 1)."""
    run_dir: str = "runs/gender_tiny"
    """The run's one directory: config, results, checkpoints, interventions, logs, table,
    heatmaps and Hydra's ``.hydra/``. ``hydra.run.dir`` is the same setting (given, it wins).
    In a multirun each job writes to run_dir/<swept key=value,...>, except that shards (only
    ``sweep.shard`` swept) share run_dir. Running the same command again resumes (see
    ``resume``). One process at a time writes a results file of it: a second one is refused at
    once, naming the holder (shards of one sweep each have their own and run side by side)."""
    resume: str = "auto"
    """What a run does with a run_dir that holds an earlier run. ``auto``: resume it (finished
    sites are kept, the rest run), but only if every setting that can change a result is the
    same as in the stored config.yaml (or config.shard-<i>.yaml); otherwise the run is refused
    before any work, naming each setting that differs. Settings that do not change results may
    differ: progress, logger, publish, cache_dir, run_dir, resume, trainer.devices / num_nodes /
    strategy / accelerator, sweep.shard / num_shards / merge / batched / sites_per_pass and
    sweep.probe.tables_mib. ``fresh``: move the earlier contents into run_dir/previous-<time>/
    (renamed, nothing deleted) and start anew."""
    cache_dir: str = ".cache/das_train"
    """Where generated pairs and models trained on the spot are cached."""
    seed: int = 0
    """Seed of data generation and of the tiny model."""
    progress: bool = True
    """Show progress bars."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    intervention: InterventionConfig = field(default_factory=InterventionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)
    steering: SteeringConfig = field(default_factory=SteeringConfig)


ALLOWED_VALUES = {
    ("job",): ("das_sweep", "causal_tracing", "steering"),
    ("resume",): ("auto", "fresh"),
    ("model", "kind"): MODEL_KINDS,
    ("model", "dtype"): DTYPES,
    ("logger", "kind"): LOGGERS,
    ("trainer", "precision"): PRECISIONS,
}
POSITIVE = {
    ("model", "n_layer"), ("model", "hidden"), ("model", "heads"), ("model", "max_steps"),
    ("task", "n_train"), ("task", "n_val"), ("task", "n_test"), ("intervention", "low_rank_dimension"),
    ("intervention", "lr"), ("trainer", "devices"), ("trainer", "num_nodes"), ("trainer", "max_steps"),
    ("trainer", "batch_size"), ("sweep", "probe", "max_epochs"), ("sweep", "probe", "tables_mib"), ("sweep", "num_shards"), ("intervention", "temperature_start"),
    ("intervention", "temperature_end"), ("tracing", "window"), ("tracing", "samples"), ("tracing", "facts"),
    ("tracing", "noise_scale"), ("steering", "max_new_tokens"), ("steering", "temperature"), ("steering", "samples"),
}
NON_NEGATIVE = {
    ("intervention", "boundary_penalty"), ("sweep", "probe", "weight_decay"), ("steering", "top_k"),
}


def _floats_in(value: Any) -> list[float]:
    """The float values of a scalar or a list (a nan or inf reaches training and turns every
    weight into nan without an error, so these are checked up front)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if isinstance(v, float)]


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _walk(schema: type, data: Any, path: tuple[str, ...], errors: list[str]) -> None:
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    if not isinstance(data, dict):
        errors.append(f"{'.'.join(path) or 'config'}: expected a mapping, got {data!r}")
        return
    for key in sorted(set(data) - names - {"hydra", "defaults"}):
        where = ".".join(path + (key,))
        errors.append(f"unknown key '{where}'; allowed under '{'.'.join(path) or '<top>'}': {sorted(names)}")
    for f in dataclasses.fields(schema):
        if f.name not in data:
            continue
        value, annotation = data[f.name], hints[f.name]
        key_path = path + (f.name,)
        where = ".".join(key_path)
        if dataclasses.is_dataclass(annotation):
            _walk(annotation, value, key_path, errors)
            continue
        if not _type_ok(value, annotation):
            errors.append(f"'{where}' = {value!r} has the wrong type; expected {annotation}")
            continue
        if not all(math.isfinite(v) for v in _floats_in(value)):
            errors.append(f"'{where}' = {value!r} must be finite (no nan or inf)")
            continue
        if key_path in NON_NEGATIVE and value < 0:
            errors.append(f"'{where}' = {value!r} must be zero or more")
        allowed = ALLOWED_VALUES.get(key_path)
        if allowed is not None and value not in allowed:
            errors.append(f"'{where}' = {value!r} is not allowed; allowed: {list(allowed)}")
        if key_path in POSITIVE and value is not None and value <= 0:
            errors.append(f"'{where}' = {value!r} must be positive")


def validate(data: dict[str, Any]) -> list[str]:
    """Every problem of a composed config (as a plain dict), unknown keys included."""
    errors: list[str] = []
    _walk(RunConfig, data, (), errors)
    model = data.get("model", {}) if isinstance(data.get("model"), dict) else {}
    if model.get("kind") == "hub" and not model.get("name"):
        errors.append("'model.name' is required when model.kind=hub (a Hugging Face Hub id)")
    sweep = data.get("sweep", {}) if isinstance(data.get("sweep"), dict) else {}
    per_pass = sweep.get("sites_per_pass", "auto")
    if isinstance(per_pass, str) and per_pass != "auto" or isinstance(per_pass, int) and per_pass <= 0:
        errors.append(f"'sweep.sites_per_pass' = {per_pass!r} must be a positive number, auto or null")
    shard, shards = sweep.get("shard", 0), sweep.get("num_shards", 1)
    if isinstance(shard, int) and isinstance(shards, int) and not 0 <= shard < max(shards, 1):
        errors.append(f"'sweep.shard' = {shard} must be in 0..{shards - 1} (sweep.num_shards = {shards})")
    if model.get("device_map") is not None:
        if model.get("kind") != "hub":
            errors.append("'model.device_map' applies to model.kind=hub only")
        if importlib.util.find_spec("accelerate") is None:
            errors.append("model.device_map needs the accelerate package: pip install 'das_train[big]'")
    logger = data.get("logger", {}) if isinstance(data.get("logger"), dict) else {}
    package = {"wandb": "wandb", "tensorboard": "tensorboard"}.get(logger.get("kind"))
    if package is not None:
        if importlib.util.find_spec(package) is None:
            errors.append(f"logger={logger['kind']} needs the {package} package: pip install 'das_train[{package}]'")
    return errors


def schema_keys() -> set[str]:
    """Every dotted key the schema knows, for checking command-line overrides."""
    keys: set[str] = set()

    def visit(schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            name = f"{prefix}{f.name}"
            keys.add(name)
            if dataclasses.is_dataclass(hints[f.name]):
                visit(hints[f.name], name + ".")

    visit(RunConfig, "")
    return keys


class ConfigError(ValueError):
    """A run's config has problems; the message lists all of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n  - " + "\n  - ".join(problems))
