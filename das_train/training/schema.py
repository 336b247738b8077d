"""The typed shape of a run's config: the one home of every default and constraint.

Recipes and config groups are YAML that hold only what differs from these dataclasses (the
command line composes them on top of :func:`defaults`). Each field says its type, default,
allowed values or bounds (through :func:`option`) and, in the docstring under it, what it does;
:mod:`das_train.training.validation` reads all of that to report every problem at once.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from das_train.training.schema_jobs import (
    IITConfig,
    MibConfig,
    PublishConfig,
    SteeringConfig,
    TracingConfig,
    option,
)

MODEL_KINDS = ("tiny", "hub", "mlp")
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("csv", "wandb", "tensorboard", "none")
PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "64-true")
PAIR_FORMATS = ("auto", "plain", "causalgym", "mib", "ravel", "pyvene")
PAIR_SPAN_TOKENS = ("first", "last")
ANSWER_SCORES = ("first_token", "sequence")
SWEEP_METHODS = ("das", "boundless", "probe_direction", "diff_means", "pca", "full_vector", "random_subspace")
"""The featurizers a sweep can measure side by side (README "The validity card"): the trained
intervention (``das``: ``intervention.type`` at ``intervention.low_rank_dimension``), a Boundless
DAS sweep next to it, and five fixed subspaces that cost no training."""
UNTRAINED_METHODS = ("probe_direction", "diff_means", "pca", "full_vector", "random_subspace")
T = TypeVar("T")


@dataclass
class ModelConfig:
    kind: str = option("tiny", allowed=MODEL_KINDS)
    """``tiny`` (a GPT-NeoX trained on the task on the spot), ``hub`` (a Hugging Face causal LM,
    from the Hub or a local folder) or ``mlp``."""
    name: str | None = None
    """Hub model id, or a ``save_pretrained`` folder holding the model and its tokenizer (kind=hub):
    a name starting with ``/``, ``./``, ``../`` or ``~``, or that exists on disk, is read from disk
    only."""
    revision: str = "main"
    """Hub revision (kind=hub), recorded with the results; ignored for a local folder, whose
    path and file fingerprint are recorded instead."""
    dtype: str = option("float32", allowed=DTYPES)
    """Weights' dtype: float32, bfloat16 or float16."""
    device_map: str | None = None
    """For a frozen model larger than one device (kind=hub): ``auto`` spreads its layers over
    the visible GPUs (and CPU) with accelerate; the intervention trains on one device in fp32."""
    n_layer: int = option(4, positive=True)
    """Layers of a model trained on the spot."""
    hidden: int = option(64, positive=True)
    """Width of a model trained on the spot."""
    heads: int = option(4, positive=True)
    """Attention heads of a tiny model."""
    max_steps: int = option(3000, positive=True)
    """Upper bound on the steps that train a model on the spot (it stops once perfect)."""
    random_init: bool = False
    """Re-initialise the model's weights (seeded by ``seed``) once the pairs are filtered with the
    trained model, so the sweep runs on the same pairs with an untrained network: the control
    ``sweep.random_init_control`` runs for you."""


@dataclass
class TaskConfig:
    name: str = "gender"
    """A module of ``tasks/`` holding one CounterfactualTask."""
    n_train: int = option(2000, positive=True)
    """Counterfactual pairs to train interventions on."""
    n_val: int = option(256, positive=True)
    """Pairs for validation during training."""
    n_test: int = option(512, positive=True)
    """Held-out pairs that IIA and probe accuracy are reported on."""
    filter_pairs: bool = True
    """Keep only pairs the frozen model gets right on base and source."""
    # -- task=pairs: counterfactual pairs read from a file (das_train/data/pair_files) --------
    path: str | None = None
    """The pair file (.jsonl, .json, .csv, .parquet, .pt), a ``save_to_disk`` folder or a Hub
    dataset id (``owner/name``, or ``owner/name:config`` for one of its configs); relative paths
    are read from the working directory; ``pkg://PACKAGE/FILE`` is a file shipped in a package."""
    format: str = option("auto", allowed=PAIR_FORMATS)
    """``plain`` (columns named below), ``causalgym``, ``mib``, ``ravel``, ``pyvene`` (tensors) or
    ``auto``: told apart by their columns."""
    base: str = "base"
    """Column of the base text (plain format)."""
    sources: list[str] = field(default_factory=lambda: ["source"])
    """Column(s) of the source text; several give one pair per source (plain format)."""
    base_label: str = "base_label"
    """Column of the base's answer: text (tokenized after the prompt) or a token id."""
    source_label: str | None = "source_label"
    """Column of the source's answer; with none, set filter_pairs=false."""
    counterfactual_label: str | list[str] = "counterfactual_label"
    """Column of the answer after the interchange (one per source column, or one for all)."""
    base_value: str | None = None
    """Column of the variable's value in the base (the probe's target; strings or ints, made
    class ids in sorted order); null: the base's answer stands for it."""
    source_value: str | None = None
    """Column of the variable's value in the source."""
    split: str | None = "split"
    """Column naming each row's split (train, val/validation/dev, test), used when the file has
    it; otherwise the rows are shuffled with the seed and cut into n_train/n_val/n_test
    (shrunk in proportion when the file is smaller)."""
    template: str | None = None
    """Column of a template such as ``"{name} walked because"`` whose slots each row fills
    (``base_<slot>`` or ``<slot>`` for the base, ``<source>_<slot>``/``source_<slot>``/``<slot>``
    for a source); replaces the base and source text columns."""
    positions: dict[str, Any] = field(default_factory=dict)
    """Named positions, in table order (empty: ``{last: last}``), e.g. ``{subject: "{entity}", verb: span:2, bos: 0, last: last}``: ``last``;
    a token index (int, or ``index:N``, negative from the end); ``span:N`` (CausalGym pieces); a
    ``{slot}`` (the row's value of the slot, where the template puts it or found in the text);
    ``marker:TEXT`` or any other string (its first occurrence as whole words). Set the whole map
    on the command line: ``task.positions={subject:'{entity}',last:last}``."""
    span_token: str = option("last", allowed=PAIR_SPAN_TOKENS)
    """Which token of a span of several tokens a position takes: ``last`` (default; the token
    where the whole word has been read) or ``first``."""
    answer_prefix: str = ""
    """Put before every text answer before tokenizing (e.g. ``" "`` for files whose answers are
    written without the space the model predicts)."""
    answer_score: str = option("first_token", allowed=ANSWER_SCORES)
    """How a text answer of several tokens is scored (pair files only). ``first_token``: by its
    first token, the next-token argmax at the last position (two answers sharing a first token
    are refused). ``sequence``: by its whole tokens: training minimizes the counterfactual
    answer's teacher-forced negative log-likelihood, and a prediction (IIA, the pair filter) is
    the candidate (a MIB row's ``choices``, else the file's distinct answers) with the highest
    summed log-probability; one forward per candidate, and every site is fitted on its own (no
    batched one-pass fit). Needs text answers of a pair file (task=pairs)."""
    score_among: str = option("vocabulary", allowed=("vocabulary", "answers"))
    """What a language model's prediction is chosen among (DAS sweeps): ``vocabulary`` (the
    argmax over every token, as pyvene's tutorials score IIA) or ``answers`` (the task's output
    labels only, as CausalGym and MIB score: which answer the model prefers). With
    ``answers`` an untrained network (the random-init control) is not at 0 by construction.
    The frozen-model filter, training, IIA and every featurizer read the same scores. Not with
    ``answer_score=sequence`` (it scores among its candidates already)."""
    counterfactual: str | None = None
    """MIB: which ``<name>_counterfactual`` column gives the source (needed when there are several)."""
    where: dict[str, Any] = field(default_factory=dict)
    """Keep only rows whose columns equal these values, e.g. ``{task: agr_gender}`` for CausalGym."""
    variable: str = "variable"
    """Name of the interchanged variable, for reports."""


@dataclass
class InterventionConfig:
    type: str = "LowRankRotatedSpaceIntervention"
    """A trainable intervention from das_train's registry."""
    low_rank_dimension: int = option(1, positive=True)
    """k of a low-rank rotation; the interchanged size of a full rotation."""
    lr: float = option(0.01, positive=True)
    """Adam's learning rate."""
    boundary_penalty: float = option(0.0, non_negative=True)
    """Weight of the boundless boundary's sparsity penalty."""
    temperature_start: float = option(50.0, positive=True)
    """Boundless temperature at step 0."""
    temperature_end: float = option(0.1, positive=True)
    """Boundless temperature at the last step."""
    iit: bool = False
    """Interchange intervention training: update the model too."""


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    """Lightning accelerator: cpu, gpu, auto."""
    devices: int = option(1, positive=True)
    """Devices per node."""
    num_nodes: int = option(1, positive=True)
    """Nodes (SLURM or torchrun)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, ..."""
    precision: str = option("32-true", allowed=PRECISIONS)
    """Lightning precision."""
    max_steps: int = option(300, positive=True)
    """Optimizer steps per site."""
    batch_size: int = option(64, positive=True)
    """Pairs per step and per device."""
    shuffle: bool = True
    """Shuffle training pairs; off, N devices with batch_size/N see one device's batches."""


@dataclass
class LoggerConfig:
    kind: str = option("csv", allowed=LOGGERS)
    """csv, wandb, tensorboard or none."""
    project: str = "das_train"
    """Weights & Biases project."""


@dataclass
class ProbeConfig:
    max_epochs: int = option(40, positive=True)
    """Epochs of linear-probe training."""
    lr: float = 0.01
    """The probe's learning rate."""
    weight_decay: float = option(0.0, non_negative=True)
    """The probe's weight decay."""
    tables_mib: float = option(1024, positive=True)
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
    num_shards: int = option(1, positive=True)
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
    methods: list[str] = field(default_factory=lambda: ["das", *UNTRAINED_METHODS])
    """Featurizers measured at every site on the same test pairs (any of ``SWEEP_METHODS``, ``das``
    first): ``das``; ``boundless`` (a second sweep with Boundless DAS, in run_dir/boundless);
    ``probe_direction`` (the probe's weight directions, in activation space), ``diff_means``
    (difference of class means), ``pca`` (top-k principal directions, k = the intervention's
    rank), ``full_vector`` (the whole site, vanilla interchange) and ``random_subspace`` (a
    seeded random subspace of rank k). The last five are not trained: they read the
    activations the probes collect and cost one test pass each."""
    random_init_control: bool = False
    """Also run the ``das`` sweep on a copy of the model with re-initialised weights (one more
    sweep, in run_dir/random_init) and report its IIA beside the real model's."""
    bootstrap: int = option(1000, positive=True)
    """Resamples of the test pairs for the table's 95% interval of each IIA."""
    skip_shared_prefix: bool = True
    """Test untrained, rather than train, the sites where every pair's base and source agree on
    all positions up to the site's (a BOS token, a template's fixed opening): there an
    interchange returns the base whatever its parameters, so the IIA is the same and training
    would only follow rounding noise (das_train/training/shared_prefix.py). Causal models, DAS
    interventions without a boundary penalty; the log names the sites."""


@dataclass
class RunConfig:
    recipe: str = "gender_tiny"
    """The recipe's name (a YAML file in recipes/)."""
    job: str = option("das_sweep", allowed=("das_sweep", "causal_tracing", "steering", "export_mib", "iit"))
    """``das_sweep`` (DAS and probes over sites), ``causal_tracing`` (Meng et al. 2022),
    ``steering`` (a word's embedding added at every decoding step, the paper's Figure 1) or
    ``export_mib`` (a finished sweep's trained sites written for MIB's causal-variable track;
    reads run_dir, writes ``mib.out``) or ``iit`` (interchange intervention training of the
    hierarchical equality MLP, against the same MLP trained without it; see ``iit``)."""
    run_dir: str = "runs/gender_tiny"
    """The run's one directory: config, results, checkpoints, interventions, logs, table,
    heatmaps and Hydra's ``.hydra/``. ``hydra.run.dir`` is the same setting (given, it wins).
    In a multirun each job writes to run_dir/<swept key=value,...>, except that shards (only
    ``sweep.shard`` swept) share run_dir. Running the same command again resumes (see
    ``resume``). One process at a time writes a results file of it: a second one is refused at
    once, naming the holder (shards of one sweep each have their own and run side by side)."""
    resume: str = option("auto", allowed=("auto", "fresh"))
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
    mib: MibConfig = field(default_factory=MibConfig)
    iit: IITConfig = field(default_factory=IITConfig)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RunConfig:
        """The typed config of composed config data (a plain dict or a DictConfig), built once
        a run's config is validated, so that every part a function receives is typed."""
        return typed(cls, data)

    def as_data(self) -> dict[str, Any]:
        """Plain data, key for key what the config holds: what ``config.yaml`` records and
        what the fingerprint of a run's results is computed from."""
        return dataclasses.asdict(self)


def typed(schema: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """``schema`` filled from config data: a section is built from its mapping, a list is
    copied, any other value is taken as it is (not converted: ``1`` given for a float stays
    ``1``, so the config recorded and fingerprinted is the one given). A key the data leaves
    out takes the schema's default and one the schema does not know (Hydra's own) is left out:
    the validation names both."""
    if not isinstance(data, Mapping):
        keys = [f.name for f in dataclasses.fields(schema)]
        raise ConfigError([f"'{where or 'config'}' = {data!r}: expected a mapping with keys from {keys}"])
    hints = typing.get_type_hints(schema)
    values = {}
    for f in dataclasses.fields(schema):
        if f.name not in data:
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(hints[f.name]):
            value = typed(hints[f.name], value, f"{where}.{f.name}".lstrip("."))
        elif isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)
        values[f.name] = value
    return schema(**values)


def defaults() -> dict[str, Any]:
    """Every key's default as plain data: the base a recipe is composed on, and what a config
    given to ``run()`` from Python is completed with."""
    return dataclasses.asdict(RunConfig())


def complete(data: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data`` (a composed config as plain data) over ``base`` (the :func:`defaults`): every
    key it leaves out takes the default; a value that is not a mapping replaces the default
    whole, so a wrong type stays for the validation to name."""
    merged = dict(defaults() if base is None else base)
    for key, value in data.items():
        below = merged.get(key)
        merged[key] = complete(value, below) if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


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


def map_keys() -> set[str]:
    """The keys whose value is a map the user writes whole (``task.positions``, ``task.where``)."""
    return {key for key in schema_keys() if typing.get_origin(_hint(key)) is dict}


def _hint(key: str) -> Any:
    schema: Any = RunConfig
    for part in key.split("."):
        schema = typing.get_type_hints(schema)[part]
    return schema


class ConfigError(ValueError):
    """A run's config has problems; the message lists all of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid config:\n  - " + "\n  - ".join(problems))
