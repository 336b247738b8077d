"""Pairs of different lengths: left-padded rows with position ids and per-row positions.

Pairs read from files differ in length; they reach training left-padded, with position ids
that skip the padding, and their named positions are ``RowPosition`` columns: a token index
per row that differs between a pair's base and its source. A small task of that shape is
built here; every figure the training side computes on it is checked against plain PyTorch
hooks, and a sweep gives the same table batched and one site at a time.
"""

from __future__ import annotations

import csv
import random

import pytest
import torch
from conftest import make_gpt2, make_llama, make_neox
from datasets import Dataset
from torch.utils.data import DataLoader

from das_train import cli
from das_train.data.pair_contract import CounterfactualTask, RowPosition, TaskSpec
from das_train.data.pair_datamodule import collate
from das_train.data.pair_inputs import model_inputs
from das_train.training import run as run_module
from das_train.training.das_module import DASModule
from das_train.training.probe import collect_activations
from das_train.training.sweep import das_sweep
from das_train.training.sweep.site_cache import DistinctInputs, collect_base_sites, collect_layer
from das_train.training.sweep.sites import table_position_clashes

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

PAD, BOS, END = 0, 1, 2
KEYS = (10, 11, 12)  # the key word of each value of the variable
FILLERS = tuple(range(20, 30))
ANSWERS = (40, 41, 42)
LENGTH = 8
KEY = RowPosition(0)


def sentence(rng: random.Random, value: int) -> tuple[list[int], int]:
    """BOS, 0-2 fillers, the key word, 0-2 fillers, END; with the key word's index."""
    before = [rng.choice(FILLERS) for _ in range(rng.randrange(3))]
    after = [rng.choice(FILLERS) for _ in range(rng.randrange(3))]
    return [BOS, *before, KEYS[value], *after, END], 1 + len(before)


def left_padded(tokens: list[int], key: int) -> dict[str, list[int]]:
    pad = LENGTH - len(tokens)
    return {"input_ids": [PAD] * pad + tokens, "attention_mask": [0] * pad + [1] * len(tokens),
            "position_ids": [0] * pad + list(range(len(tokens))), "positions": [pad + key]}


class KeyWordRows(CounterfactualTask):
    """Variable-length sentences whose key word (the variable) stands at a different index in
    every row; the counterfactual answer is the source's key word's answer.

    An untrained tiny model never says those answers, so every IIA would be 0; given a
    ``labeller`` model, the labels are that model's own predictions instead (the source's is the
    counterfactual), which sites change to different degrees, so a sweep's IIAs differ.
    """

    name = "key_word_rows"

    def __init__(self, labeller=None) -> None:
        self.labeller = labeller

    def spec(self, tokenizer=None) -> TaskSpec:
        return TaskSpec(self.name, positions={"key": KEY, "last": -1}, variable="key", variable_values=3)

    def pairs(self, n: int, seed: int, tokenizer=None) -> Dataset:
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            values = rng.randrange(3), rng.randrange(3)
            row = {}
            for side, value in zip(("base", "source"), values):
                for column, data in left_padded(*sentence(rng, value)).items():
                    row[f"{side}_{column}"] = data
            row.update(base_label=ANSWERS[values[0]], source_label=ANSWERS[values[1]],
                       counterfactual_label=ANSWERS[values[1]], base_variable=values[0],
                       source_variable=values[1], base_control=KEYS[values[0]] % 2)
            rows.append(row)
        if self.labeller is not None:
            relabel(self.labeller, rows)
        return Dataset.from_list(rows)


@torch.no_grad()
def relabel(model, rows: list[dict]) -> None:
    """Each row's labels become ``model``'s predictions: base, source, and the source's as the
    counterfactual."""
    columns = {key: torch.tensor([row[key] for row in rows]) for key in rows[0]}
    for side in ("base", "source"):
        predicted = model(**model_inputs(columns, side, True)).logits[:, -1].argmax(-1).tolist()
        for row, label in zip(rows, predicted):
            row[f"{side}_label"] = label
    for row in rows:
        row["counterfactual_label"] = row["source_label"]


def batch(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    rows = KeyWordRows().pairs(n, seed).with_format("torch")
    return collate([rows[i] for i in range(n)])


def test_the_task_puts_the_key_word_at_different_indices_in_base_and_source():
    b = batch(32)
    base, source = b["base_positions"][:, 0], b["source_positions"][:, 0]
    assert len(set(base.tolist())) > 2 and (base != source).sum() > 8
    rows = torch.arange(32)
    assert set(b["base_input_ids"][rows, base].tolist()) <= set(KEYS)
    assert set(b["source_input_ids"][rows, source].tolist()) <= set(KEYS)


# -- 1. a padded row computes what the unpadded one does -------------------------------------


@pytest.mark.parametrize("make", [make_gpt2, make_neox, make_llama], ids=["gpt2", "neox", "llama"])
def test_a_left_padded_row_with_position_ids_gives_the_unpadded_rows_logits(make):
    model = make()
    b = batch(8)
    inputs = model_inputs(b, "base", is_language_model_task=True)
    assert set(inputs) == {"input_ids", "attention_mask", "position_ids"}
    with torch.no_grad():
        padded = model(**inputs).logits  # (8, LENGTH, vocab)
        for i in range(8):
            real = b["base_attention_mask"][i].bool()
            alone = model(input_ids=b["base_input_ids"][i][real][None]).logits[0]  # (len, vocab)
            torch.testing.assert_close(padded[i][real], alone, atol=1e-5, rtol=1e-5)
    if make is make_gpt2:  # absolute positions: without the ids a padded row computes otherwise
        unpositioned = {k: v for k, v in inputs.items() if k != "position_ids"}
        with torch.no_grad():
            assert not torch.allclose(model(**unpositioned).logits[:, -1], padded[:, -1], atol=1e-3)


# -- 2. DASModule at a RowPosition equals a hand computation -----------------------------------


def block_output_hooked(model, layer: int, inputs, edit=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the block's output, the last position's logits) with plain PyTorch forward hooks;
    ``edit`` rewrites the block's output."""
    block = model.transformer.h[layer]
    seen = {}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        seen["out"] = hidden.detach().clone()
        if edit is None:
            return None
        new = edit(hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = block.register_forward_hook(hook)
    try:
        logits = model(**inputs).logits[:, -1]
    finally:
        handle.remove()
    return seen["out"], logits


def test_das_at_a_row_position_swaps_each_rows_source_index_into_its_own_base_index():
    model = make_gpt2()
    module = DASModule(model, layer=0, component="block_output", position=KEY, low_rank_dimension=2)
    torch.manual_seed(1)
    with torch.no_grad():  # a rotation away from the identity-like start
        module.intervention.rotate_layer.weight.copy_(torch.linalg.qr(torch.randn(16, 2))[0])
    b = batch(12)
    with torch.no_grad():
        got = module(b)
        weight = module.intervention.rotate_layer.weight  # (d, k)
        source_acts, _ = block_output_hooked(model, 0, model_inputs(b, "source", True))
        s, p = b["source_positions"][:, 0], b["base_positions"][:, 0]
        rows = torch.arange(12)

        def edit(hidden):
            new = hidden.clone()
            base = hidden[rows, p]  # (batch, d)
            new[rows, p] = base + ((source_acts[rows, s] - base) @ weight) @ weight.T
            return new

        _, expected = block_output_hooked(model, 0, model_inputs(b, "base", True), edit)
        _, unintervened = block_output_hooked(model, 0, model_inputs(b, "base", True))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, unintervened, atol=1e-4)
    assert module.hparams["position"] == {"row_position_column": 0}  # plain data in checkpoints


# -- 4. probes and the site cache gather each row's own index ----------------------------------


def test_probe_features_and_the_site_cache_read_each_rows_own_index():
    model = make_gpt2()
    b = batch(24)
    rows = torch.arange(24)
    base_acts, _ = block_output_hooked(model, 0, model_inputs(b, "base", True))
    source_acts, _ = block_output_hooked(model, 0, model_inputs(b, "source", True))
    p, s = b["base_positions"][:, 0], b["source_positions"][:, 0]
    by_hand = base_acts[rows, p]  # (24, d)
    loader = DataLoader([{k: v[i] for k, v in b.items()} for i in range(24)], batch_size=8)
    features, variables, _ = collect_activations(model, 0, "block_output", KEY, loader)
    torch.testing.assert_close(features, by_hand)
    assert variables.tolist() == b["base_variable"].tolist()
    # The sweep's probe tables: one row per distinct base, gathered at that base's own index.
    bases = DistinctInputs([b], True, sides=("base",))
    ((members, table),) = collect_base_sites(model, [(0, "block_output", KEY), (0, "block_output", -1)], bases)
    assert members == [0, 1]
    torch.testing.assert_close(table[0][bases.row["base"]], by_hand)
    torch.testing.assert_close(table[1][bases.row["base"]], base_acts[:, -1])
    # The training cache: sources at their own index, one column per swept position.
    acts = collect_layer(model, 0, "block_output", [KEY, -1], [b])
    torch.testing.assert_close(acts.source[:, 0], source_acts[rows, s])
    torch.testing.assert_close(acts.base[:, 0], by_hand)
    torch.testing.assert_close(acts.source[:, 1], source_acts[:, -1])


# -- 3. a sweep's table: batched equals one site at a time ------------------------------------


def row_sweep(tmp_path, monkeypatch, make, name: str, *extra):
    """A sweep of the embedding row and layer 0 (key, last) on :class:`KeyWordRows` labelled by
    the seeded tiny model ``make`` builds: its ``results.csv`` rows."""
    monkeypatch.setattr(das_sweep, "load_task", lambda *_: KeyWordRows(labeller=make()))
    monkeypatch.setattr(das_sweep, "build_model", lambda cfg, task: (make(), None))
    overrides = [f"run_dir={tmp_path / name}", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none",
                 "trainer.max_steps=15", "task.n_train=96", "task.n_val=16", "task.n_test=48",
                 "task.filter_pairs=false", "sweep.probe.max_epochs=2", "sweep.layers=[0]",
                 "sweep.include_embeddings=true", "trainer.batch_size=16", *extra]
    run_dir = run_module.run(cli.check("gender_tiny", overrides))
    with (run_dir / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("make", [make_gpt2, pytest.param(make_llama, marks=pytest.mark.slow)], ids=["gpt2", "llama"])
def test_a_row_position_sweep_batched_equals_one_site_at_a_time(tmp_path, monkeypatch, make, caplog):
    with caplog.at_level("INFO", logger="das_train"):
        batched = row_sweep(tmp_path, monkeypatch, make, "batched", "sweep.batched=true")
    assert "of 2 sites per pass" in caplog.text and "one site at a time" not in caplog.text  # the batched path ran
    per_site = row_sweep(tmp_path, monkeypatch, make, "per_site", "sweep.batched=false")
    assert len(batched) == len(per_site) == 4  # embedding row, L0 x key, last
    assert {row["position_name"] for row in batched} == {"key", "last"}
    for b, p in zip(batched, per_site):
        for key in ("layer", "component", "position", "position_name", "seed", "iia", "probe_accuracy",
                    "control_accuracy", "test_pairs"):
            assert b[key] == p[key], (key, b, p)
    assert len({row["iia"] for row in per_site}) > 1


# -- bad input -----------------------------------------------------------------------------------


def test_a_position_that_is_neither_an_index_nor_a_row_position_is_refused_naming_it():
    with pytest.raises(ValueError, match="position must be an int, a RowPosition or None, got 'key'"):
        DASModule(make_gpt2(), layer=0, position="key")


def test_a_row_position_whose_column_is_another_positions_index_is_refused():
    (problem,) = table_position_clashes({"key": KEY, "bos": 0, "last": -1})
    assert "'key' (RowPosition column 0) and 'bos' (index 0)" in problem
    assert table_position_clashes({"key": KEY, "last": -1}) == []
