"""The validity card's table from rows and saved per-pair outcomes, against hand computations
(issue 19): a row's card fields, the seed-mean IIA on the changing pairs with its t-interval
over seeds and its bootstrap interval over pairs, companions joined as columns, and the
rows' empty fields read back and written again unchanged."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from das_train.training import reports
from das_train.training.validity import columns, intervals
from das_train.training.validity.card import (
    card_columns,
    card_markdown,
    card_sites,
    measured_methods,
)
from das_train.training.validity.job_bases import job_bases, random_subspace_seed
from das_train.training.validity.outcome_store import load_outcomes, outcomes_path, save_outcomes

CHANGING = torch.tensor([True, True, False, True, False, True, True, False])
DAS = {0: torch.tensor([1, 1, 1, 0, 1, 1, 1, 1]).bool(), 1: torch.tensor([1, 0, 1, 1, 1, 1, 1, 0]).bool()}
PCA = {0: torch.tensor([0, 0, 1, 0, 1, 1, 0, 1]).bool(), 1: torch.tensor([0, 0, 1, 0, 1, 0, 0, 1]).bool()}


def _row(seed: int, fields: dict) -> dict:
    return {"layer": 1, "component": "block_output", "position": 2, "position_name": "last", "seed": seed,
            "iia": float(DAS[seed].double().mean()), "probe_accuracy": 0.9, "control_accuracy": 0.6,
            "selectivity": 0.3, **fields}


def test_a_rows_card_fields_by_hand():
    fields = columns.outcome_fields(CHANGING, {"das": DAS[0], "pca": PCA[0]})
    # das on the 5 changing pairs: 1, 1, 0, 1, 1 -> 0.8; pca: all 4/8, changing 0, 0, 0, 1, 0 -> 0.2
    assert fields["changing_pairs"] == 5 and fields["iia_changing"] == pytest.approx(0.8)
    assert fields["iia_pca"] == pytest.approx(0.5) and fields["iia_changing_pca"] == pytest.approx(0.2)
    assert fields["iia_diff_means"] == "" and fields["iia_changing_random_subspace"] == ""
    assert math.isnan(columns.outcome_fields(torch.zeros(8, dtype=torch.bool), {"das": DAS[0]})["iia_changing"])


def test_the_card_of_a_site_is_the_seed_mean_with_both_intervals(tmp_path):
    rows = []
    for seed in (0, 1):
        correct = {"das": DAS[seed], "pca": PCA[seed]}
        save_outcomes(outcomes_path(tmp_path, "block_output", 1, "last", seed), CHANGING, correct)
        rows.append(_row(seed, columns.outcome_fields(CHANGING, correct)))
    companion_dir = tmp_path / "random_init"
    for seed in (0, 1):  # a companion: its own rows and outcomes, its DAS as "das"
        save_outcomes(outcomes_path(companion_dir, "block_output", 1, "last", seed), CHANGING, {"das": PCA[seed]})
    companion_rows = [_row(s, columns.outcome_fields(CHANGING, {"das": PCA[s]})) for s in (0, 1)]
    card = card_sites(tmp_path, rows, {"random_init": (companion_dir, companion_rows)}, resamples=500, seed=3)
    figures = card[(1, "block_output", 2, "last")]
    # das on the changing rows 0, 1, 3, 5, 6: seed 0 gives 1, 1, 0, 1, 1 and seed 1 gives 1, 0, 1, 1, 1
    assert figures["das_iia_changing"] == pytest.approx(0.8)
    assert figures["das_iia"] == pytest.approx((7 / 8 + 6 / 8) / 2)
    seeds = intervals.seed_interval([0.8, 0.8])
    assert (figures["das_seeds_low"], figures["das_seeds_high"]) == pytest.approx((seeds.low, seeds.high))
    mean_correct = torch.stack([DAS[0].double(), DAS[1].double()]).mean(0)[CHANGING]
    pairs = intervals.bootstrap_interval(mean_correct, resamples=500, seed=3)
    assert (figures["das_pairs_low"], figures["das_pairs_high"]) == (pairs.low, pairs.high)
    assert figures["das_pairs_low"] < 0.8 < figures["das_pairs_high"]
    # pca changing: seed 0 -> 1/5, seed 1 -> 0; its pairs interval from its own outcomes
    assert figures["pca_iia_changing"] == pytest.approx(0.1)
    assert figures["random_init_iia_changing"] == pytest.approx(0.1)
    assert figures["random_init_pairs_low"] == figures["pca_pairs_low"]
    assert measured_methods(rows, {"random_init": None}) == ["das", "random_init", "pca"]
    text = card_markdown([{**rows[0], **figures}], ["das", "random_init", "pca"])
    assert "| DAS | DAS, random-init model | PCA |" in text and "0.80 [" in text and "±s" in text


def test_without_outcome_files_the_pairs_interval_is_left_out(tmp_path):
    rows = [_row(0, columns.outcome_fields(CHANGING, {"das": DAS[0]}))]
    figures = card_sites(tmp_path, rows, {}, resamples=100)[(1, "block_output", 2, "last")]
    assert figures["das_iia_changing"] == pytest.approx(0.8)
    assert math.isnan(figures["das_pairs_low"]) and math.isnan(figures["das_seeds_low"])
    assert card_columns(["das"]) == [f"das_{s}" for s in ("iia", "iia_changing", "seeds_low", "seeds_high",
                                                          "pairs_low", "pairs_high")]


def test_rows_with_and_without_card_fields_read_back_and_write_again_the_same(tmp_path):
    measured = _row(0, columns.outcome_fields(CHANGING, {"das": DAS[0], "pca": PCA[0]}))
    older = _row(1, {})
    rows = [{**r, "intervention_size": "", "train_seconds": 1.0, "test_pairs": 8, "config_fingerprint": "0" * 12}
            for r in (measured, older)]
    path = tmp_path / "results.csv"
    reports.write_rows(path, rows)
    first = path.read_text()
    back = reports.read_rows(path)
    assert back[0]["iia_changing_pca"] == pytest.approx(0.2) and math.isnan(back[0]["iia_diff_means"])
    assert math.isnan(back[1]["iia_changing"])
    reports.write_rows(path, back)
    assert path.read_text() == first
    header = next(csv.reader(first.splitlines()))
    assert header[: header.index("selectivity") + 1 + len(columns.FIELDS)][-len(columns.FIELDS):] == list(columns.FIELDS)


def test_outcomes_round_trip_and_a_missing_file_is_none(tmp_path):
    path = outcomes_path(tmp_path, "block_input", 0, "name", 2)
    assert path.name == "block_input-L0-name-s2.pt" and load_outcomes(path) is None
    save_outcomes(path, CHANGING, {"das": DAS[0]})
    changing, correct = load_outcomes(path)
    assert torch.equal(changing, CHANGING) and torch.equal(correct["das"], DAS[0])


def test_a_jobs_bases_follow_the_methods_and_the_random_one_is_seeded_per_site():
    read = {"diff_means": torch.eye(6)[:, :1]}
    bases = job_bases(["das", "diff_means", "pca", "full_vector", "random_subspace"], read, 6, 2, 0, "block_output-L1-last")
    assert list(bases) == ["diff_means", "full_vector", "random_subspace"]  # pca was not read: no figure
    assert torch.equal(bases["full_vector"], torch.eye(6)) and bases["random_subspace"].shape == (6, 2)
    again = job_bases(["random_subspace"], {}, 6, 2, 0, "block_output-L1-last")["random_subspace"]
    other_site = job_bases(["random_subspace"], {}, 6, 2, 0, "block_output-L2-last")["random_subspace"]
    assert torch.equal(again, bases["random_subspace"]) and not torch.allclose(other_site, again)
    assert random_subspace_seed(1, "x") != random_subspace_seed(0, "x")
    assert job_bases(["full_vector", "random_subspace"], {}, None, 1, 0, "k") == {}
