"""A tiny language model as the model an IIT job trains: the GPT-NeoX that ``model.kind=tiny``
trains on a text task (``recipe=gender_tiny``), here trained from scratch by the IIT job instead.

The pairs are the task's own (:meth:`~das_train.data.pair_contract.CounterfactualTask.pairs`,
in the pair contract's token columns), one set per variable with a seed of its own; task
accuracy is measured on every factual sentence the task has. The site's position is one of
the task's named positions. A trained model is written with ``save_pretrained`` next to its
tokenizer, so ``model.kind=hub model.name=<run_dir>/models/iit`` runs any job on it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import GPTNeoXForCausalLM

from das_train.data.pair_contract import (
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_POSITION_IDS,
    BASE_POSITIONS,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_MASK,
    SOURCE_POSITION_IDS,
    SOURCE_POSITIONS,
    CounterfactualTask,
    TaskSpec,
)
from das_train.data.pair_inputs import Position
from das_train.data.tiny_lm import tiny_lm_config
from das_train.data.tokenization import encode_prompts
from das_train.training.iit_data import IITData, Pairs
from das_train.training.preflight import task_spec
from das_train.training.schema import RunConfig
from das_train.training.task_loading import load_task

PAIR_COLUMNS = (BASE_IDS, BASE_MASK, BASE_POSITION_IDS, BASE_POSITIONS, SOURCE_IDS, SOURCE_MASK, SOURCE_POSITION_IDS,
                SOURCE_POSITIONS, BASE_LABEL, COUNTERFACTUAL_LABEL)
"""The pair columns IIT reads, where the task's pairs have them."""
FACTUAL_COLUMNS = {"input_ids": BASE_IDS, "attention_mask": BASE_MASK, "position_ids": BASE_POSITION_IDS}
"""A prompt's model inputs and the base columns that hold them."""


@dataclasses.dataclass(frozen=True)
class TinyLM:
    """A ``model.n_layer``-layer, ``model.hidden``-wide GPT-NeoX on a text task with a tokenizer
    of its own (e.g. gender)."""

    task: CounterfactualTask
    tokenizer: Any
    spec: TaskSpec
    is_language_model_task: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config: RunConfig) -> TinyLM:
        task = load_task(config.task.name, config.task)
        tokenizer = task.build_tokenizer()
        return cls(task, tokenizer, task_spec(task, tokenizer))

    def position(self, name: str | None) -> Position:
        """The token index (or per-row position) of the task's position ``name``."""
        return self.spec.positions[name]

    def pairs(self, n: int, seed: int) -> Pairs:
        rows = self.task.pairs(n, seed, self.tokenizer).with_format("torch")[:]
        return {column: rows[column] for column in PAIR_COLUMNS if column in rows}

    def data(self, config: RunConfig) -> IITData:
        """Pairs per variable (a text task has one; the checks name it), seeded as the MLP's
        are, and every factual sentence for task accuracy."""
        iit = config.iit
        train = {v: self.pairs(iit.train_pairs, (config.seed + 1) * 1_000 + i) for i, v in enumerate(iit.variables)}
        test = {v: self.pairs(iit.eval_pairs, (config.seed + 2) * 1_000 + i) for i, v in enumerate(iit.variables)}
        inputs, answers = encode_prompts(self.tokenizer, self.task.sentences(self.tokenizer))
        factual = {FACTUAL_COLUMNS[key]: value for key, value in inputs.items()} | {BASE_LABEL: answers}
        return IITData(train, test, factual)

    def fresh_model(self, config: RunConfig) -> nn.Module:
        """The GPT-NeoX ``model.kind=tiny`` would train, initialised from ``config.seed``."""
        length = max(len(ids) for ids in self.tokenizer([p for p, _ in self.task.sentences(self.tokenizer)])["input_ids"])
        model = config.model
        torch.manual_seed(config.seed)
        return GPTNeoXForCausalLM(tiny_lm_config(self.tokenizer, model.n_layer, model.hidden, model.heads, length))

    def write_model(self, model: nn.Module, folder: Path) -> None:
        """Fills ``folder`` with the model and its tokenizer (``save_pretrained``)."""
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def read_model(self, folder: Path) -> nn.Module:
        return GPTNeoXForCausalLM.from_pretrained(folder)


__all__ = ["TinyLM"]
