"""tasks/ holds task plugins only, and the one tiny-LM trainer keeps its callers' promises.

Task plugins are found by file name, so a framework module left in tasks/ would show up as a
"task" (or hide one). What plugins and the data side may import is checked with every other
layer in tests/test_layering.py. The one tiny-LM trainer is checked here for the two promises
both of its callers rely on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import das_train
from das_train.data.causal_model import CausalModel
from das_train.data.tiny_lm import NextTokenObjective, train_lm
from das_train.training.schema import ConfigError
from das_train.training.task_loading import available_tasks, load_task

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ["capitals", "facts", "gender", "hierarchical_equality", "pairs"]


def test_available_tasks_are_the_plugins_and_tasks_holds_nothing_else():
    assert available_tasks() == PLUGINS
    files = sorted(p.stem for p in (ROOT / "tasks").glob("*.py") if p.stem != "__init__")
    assert files == PLUGINS


def test_a_framework_module_is_no_task():
    with pytest.raises(ConfigError, match=r"task.name='pair_contract': no module tasks/pair_contract.py; available: \['capitals'"):
        load_task("pair_contract")


def _tiny_gpt2() -> GPT2Config:
    return GPT2Config(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


class _DoneAt:
    """The next-token objective, done before step ``at``."""

    def __init__(self, at: int) -> None:
        self.inner = NextTokenObjective(torch.arange(40) % 11, block=6, batch_size=3)
        self.at, self.calls = at, 0

    def step_loss(self, model):
        loss, _ = self.inner.step_loss(model)
        self.calls += 1
        return loss, self.calls > self.at


def test_the_trainer_stops_when_done_and_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, steps = train_lm(GPT2LMHeadModel, _tiny_gpt2(), _DoneAt(4), max_steps=50, lr=1e-2, seed=0,
                            one_cycle=True)
    assert steps == 4 and not model.training
    assert torch.equal(torch.rand(3), expected)
    again, _ = train_lm(GPT2LMHeadModel, _tiny_gpt2(), _DoneAt(4), max_steps=50, lr=1e-2, seed=0, one_cycle=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other, _ = train_lm(GPT2LMHeadModel, _tiny_gpt2(), _DoneAt(4), max_steps=50, lr=1e-2, seed=1, one_cycle=True)
    assert not torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)


def test_causal_model_keeps_its_public_name():
    assert das_train.CausalModel is CausalModel
