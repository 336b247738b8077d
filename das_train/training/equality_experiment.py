"""The DAS experiment of Geiger et al. (2023) on the hierarchical equality task, at two sizes.

The paper's first case study, reproduced with the small loop of :mod:`das_train.training.das_loop`:
an MLP trained on the task, then DAS (a full rotation with a subspace per variable), the
neuron-aligned baseline, a fixed-size rotation and boundless DAS at its first hidden layer.
``scripts/das_hierarchical_equality.py`` prints the full-size table; a test runs the small one.
The task and its MLP live in the task plugin (``das_train.tasks.hierarchical_equality``).
"""

from __future__ import annotations

from das_train.core.model import IntervenableModel
from das_train.interventions.masks import BoundlessRotatedSpaceIntervention
from das_train.interventions.rotated import RotatedSpaceIntervention
from das_train.tasks.hierarchical_equality import (
    VARIABLES,
    EqualityTask,
    ExperimentSize,
    train_model,
)
from das_train.training.das_loop import accuracy, fit

BOUNDARY_PENALTY = 0.2
FULL = ExperimentSize()
SMALL = ExperimentSize(train_examples=50_000, model_epochs=8, das_steps=800, batch_size=256, eval_pairs=4_000)


def _run(intervenable, batch):
    _, out = intervenable(
        {"inputs_embeds": batch["base"]},
        [{"inputs_embeds": batch["source"]}],
        subspaces=batch.get("subspaces"),
    )
    return out.logits


def _batches(task: EqualityTask, size: ExperimentSize, seed: int, variable: str | None, with_subspaces: bool):
    def make(step: int):
        pairs = task.counterfactual_pairs(size.batch_size, seed=seed * 1_000_003 + step, variable=variable)
        if with_subspaces:
            pairs["subspaces"] = [[int(v)] for v in pairs["variable"]]
        return pairs

    return make


def _evaluate(intervenable, task, size, variable, with_subspaces, seed=99):
    pairs = task.counterfactual_pairs(size.eval_pairs, seed=seed, variable=variable)
    if with_subspaces:
        pairs["subspaces"] = [[int(v)] for v in pairs["variable"]]
    return accuracy(intervenable, iter([pairs]), _run)


def das_table(size: ExperimentSize = FULL, seed: int = 0, embedding_dim: int = 4) -> list[dict]:
    """Rows of (method, variable(s), subspace size, IIA) at the first hidden layer."""
    task = EqualityTask(embedding_dim=embedding_dim, seed=seed)
    model, model_acc = train_model(task, size, seed)
    width = size.hidden
    half = width // 2
    partition = [[0, half], [half, width]]
    rows = [{"method": "model accuracy", "variables": "-", "size": "-", "iia": model_acc}]
    site = {"layer": 0, "component": "block_output"}

    rotated = IntervenableModel(
        {**site, "intervention_type": RotatedSpaceIntervention, "subspace_partition": partition}, model
    )
    fit(rotated, _batches(task, size, seed, None, True), _run, size.das_steps, lr=3e-3, seed=seed)
    neurons = IntervenableModel({**site, "subspace_partition": partition}, model)
    for variable in VARIABLES:
        for name, im in (("DAS rotation", rotated), ("neuron-aligned", neurons)):
            rows.append({"method": name, "variables": variable, "size": half,
                         "iia": _evaluate(im, task, size, variable, True)})

    fixed = IntervenableModel(
        {**site, "intervention": RotatedSpaceIntervention(embed_dim=width, interchange_dim=half)}, model
    )
    fit(fixed, _batches(task, size, seed + 1, "WX", False), _run, size.das_steps, lr=3e-3, seed=seed)
    rows.append({"method": "fixed-size rotation", "variables": "WX", "size": half,
                 "iia": _evaluate(fixed, task, size, "WX", False)})

    boundless = IntervenableModel({**site, "intervention_type": BoundlessRotatedSpaceIntervention}, model)
    intervention = boundless.interventions[boundless.sorted_keys[0]]
    start = intervention.intervention_size()
    fit(boundless, _batches(task, size, seed + 1, "WX", False), _run, size.das_steps, lr=3e-3,
        penalty_weight=BOUNDARY_PENALTY, temperature=(50.0, 0.1), seed=seed)
    rows.append({"method": "boundless DAS", "variables": "WX",
                 "size": f"{start} -> {intervention.intervention_size()}",
                 "iia": _evaluate(boundless, task, size, "WX", False)})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| method | variable | subspace size | IIA |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['variables']} | {r['size']} | {r['iia']:.3f} |")
    return "\n".join(lines)
