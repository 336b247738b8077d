"""The field's formats read directly, each from a small file written here in that format:
CausalGym, MIB counterfactual datasets, RAVEL instances and pyvene-style tensors; and the
DataModule taking a pair file's own splits."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset, DatasetDict

from das_train.data.pair_contract import (
    BASE_IDS,
    BASE_LABEL,
    BASE_POSITIONS,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_LABEL,
    SOURCE_POSITIONS,
)
from das_train.data.pair_datamodule import PairDataModule
from das_train.data.pair_files import PairFileError
from das_train.data.pair_files.formats import detect_format
from das_train.tasks.pairs import PairsTask
from tests.test_pair_files import bpe_tokenizer, settings, token, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


def test_causalgym_spans_types_and_labels(tmp_path, tokenizer):
    rows = [{"base": ["John", " walked", " because"], "src": ["Zyxw", " walked", " because"],
             "base_type": "male", "src_type": "female", "base_label": " he", "src_label": " she", "split": "train"},
            {"base": ["Mary", " ran", " because"], "src": ["John", " ran", " because"],
             "base_type": "female", "src_type": "male", "base_label": " she", "src_label": " he", "split": "test"}]
    path = write_jsonl(tmp_path / "cg.jsonl", rows)
    task = PairsTask(settings(path, positions={"name": "span:0", "verb": "span:1", "last": "last"}, span_token="first"))
    data = task.built(tokenizer).dataset
    # base John Ġwalked Ġbecause padded to the source's 6 tokens (Z y x w Ġwalked Ġbecause)
    assert data[0][BASE_POSITIONS] == [3, 4] and data[0][SOURCE_POSITIONS] == [0, 4]
    assert data[0][BASE_IDS][4] == token(tokenizer, " walked")
    assert data[COUNTERFACTUAL_LABEL] == [token(tokenizer, " she"), token(tokenizer, " he")]
    assert data[BASE_VARIABLE] == [1, 0] and task.spec(tokenizer).value_names == ("female", "male")
    splits = task.split_pairs({"train": 9, "val": 9, "test": 9}, 0, tokenizer)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 0, 1]
    assert detect_format(list(rows[0])) == "causalgym"


def mib_row(prompt: str, answer: int, cf_prompt: str, cf_answer: int) -> dict:
    choices = {"label": ["he", "she"], "text": ["a man", "a woman"]}
    return {"prompt": prompt, "choices": choices, "answerKey": answer,
            "answerPosition_counterfactual": {"prompt": cf_prompt, "choices": choices, "answerKey": cf_answer},
            "randomLetter_counterfactual": {"prompt": cf_prompt, "choices": choices, "answerKey": answer}}


def test_mib_nested_counterfactual_picked_by_config(tmp_path, tokenizer):
    rows = [mib_row("John walked because", 0, "Mary walked because", 1)]
    path = write_jsonl(tmp_path / "mib.jsonl", rows)
    with pytest.raises(PairFileError, match="the file has 2 counterfactual columns"):
        PairsTask(settings(path))
    task = PairsTask(settings(path, counterfactual="answerPosition", answer_prefix=" "))
    row = task.built(tokenizer).dataset[0]
    a, b = token(tokenizer, " he"), token(tokenizer, " she")
    assert (row[BASE_LABEL], row[SOURCE_LABEL], row[COUNTERFACTUAL_LABEL]) == (a, b, b)
    assert row[SOURCE_IDS][-3:] == tokenizer("Mary walked because")["input_ids"]


def test_ravel_entities_and_inv_label(tmp_path, tokenizer):
    rows = [{"input": "John walked because", "label": " he", "source_input": "I saw Mary walked because",
             "source_label": " she", "inv_label": " she", "entity": "John", "source_entity": "Mary",
             "split": "%s walked because", "source_split": "I saw %s walked because"}]
    path = write_jsonl(tmp_path / "ravel.json", rows)
    task = PairsTask(settings(path, positions={"entity": "{entity}", "last": "last"}))
    row = task.built(tokenizer).dataset[0]
    assert tokenizer.decode([row[BASE_IDS][row[BASE_POSITIONS][0]]]) == "John"
    assert tokenizer.decode([row[SOURCE_IDS][row[SOURCE_POSITIONS][0]]]).strip() == "Mary"
    assert row[COUNTERFACTUAL_LABEL] == token(tokenizer, " she")
    assert task.loaded.splits == (None,)  # RAVEL's split column is a prompt template


def test_pyvene_tensors_from_a_pt_file(tmp_path, tokenizer):
    ids = tokenizer("John walked because")["input_ids"]
    source = tokenizer("Mary walked because")["input_ids"]
    he, she = token(tokenizer, " he"), token(tokenizer, " she")
    torch.save({"input_ids": torch.tensor([ids]), "source_input_ids": torch.tensor([[source]]),
                "labels": torch.tensor([[-100, -100, she]]), "intervention_ids": torch.tensor([0]),
                "base_labels": torch.tensor([he]), "source_labels": torch.tensor([she])}, tmp_path / "pv.pt")
    task = PairsTask(settings(tmp_path / "pv.pt", base_label="base_labels", source_label="source_labels",
                              positions={"verb": 1, "last": "last"}))
    row = task.built(tokenizer).dataset[0]
    assert row[BASE_IDS] == ids and row[SOURCE_IDS] == source
    assert (row[BASE_LABEL], row[SOURCE_LABEL], row[COUNTERFACTUAL_LABEL]) == (he, she, she)
    assert row[BASE_POSITIONS] == [1]
    with pytest.raises(PairFileError, match="name the label column"):
        PairsTask(settings(tmp_path / "pv.pt")).built(tokenizer)
    with pytest.raises(PairFileError, match="needs text, but this file gives token ids"):
        PairsTask(settings(tmp_path / "pv.pt", positions={"verb": "walked"}, filter_pairs=False)).built(tokenizer)


def test_a_saved_dataset_dict_keeps_its_splits(tmp_path, tokenizer):
    row = {"base": "John walked because", "source": "Mary walked because", "base_label": " he",
           "source_label": " she", "counterfactual_label": " she"}
    DatasetDict({"train": Dataset.from_list([row] * 3), "validation": Dataset.from_list([row]),
                 "test": Dataset.from_list([row] * 2)}).save_to_disk(str(tmp_path / "dd"))
    task = PairsTask(settings(tmp_path / "dd"))
    assert sorted(task.loaded.splits, key=str) == ["test"] * 2 + ["train"] * 3 + ["val"]


def test_the_datamodule_takes_the_files_own_splits(tmp_path, tokenizer):
    rows = [{"base": f"John walked because {'x' * i}", "source": "Mary walked because", "base_label": " he",
             "source_label": " she", "counterfactual_label": " she", "split": s}
            for i, s in enumerate(["train", "train", "test", "validation"])]
    task = PairsTask(settings(write_jsonl(tmp_path / "p.jsonl", rows), positions={"verb": "walked", "last": "last"}))
    module = PairDataModule(task, tokenizer, n_train=10, n_val=10, n_test=10, cache_dir=str(tmp_path / "cache"))
    module.setup()
    assert {s: len(module.datasets[s]) for s in ("train", "val", "test")} == {"train": 2, "val": 1, "test": 1}
    batch = next(iter(module.train_dataloader()))
    assert batch[BASE_IDS].shape[0] == 2 and batch[BASE_POSITIONS].shape == (2, 1)
    (tmp_path / "p.jsonl").write_text(json.dumps({**rows[0], "split": "train"}) + "\n" + json.dumps(rows[2]) + "\n")
    edited = PairsTask(settings(tmp_path / "p.jsonl"))
    assert PairDataModule(edited, tokenizer, cache_dir=str(tmp_path / "cache")).cache_path() != module.cache_path()
