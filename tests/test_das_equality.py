"""DAS on the hierarchical equality task (Geiger et al. 2023), at a size that runs in seconds.

The full-size table comes from scripts/das_hierarchical_equality.py.
"""

from __future__ import annotations

import pytest

from das_train.tasks.hierarchical_equality import ExperimentSize
from das_train.training.equality_experiment import das_table

TEST_SIZE = ExperimentSize(train_examples=40_000, model_epochs=8, das_steps=600, batch_size=256, eval_pairs=3_000)


@pytest.fixture(scope="module")
def table():
    return {(r["method"], r["variables"]): r for r in das_table(TEST_SIZE, seed=0)}


def test_model_learns_the_task(table):
    assert table[("model accuracy", "-")]["iia"] >= 0.98


@pytest.mark.parametrize("variable", ["WX", "YZ"])
def test_rotation_aligns_each_variable_and_neurons_do_not(table, variable):
    das = table[("DAS rotation", variable)]["iia"]
    neurons = table[("neuron-aligned", variable)]["iia"]
    assert das >= 0.95
    assert neurons <= das - 0.2  # same subspace size, neuron basis: clearly worse


def test_boundless_shrinks_its_boundary_and_keeps_iia(table):
    row = table[("boundless DAS", "WX")]
    start, end = (int(x) for x in row["size"].split(" -> "))
    assert end < start
    assert row["iia"] >= table[("fixed-size rotation", "WX")]["iia"] - 0.01
