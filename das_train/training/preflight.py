"""Checks a DAS sweep's config against the model it will run on, before any work.

The schema (:mod:`das_train.training.schema`) checks keys, types and values one by one; what
it cannot see needs the task and the model's architecture: whether the swept component exists
in the model's family, whether the layers and positions exist, whether the intervention can be
trained and its rank fits the sites' width. Without these checks a typo surfaced only after a
tiny model had been trained and thousands of pairs generated and filtered, one problem per
run. Here every problem is collected and raised as one :class:`ConfigError`:

- for ``model.kind=tiny`` and ``mlp`` the architecture is known from the config alone (the
  same config objects the trainers build), so :func:`check_sweep` runs before anything;
- for ``model.kind=hub`` :func:`check_loaded_model` runs right after the model loads, before
  the pair filter's forwards;
- :func:`check_pairs_left` turns a pair filter that emptied a split into advice.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from das_train.core.sites import (
    HEAD_COMPONENTS,
    TABLES,
    ArchitectureTable,
    missing_table_message,
    table_for,
    table_for_config,
)
from das_train.data.pair_contract import CounterfactualTask, TaskSpec
from das_train.data.tiny_lm import tiny_lm_config
from das_train.interventions.base import INTERVENTION_REGISTRY, Intervention
from das_train.tasks.hierarchical_equality import ExperimentSize, model_config
from das_train.training.das_module import trainable_intervention_class
from das_train.training.schema import (
    ConfigError,
    InterventionConfig,
    ModelConfig,
    RunConfig,
    SweepConfig,
)
from das_train.training.task_loading import load_task

EVALUATED_SPLITS = ("train", "test")
"""The splits a sweep reads (validation is skipped: IIA is measured once, on the test split)."""


def sweep_list_problems(sweep: SweepConfig) -> list[str]:
    """Empty or repeated seeds, layers and positions: an empty list silently swept nothing,
    and a repeated entry trained and counted the same site twice in the table's means."""
    problems = []
    fixes = {
        "seeds": "give at least one seed, e.g. [0]",
        "layers": "null sweeps every layer",
        "positions": "null sweeps every position of the task",
    }
    for name, fix in fixes.items():
        values = getattr(sweep, name)
        if values is None:
            continue
        values = list(values)
        if not values:
            problems.append(f"'sweep.{name}' = [] is empty; {fix}")
        repeated = sorted(v for v, n in Counter(values).items() if n > 1)
        if repeated:
            problems.append(f"'sweep.{name}' = {values} repeats {', '.join(map(str, repeated))}; "
                            "each entry must appear once (a repeat trains and counts the same sites twice)")
    return problems


def trainable_interventions(iit: bool) -> list[str]:
    """The registered interventions DAS (or IIT, ``iit``) can train: they take a source, have
    parameters unless the model trains, and are not one of the registry's base classes."""
    return sorted(
        name for name, cls in INTERVENTION_REGISTRY.items()
        if cls.source_kind == "interchange" and (cls.trainable or iit)
        and not name.startswith("_") and cls.__module__ != Intervention.__module__
    )


def intervention_problems(intervention: InterventionConfig) -> list[str]:
    """``intervention.type`` must name a registered intervention DAS can train."""
    name, iit = intervention.type, intervention.iit
    if name not in INTERVENTION_REGISTRY:
        return [f"'intervention.type' = {name!r} is not a registered intervention; allowed: "
                f"{trainable_interventions(iit)}"]
    try:
        trainable_intervention_class(name, iit)
    except ValueError as err:
        return [f"'intervention.type' = {name!r}: {err}; allowed: {trainable_interventions(iit)}"]
    return []


def _uses_rank(name: str) -> bool:
    """Whether ``intervention.low_rank_dimension`` shapes this intervention (a boundless one
    learns its own boundary and ignores it)."""
    cls = INTERVENTION_REGISTRY[name]
    return "low_rank_dimension" in inspect.signature(cls.__init__).parameters or hasattr(cls, "set_interchange_dim")


def swept_widths(sweep: SweepConfig, table: ArchitectureTable, config: Any, spec: TaskSpec,
                 layers: Sequence[int]) -> dict[str, int]:
    """The width of every swept site, by ``component-L<layer>``."""
    sites = [(sweep.component, layer) for layer in layers]
    if sweep.include_embeddings and spec.is_language_model_task:
        sites.append(("block_input", 0))
    widths = {}
    for component, layer in sites:
        row = table.components[component]
        widths[f"{component}-L{layer}"] = row.layer_width(config, layer) if row.layer_width else row.width(config)
    return widths


def site_problems(sweep: SweepConfig, intervention: InterventionConfig, table: ArchitectureTable, config: Any,
                  spec: TaskSpec) -> list[str]:
    """The swept component, layers and positions exist, and the intervention's rank fits every
    site of the model of architecture ``table`` and ``config``."""
    problems = []
    if table.recurrent:
        # Every component of a recurrent table is indexed by time step (unit 't'), and a sweep
        # places its interventions at token positions: none can be swept.
        return [f"'sweep.component' = {sweep.component!r}: {table.name} models are recurrent, "
                "every component is indexed by time step (unit 't') and a sweep intervenes at "
                "token positions, so no component can be swept; use a model of another family "
                f"({sorted(t.name for t in TABLES if not t.recurrent)}) or an IntervenableModel "
                "with unit 't' directly"]
    sweepable = sorted(c for c in table.components if c not in HEAD_COMPONENTS)
    if sweep.component not in sweepable:
        problems.append(f"'sweep.component' = {sweep.component!r} is not a component a sweep can use on "
                        f"{table.name} models; allowed: {sweepable}")
    n_layers = table.num_layers(config)
    layers = list(sweep.layers) if sweep.layers is not None else list(range(n_layers))
    out_of_range = sorted({layer for layer in layers if not 0 <= layer < n_layers})
    if out_of_range:
        problems.append(f"'sweep.layers' = {layers}: {out_of_range} out of range; the model has "
                        f"layers 0..{n_layers - 1}")
    unknown = [p for p in (sweep.positions or []) if p not in spec.positions]
    if unknown:
        problems.append(f"'sweep.positions' = {list(sweep.positions)}: {unknown} unknown; the task's "
                        f"positions: {list(spec.positions)}")
    if problems or intervention_problems(intervention) or not _uses_rank(intervention.type):
        return problems
    widths = swept_widths(sweep, table, config, spec, layers)
    rank = intervention.low_rank_dimension
    too_narrow = {site: width for site, width in widths.items() if width < rank}
    if too_narrow:
        problems.append(f"'intervention.low_rank_dimension' = {rank} exceeds the width of swept sites "
                        f"{too_narrow}; allowed: 1..{min(widths.values())}")
    return problems


def task_spec(task: CounterfactualTask, tokenizer: Any) -> TaskSpec:
    """The task's spec (its positions are measured with the tokenizer of a text task)."""
    return task.spec(tokenizer) if tokenizer is not None else task.spec()  # type: ignore[call-arg]


def planned_model(model: ModelConfig, task: CounterfactualTask) -> tuple[Any, TaskSpec] | list[str]:
    """(the config of the model ``model.kind=tiny|mlp`` will train, the task's spec), built
    as the trainers build them but without weights; or the problems that stop building it."""
    if model.kind == "tiny" and hasattr(task, "build_tokenizer"):
        if model.hidden % model.heads:
            return [f"'model.hidden' = {model.hidden} must be a multiple of 'model.heads' = "
                    f"{model.heads} (each head takes an equal share of the width)"]
        tokenizer = task.build_tokenizer()
        return tiny_lm_config(tokenizer, model.n_layer, model.hidden, model.heads, 0), task_spec(task, tokenizer)
    equality = getattr(task, "equality", None)
    if equality is None:
        return [f"model.kind=mlp needs a vector task such as hierarchical_equality, not {task.name}"]
    return model_config(equality, ExperimentSize(hidden=model.hidden)), task_spec(task, None)


def planned_site_problems(config: RunConfig) -> list[str]:
    """The task exists, and for ``model.kind=tiny|mlp`` the sweep's sites fit the model it
    will train (for ``hub`` they wait for :func:`check_loaded_model`)."""
    try:
        task = load_task(config.task.name, config.task)
    except ConfigError as err:
        return err.problems
    if config.model.kind == "hub":
        return []
    planned = planned_model(config.model, task)
    if isinstance(planned, list):
        return planned
    architecture, spec = planned
    return site_problems(config.sweep, config.intervention, table_for_config(architecture), architecture, spec)


SWEEP_CHECKS: tuple[Callable[[RunConfig], list[str]], ...] = (
    lambda config: sweep_list_problems(config.sweep),
    lambda config: intervention_problems(config.intervention),
    planned_site_problems,
)
"""Each reads its own part of the config, so one can run where another part is malformed."""


def sweep_problems(config: RunConfig) -> list[str]:
    """Every problem of a das_sweep config found without loading or training a model."""
    return [problem for check in SWEEP_CHECKS for problem in check(config)]


def check_sweep(config: RunConfig) -> None:
    """Raises one ConfigError naming every problem :func:`sweep_problems` finds."""
    problems = sweep_problems(config)
    if problems:
        raise ConfigError(problems)


def check_loaded_model(config: RunConfig, model: Any, spec: TaskSpec) -> None:
    """The sweep's sites against a model just loaded (``model.kind=hub``), before any forward."""
    table = table_for(model)
    if table is None:
        raise ConfigError([f"'model.name' = {config.model.name!r}: {missing_table_message(model)}"])
    problems = site_problems(config.sweep, config.intervention, table, model.config, spec)
    if problems:
        raise ConfigError(problems)


def check_pairs_left(model: ModelConfig, kept: dict[str, int], dropped: dict[str, int]) -> None:
    """A pair filter that left a split the sweep reads empty is refused with what to try
    (training on no pairs ended in a bare StopIteration)."""
    empty = [split for split in EVALUATED_SPLITS if kept.get(split, 0) == 0]
    if not empty:
        return
    if model.kind == "hub":
        advice = "a model that computes the task"
    else:
        advice = f"more model.max_steps (now {model.max_steps}) so the model learns the task"
    problems = [
        f"no {split} pairs left: {kept[split] + dropped.get(split, 0)} generated, {dropped.get(split, 0)} dropped "
        f"by the frozen-model filter (the model got base or source wrong on every one); try {advice}, "
        "or task.filter_pairs=false to keep every pair"
        for split in empty
    ]
    raise ConfigError(problems)
