"""The hierarchical equality task of Geiger et al. (2023), the DAS paper's first case study.

An input is four objects ``(w, x, y, z)``, each a random vector from a fixed vocabulary of
object embeddings; the label is ``(w == x) == (y == z)``. The causal model has two
intermediate variables, ``WX = (w == x)`` and ``YZ = (y == z)``. A counterfactual pair takes
one variable's value from a source input: intervening on ``WX`` gives the label
``WX(source) == YZ(base)``.

Everything is generated from a seed with torch alone, so the task runs anywhere, offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from datasets import Dataset, Features, List, Value

from das_train.core.builtin_models import MLPClassifier, MLPConfig, create_mlp_classifier
from das_train.data.causal_model import CausalModel
from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_EMBEDS,
    BASE_LABEL,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_EMBEDS,
    SOURCE_LABEL,
    SOURCE_VARIABLE,
    CounterfactualTask,
    TaskSpec,
)

VARIABLES = ("WX", "YZ")


def equality_causal_model(n_objects: int) -> CausalModel:
    """The task's causal model over object ids; its functions take ``(n,)`` tensors, so one
    call runs a whole batch."""
    objects = list(range(n_objects))
    return CausalModel(
        ["W", "X", "Y", "Z", "WX", "YZ", "O"],
        {"W": objects, "X": objects, "Y": objects, "Z": objects,
         "WX": [True, False], "YZ": [True, False], "O": [True, False]},
        {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]},
        {"W": lambda: 0, "X": lambda: 0, "Y": lambda: 0, "Z": lambda: 0,
         "WX": lambda w, x: w == x, "YZ": lambda y, z: y == z, "O": lambda wx, yz: wx == yz},
    )


def _setting(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """(n, 4) object ids as the causal model's input setting."""
    return {name: ids[:, i] for i, name in enumerate("WXYZ")}


@dataclass(frozen=True)
class EqualityTask:
    """Object vocabulary and sampling for the task.

    Args:
        embedding_dim: width of one object's vector; an input is ``4 * embedding_dim`` wide.
        n_objects: size of the object vocabulary.
        seed: seed of the vocabulary.
    """

    embedding_dim: int = 4
    n_objects: int = 100
    seed: int = 0

    def vocabulary(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.n_objects, self.embedding_dim, generator=gen) * 2 - 1  # (objects, dim)

    def _sample_objects(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """(n, 4) object ids with each of WX and YZ equal half of the time."""
        ids = torch.randint(0, self.n_objects, (n, 4), generator=gen)
        for first, second in ((0, 1), (2, 3)):
            same = torch.rand(n, generator=gen) < 0.5
            ids[same, second] = ids[same, first]
            # resample accidental equalities among the pairs meant to differ
            clash = ~same & (ids[:, second] == ids[:, first])
            while bool(clash.any()):
                ids[clash, second] = torch.randint(0, self.n_objects, (int(clash.sum()),), generator=gen)
                clash = ~same & (ids[:, second] == ids[:, first])
        return ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.vocabulary()[ids].reshape(ids.shape[0], -1)  # (n, 4 * dim)

    def causal_model(self) -> CausalModel:
        return equality_causal_model(self.n_objects)

    def variables(self, ids: torch.Tensor) -> torch.Tensor:
        """(n, 2) values of WX and YZ."""
        setting = self.causal_model().run_forward(_setting(ids))
        return torch.stack([setting["WX"], setting["YZ"]], dim=1).long()

    def label(self, ids: torch.Tensor, source_ids: torch.Tensor | None = None,
              variable: str | None = None) -> torch.Tensor:
        """(n,) output on ``ids``, or after taking ``variable`` from ``source_ids``."""
        model = self.causal_model()
        if variable is None:
            return model.run_forward(_setting(ids))["O"].long()
        return model.run_interchange(_setting(ids), {variable: _setting(source_ids)})["O"].long()

    def factual(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels for training the model itself."""
        gen = torch.Generator().manual_seed(seed)
        ids = self._sample_objects(n, gen)
        return self.embed(ids), self.label(ids)

    def counterfactual_pairs(self, n: int, seed: int, variable: str | None = None) -> dict[str, torch.Tensor]:
        """Pairs for interchange interventions on ``variable`` (or a random one per pair).

        Returns ``base``, ``source`` (inputs), ``variable`` (0 for WX, 1 for YZ), ``base_label``
        and ``counterfactual_label``.
        """
        gen = torch.Generator().manual_seed(seed)
        base_ids, source_ids = self._sample_objects(n, gen), self._sample_objects(n, gen)
        if variable is None:
            which = torch.randint(0, 2, (n,), generator=gen)
        else:
            which = torch.full((n,), VARIABLES.index(variable))
        per_variable = [self.label(base_ids, source_ids, name) for name in VARIABLES]
        return {
            "base": self.embed(base_ids),
            "source": self.embed(source_ids),
            "variable": which,
            "base_label": self.label(base_ids),
            "counterfactual_label": torch.where(which == 0, *per_variable),
        }


# -- the MLP that computes the task ----------------------------------------------------------


@dataclass(frozen=True)
class ExperimentSize:
    """How much data and how many steps the experiment uses: the MLP's training here, and
    DAS's steps and pairs in :mod:`das_train.training.equality_experiment`."""

    train_examples: int = 100_000
    model_epochs: int = 10
    hidden: int = 64
    das_steps: int = 2_000
    batch_size: int = 256
    eval_pairs: int = 10_000


def model_config(task: EqualityTask, size: ExperimentSize) -> MLPConfig:
    """The MLP :func:`train_model` builds; also read before training, so a run's sites and
    widths are checked without training it."""
    return MLPConfig(h_dim=size.hidden, n_layer=3, input_dim=4 * task.embedding_dim, num_classes=2,
                     activation_function="relu", pdrop=0.0, squeeze_output=False)


def train_model(task: EqualityTask, size: ExperimentSize, seed: int = 0) -> tuple[MLPClassifier, float]:
    """A 3-layer MLP trained on the task; returns (model, held-out accuracy)."""
    _, _, model = create_mlp_classifier(model_config(task, size), seed=seed)
    inputs, labels = task.factual(size.train_examples, seed=seed + 1)
    test_inputs, test_labels = task.factual(2_000, seed=seed + 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(size.model_epochs):
        order = torch.randperm(len(inputs), generator=gen)
        for start in range(0, len(inputs), 128):
            rows = order[start : start + 128]
            loss = torch.nn.functional.cross_entropy(model(inputs_embeds=inputs[rows]).logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        acc = (model(inputs_embeds=test_inputs).logits.argmax(-1) == test_labels).float().mean().item()
    return model, acc


# -- counterfactual pairs for the training framework (das_train.data.pair_contract) ------------


@dataclass(frozen=True)
class EqualityPairsTask(CounterfactualTask):
    """The ``WX`` interchange of :class:`EqualityTask` as a ``CounterfactualTask``.

    Each input is one position holding the four objects' vectors side by side: a
    ``*_inputs_embeds`` row is ``(1, 4 * embedding_dim)``, so the MLP's logits are
    ``(batch, 1, 2)`` and "the last position" means the same thing as for a language model.
    The pairs are exactly ``EqualityTask.counterfactual_pairs(n, seed, "WX")``. The control
    task gives a fixed random class to each ``(w, x)`` object-pair type.

    Args:
        equality: the object vocabulary and sampling.
        control_seed: seed of the control task's random class per ``(w, x)`` type.
    """

    name: ClassVar[str] = "hierarchical_equality"

    equality: EqualityTask = EqualityTask()
    control_seed: int = 0

    def spec(self, tokenizer: None = None) -> TaskSpec:
        return TaskSpec(
            name=self.name,
            positions={"objects": 0},
            variable="WX",
            variable_values=2,
            label_names={0: "different", 1: "same"},
            is_language_model_task=False,
        )

    def control_classes(self) -> torch.Tensor:
        """(objects, objects) control class of each ``(w, x)`` type."""
        gen = torch.Generator().manual_seed(self.control_seed)
        n = self.equality.n_objects
        return torch.randint(0, 2, (n, n), generator=gen)

    def pairs(self, n: int, seed: int, tokenizer: None = None) -> Dataset:
        gen = torch.Generator().manual_seed(seed)  # drawn as counterfactual_pairs draws them
        base_ids = self.equality._sample_objects(n, gen)  # (n, 4)
        source_ids = self.equality._sample_objects(n, gen)
        vb, vs = self.equality.variables(base_ids), self.equality.variables(source_ids)  # (n, 2)
        width = 4 * self.equality.embedding_dim
        columns = {
            BASE_EMBEDS: self.equality.embed(base_ids).reshape(n, 1, width).tolist(),
            SOURCE_EMBEDS: self.equality.embed(source_ids).reshape(n, 1, width).tolist(),
            BASE_LABEL: self.equality.label(base_ids).tolist(),
            SOURCE_LABEL: self.equality.label(source_ids).tolist(),
            COUNTERFACTUAL_LABEL: self.equality.label(base_ids, source_ids, "WX").tolist(),
            BASE_VARIABLE: vb[:, 0].tolist(),
            SOURCE_VARIABLE: vs[:, 0].tolist(),
            BASE_CONTROL: self.control_classes()[base_ids[:, 0], base_ids[:, 1]].tolist(),
        }
        vectors = List(List(Value("float32")))
        features = Features({name: vectors if name.endswith("embeds") else Value("int64") for name in columns})
        return Dataset.from_dict(columns, features=features)
