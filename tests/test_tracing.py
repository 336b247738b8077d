"""Causal tracing (``job: causal_tracing``): the offline recipe runs end to end, the subject
noise hurts the answer, restoring the subject's last token helps more than restoring
elsewhere, the noise touches only the subject, and the run is seeded."""

from __future__ import annotations

import csv

import pytest
import torch

from das_train import cli
from das_train.tasks.facts import FactsTask
from das_train.training import model_loading, tracing
from das_train.training import run as run_module


def _overrides(run_dir, cache_dir, *extra):
    return [f"run_dir={run_dir}", f"cache_dir={cache_dir}", "progress=false", "tracing.facts=8",
            "tracing.samples=6", *extra]


def _rows(run_dir):
    with open(run_dir / "tracing.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracing")
    cfg = cli.check("causal_tracing", _overrides(root / "run", root / "cache"))
    run_dir = run_module.run(cfg)
    return root, run_dir


def test_recipe_runs_and_writes_outputs(traced):
    _, run_dir = traced
    for name in ("tracing.csv", "tracing.md", "tracing.png"):
        assert (run_dir / name).stat().st_size > 0
    rows = _rows(run_dir)
    assert {r["component"] for r in rows} == {"block_output", "mlp_activation", "attention_output"}
    assert len(rows) == 3 * 4 * 5  # components x layers x positions of the tiny model
    assert "*subject last" in {r["position_label"] for r in rows}
    assert "clean probability" in (run_dir / "tracing.md").read_text()


def test_corruption_hurts_and_restoring_the_subject_helps_locally(traced):
    _, run_dir = traced
    rows = _rows(run_dir)
    clean, corrupted = float(rows[0]["clean_prob"]), float(rows[0]["corrupted_prob"])
    assert clean > 0.8
    assert corrupted < clean - 0.2

    block = {(int(r["layer"]), r["position_label"]): float(r["restored_prob"])
             for r in rows if r["component"] == "block_output"}
    layers = sorted({layer for layer, _ in block})
    # The whole clean state at the last position of the last layer is the clean run.
    assert block[(layers[-1], "in")] == pytest.approx(clean, abs=1e-4)
    # Early/middle layers: the subject's last token restores far more than a non-subject,
    # non-last position (the verb) or the first subject token.
    early = layers[:-1]
    best = max(early, key=lambda layer: block[(layer, "*subject last")])
    assert block[(best, "*subject last")] > block[(best, "lives")] + 0.1
    assert block[(best, "*subject last")] > block[(best, "*subject first")] + 0.1
    assert block[(best, "*subject last")] > corrupted + 0.1


def test_noise_is_applied_only_at_subject_positions(traced):
    root, _ = traced
    cfg = run_module.as_run_config(cli.check("causal_tracing", _overrides(root / "run", root / "cache")))
    task = FactsTask()
    model, tokenizer = model_loading.build_model(cfg, task)
    fact = tracing.load_facts(cfg, task, tokenizer)[0]
    assert list(fact.subject) == task.subject_positions(tokenizer) == [1, 2]
    seen = []

    def hook(module, args, kwargs):
        seen.append((args[0] if args else next(iter(kwargs.values()))).detach().clone())

    # inside layer 0, after the intervention's own hook on the block input
    handle = model.gpt_neox.layers[0].input_layernorm.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        samples = 4
        base = {"input_ids": fact.input_ids.repeat(samples, 1)}
        with torch.no_grad():
            model(**base)
            im = tracing.corrupted_model(model, noise_std=0.5, seed=3)
            im(base, [None], {"sources->base": ([None], [[list(fact.subject)] * samples])})
    finally:
        handle.remove()
    clean, noised = seen[0], seen[-1]
    changed = (noised - clean).abs().amax(-1)  # (samples, length)
    assert (changed[:, [1, 2]] > 0.1).all()
    assert (changed[:, [0, 3, 4]] == 0).all()
    # Each sample draws its own noise.
    assert not torch.allclose(noised[0, 1], noised[1, 1])


def test_window_is_centred_and_clipped():
    assert tracing.window_layers(0, 10, 48) == list(range(0, 5))
    assert tracing.window_layers(20, 10, 48) == list(range(15, 25))
    assert tracing.window_layers(46, 10, 48) == list(range(41, 48))
    assert tracing.window_layers(2, 1, 4) == [2]
    assert tracing.window_layers(1, 3, 4) == [0, 1, 2]


def test_same_seed_same_csv(traced):
    root, run_dir = traced
    cfg = cli.check("causal_tracing", _overrides(root / "again", root / "cache"))
    again = run_module.run(cfg)
    assert (again / "tracing.csv").read_text() == (run_dir / "tracing.csv").read_text()


def test_hub_recipe_composes():
    cfg = cli.check("causal_tracing_gpt2xl", [])
    assert cfg.job == "causal_tracing" and cfg.model.kind == "hub" and cfg.model.name == "gpt2-xl"
    assert cfg.tracing.window == 10


def test_facts_of_different_layouts_are_aggregated_by_role():
    """Hub facts (subjects of different token counts) average by Meng et al.'s position roles."""
    a = tracing.Fact(torch.zeros(1, 5, dtype=torch.long), (0, 1), 0, ("The", "Space", "Needle", "is", "in"))
    b = tracing.Fact(torch.zeros(1, 6, dtype=torch.long), (1, 2, 3), 0, ("So", "Eiffel", "To", "wer", "is", "in"))
    assert tracing.position_roles(a) == ["subject first", "subject last", "first after", "further", "last"]
    assert tracing.position_roles(b) == ["before", "subject first", "subject middle", "subject last", "first after",
                                         "last"]
    traces = [tracing.FactTrace(1.0, 0.0, {"block_output": torch.arange(10.0).reshape(2, 5)}),
              tracing.FactTrace(1.0, 0.0, {"block_output": torch.arange(12.0).reshape(2, 6)})]
    labels, tables = tracing.aggregate([a, b], traces, ["block_output"])
    # a role's token is its label when every fact has the same token there; subject roles get a "*"
    assert labels == ["So", "*subject first", "*To", "*subject last", "first after", "is", "in"]
    table = tables["block_output"]  # (positions, layers)
    assert table.shape == (7, 2)
    assert table[labels.index("*subject first"), 0].item() == pytest.approx((0 + 1) / 2)
    assert table[labels.index("in"), 1].item() == pytest.approx((9 + 11) / 2)
