"""pv.CausalModel: pyvene 0.1.8's causal model, checked against pyvene on the DAS tutorial's
hierarchical-equality model with the same seeds, and against hand-written answers."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
import torch

import das_train as pv
from das_train.tasks.hierarchical_equality import EqualityPairsTask, EqualityTask

VARIABLES = ["W", "X", "Y", "Z", "WX", "YZ", "O"]


def equality_model(cls, n_entities=5, dim=2):
    """The DAS tutorial's model: four vectors, two equalities, and their equality."""
    rng = np.random.default_rng(0)
    reps = [rng.uniform(-1, 1, dim) for _ in range(n_entities)]
    values = {v: reps for v in "WXYZ"} | {v: [True, False] for v in ("WX", "YZ", "O")}
    parents = {"W": [], "X": [], "Y": [], "Z": [], "WX": ["W", "X"], "YZ": ["Y", "Z"], "O": ["WX", "YZ"]}
    functions = {v: (lambda: reps[0]) for v in "WXYZ"} | {
        "WX": lambda x, y: np.array_equal(x, y),
        "YZ": lambda x, y: np.array_equal(x, y),
        "O": lambda x, y: x == y,
    }
    return cls(list(VARIABLES), values, parents, functions, pos={}), reps


def intervention_id(intervention):
    return 2 if len(intervention) == 2 else (0 if "WX" in intervention else 1)


def _seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_structure_matches_pyvene():
    pyvene = pytest.importorskip("pyvene")
    ours, _ = equality_model(pv.CausalModel)
    theirs, _ = equality_model(pyvene.CausalModel)
    for name in ("variables", "inputs", "outputs", "timesteps", "children", "pos"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.end_time == theirs.end_time == 2


def test_datasets_match_pyvene_draw_for_draw():
    pyvene = pytest.importorskip("pyvene")
    results = []
    for cls in (pv.CausalModel, pyvene.CausalModel):
        model, _ = equality_model(cls)
        _seed(3)
        factual = model.generate_factual_dataset(20, model.sample_input_tree_balanced)
        counterfactual = model.generate_counterfactual_dataset(
            12, intervention_id, 4, sampler=model.sample_input_tree_balanced)
        inputs = [model.sample_input() for _ in range(5)]
        paths = model.find_live_paths(inputs[0])
        results.append((factual, counterfactual, inputs, paths, random.random()))
    (f1, c1, i1, p1, r1), (f2, c2, i2, p2, r2) = results
    assert r1 == r2  # the same number of draws from `random`
    assert p1 == p2
    for a, b in zip(i1, i2):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for ours, theirs in zip(f1 + c1, f2 + c2, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ours:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    assert c1[0]["source_input_ids"].shape == (2, 8)  # two intermediate variables, 4 x 2 wide


def test_interchange_by_hand():
    model, reps = equality_model(pv.CausalModel)
    a, b = reps[1], reps[2]
    base = {"W": a, "X": a, "Y": a, "Z": b}  # WX true, YZ false: O false
    source = {"W": a, "X": b, "Y": b, "Z": b}  # WX false
    assert not model.run_forward(base)["O"]
    assert bool(model.run_interchange(base, {"WX": source})["O"]) is True  # false == false
    assert bool(model.run_interchange(base, {"YZ": source})["O"]) is True  # true == true
    assert model.find_live_paths(base)[2]  # WX and YZ both matter to O


def test_caller_arguments_left_alone_and_defaults_that_pyvene_breaks():
    variables = ["b", "a", "c"]
    parents = {"a": [], "b": [], "c": ["a", "b"]}
    model = pv.CausalModel(variables, {"a": [0, 1], "b": [0, 1], "c": [0, 1, 2]}, parents,
                           {"a": lambda: 0, "b": lambda: 0, "c": lambda x, y: x + y}, pos=None)
    assert variables == ["b", "a", "c"] and model.variables == ["a", "b", "c"]
    random.seed(0)
    # pyvene's default sampler rejects output_var; ours draws sources with the wanted value.
    data = model.generate_counterfactual_dataset(
        4, lambda i: 0, 2, intervention_sampler=lambda: {"c": 2}, sampler=None)
    assert data and all(e["labels"].item() in (0, 1, 2) for e in data)


def test_tensor_functions_run_a_batch_at_once():
    model = pv.CausalModel(["w", "x", "wx"], {"w": [0, 1], "x": [0, 1], "wx": [True, False]},
                           {"w": [], "x": [], "wx": ["w", "x"]},
                           {"w": lambda: 0, "x": lambda: 0, "wx": lambda w, x: w == x})
    setting = model.run_forward({"w": torch.tensor([0, 1, 1]), "x": torch.tensor([0, 0, 1])})
    assert setting["wx"].tolist() == [True, False, True]


def test_add_variable_joins_the_graph():
    model = pv.CausalModel(["a", "b"], {"a": [0, 1], "b": [0, 1]}, {"a": [], "b": ["a"]},
                           {"a": lambda: 1, "b": lambda a: a})
    model.add_variable("m", [0, 1], ["a"], ["b"], lambda a: 1 - a)
    model.functions["b"] = lambda a, m: m  # b's parents are now [a, m]
    assert model.variables == ["a", "m", "b"] and model.run_forward()["b"] == 0


def _digest(columns: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(columns):
        h.update(key.encode())
        h.update(torch.as_tensor(columns[key]).numpy().tobytes())
    return h.hexdigest()[:16]


def test_equality_task_pairs_unchanged_for_fixed_seeds():
    """Digests of the pairs the task generated before it used pv.CausalModel."""
    task = EqualityTask()
    assert _digest(task.counterfactual_pairs(200, seed=3)) == "bf90d291dbd6a22a"
    assert _digest(task.counterfactual_pairs(200, seed=4, variable="WX")) == "956ca3728815c4d6"
    assert _digest(task.counterfactual_pairs(200, seed=4, variable="YZ")) == "fbc336b1a607c3ad"
    inputs, labels = task.factual(300, seed=1)
    assert _digest({"x": inputs, "y": labels}) == "4b9ad4a9f9414568"
    pairs = EqualityPairsTask().pairs(100, seed=7)
    assert _digest({c: torch.tensor(pairs[c]) for c in pairs.column_names}) == "54cd5182a19197a8"
