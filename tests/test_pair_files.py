"""Pair files to the pair contract: positions, answers, padding, splits and bad data.

The tokenizer is a byte-level BPE trained here in a few lines (GPT-2's pre-tokenizer), so
" walked" is one piece with its leading space while an unseen word such as "Zyxw" or
" strolled" splits into several, as in real models. Every expected index below is counted by
hand from the tokens the test prints in its comments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import EOS, byte_level_bpe
from transformers import PreTrainedTokenizerFast

from das_train.data.pair_contract import (
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_POSITION_IDS,
    BASE_POSITIONS,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_LABEL,
    SOURCE_POSITIONS,
    SOURCE_VARIABLE,
    RowPosition,
)
from das_train.data.pair_files import PairFileError, PairFileSettings
from das_train.tasks.pairs import PairsTask
from das_train.training.schema import TaskConfig

CORPUS = ["John walked because he", "Mary walked because she", "John ran because he", "Mary ran because she"]


def bpe_tokenizer(padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A byte-level BPE over CORPUS: "John", " walked", " because", " he" are one token each;
    unseen words fall apart into bytes. No pad token: padding must use eos (id 0)."""
    tokenizer = byte_level_bpe(CORPUS * 50, 300, trim_offsets=True, eos_token=EOS)
    tokenizer.padding_side = padding_side
    return tokenizer


def settings(path: Path, **overrides) -> PairFileSettings:
    return PairFileSettings.from_mapping({**dataclasses.asdict(TaskConfig()), "path": str(path), **overrides})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def pair(base: str, source: str, base_label=" he", source_label=" she", **extra) -> dict:
    return {"base": base, "source": source, "base_label": base_label, "source_label": source_label,
            "counterfactual_label": source_label, **extra}


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


def token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, ids
    return ids[0]


def test_rows_are_left_padded_with_position_ids_and_per_row_positions(tmp_path, tokenizer):
    # base  "Zyxw walked because": Z y x w Ġwalked Ġbecause  (6 tokens)
    # source "Mary walked because": Mary Ġwalked Ġbecause    (3 tokens)
    path = write_jsonl(tmp_path / "p.jsonl", [pair("Zyxw walked because", "Mary walked because")])
    task = PairsTask(settings(path, positions={"verb": "walked", "last": "last"}))
    spec = task.spec(tokenizer)
    assert spec.positions == {"verb": RowPosition(0), "last": -1}
    row = task.built(tokenizer).dataset[0]
    eos = tokenizer.eos_token_id
    assert row[BASE_MASK] == [1] * 6 and row[SOURCE_IDS][:3] == [eos] * 3
    assert row[BASE_POSITION_IDS] == [0, 1, 2, 3, 4, 5]
    assert row["source_attention_mask"] == [0, 0, 0, 1, 1, 1]
    assert row["source_position_ids"] == [0, 0, 0, 0, 1, 2]
    walked = token(tokenizer, " walked")
    assert row[BASE_POSITIONS] == [4] and row[BASE_IDS][4] == walked
    assert row[SOURCE_POSITIONS] == [4] and row[SOURCE_IDS][4] == walked  # 3 pads + index 1
    assert row[BASE_LABEL] == token(tokenizer, " he") and row[COUNTERFACTUAL_LABEL] == token(tokenizer, " she")


def test_a_right_padding_tokenizer_still_gives_left_padded_rows(tmp_path):
    tokenizer = bpe_tokenizer(padding_side="right")
    path = write_jsonl(tmp_path / "p.jsonl", [pair("Zyxw walked because", "Mary walked because")])
    row = PairsTask(settings(path)).built(tokenizer).dataset[0]
    assert row["source_attention_mask"] == [0, 0, 0, 1, 1, 1]
    assert row[SOURCE_IDS][-1] == token(tokenizer, " because")


@pytest.mark.parametrize(("span_token", "expected"), [("first", 2), ("last", 8)])
def test_a_word_of_several_tokens_takes_its_first_or_last_token(tmp_path, tokenizer, span_token, expected):
    # "Mary strolled because": Mary Ġ s t r o l l ed Ġbecause; the bare "Ġ" covers no character
    path = write_jsonl(tmp_path / "p.jsonl", [pair("Mary strolled because", "Mary strolled because")])
    task = PairsTask(settings(path, positions={"verb": "strolled"}, span_token=span_token))
    row = task.built(tokenizer).dataset[0]
    assert row[BASE_POSITIONS] == [expected]
    piece = tokenizer.decode([row[BASE_IDS][expected]])
    assert piece == ("s" if span_token == "first" else "ed")


def test_slot_of_a_template_token_index_and_negative_index(tmp_path, tokenizer):
    rows = [{"template": "{name} walked because", "base_name": "Zyxw", "source_name": "John",
             "base_label": " he", "source_label": " he", "counterfactual_label": " he"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = PairsTask(settings(path, template="template",
                              positions={"name": "{name}", "first": 0, "verb": "index:-2", "last": "last"}))
    spec = task.spec(tokenizer)
    assert spec.positions == {"name": RowPosition(0), "first": RowPosition(1), "verb": RowPosition(2), "last": -1}
    row = task.built(tokenizer).dataset[0]
    # base Z y x w Ġwalked Ġbecause (6); source John Ġwalked Ġbecause (3, after 3 pads)
    assert row[BASE_POSITIONS] == [3, 0, 4]
    assert row[SOURCE_POSITIONS] == [3, 3, 4]


def test_slot_found_in_the_text_from_the_rows_columns(tmp_path, tokenizer):
    rows = [pair("I think John walked because", "Mary walked because", entity="John", source_entity="Mary")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    row = PairsTask(settings(path, positions={"subject": "{entity}"})).built(tokenizer).dataset[0]
    assert tokenizer.decode([row[BASE_IDS][row[BASE_POSITIONS][0]]]).strip() == "John"
    assert tokenizer.decode([row[SOURCE_IDS][row[SOURCE_POSITIONS][0]]]).strip() == "Mary"


def test_integer_answers_are_token_ids_and_values_are_sorted_classes(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because", 5, 7, counterfactual_label=7, g="male", h="female"),
            pair("Mary ran because", "John ran because", 7, 5, counterfactual_label=5, g="female", h="male")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = PairsTask(settings(path, base_value="g", source_value="h"))
    data = task.built(tokenizer).dataset
    assert data[BASE_LABEL] == [5, 7] and data[SOURCE_LABEL] == [7, 5] and data[COUNTERFACTUAL_LABEL] == [7, 5]
    assert data[BASE_VARIABLE] == [1, 0] and data[SOURCE_VARIABLE] == [0, 1]
    assert task.spec(tokenizer).value_names == ("female", "male")
    assert task.spec(tokenizer).variable_values == 2


def test_answer_prefix_and_answers_standing_for_values(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because", "he", "she")]
    path = write_jsonl(tmp_path / "p.jsonl", [{**rows[0], "counterfactual_label": "she"}])
    task = PairsTask(settings(path, answer_prefix=" "))
    spec = task.spec(tokenizer)
    assert spec.value_names == (" he", " she")
    assert spec.label_names == {token(tokenizer, " he"): " he", token(tokenizer, " she"): " she"}


def test_several_source_columns_give_one_pair_each(tmp_path, tokenizer):
    rows = [{"base": "John walked because", "s1": "Mary walked because", "s2": "John ran because",
             "base_label": " he", "c1": " she", "c2": " he"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = PairsTask(settings(path, sources=["s1", "s2"], counterfactual_label=["c1", "c2"], filter_pairs=False))
    data = task.built(tokenizer).dataset
    assert data[COUNTERFACTUAL_LABEL] == [token(tokenizer, " she"), token(tokenizer, " he")]
    assert data[SOURCE_LABEL] == [-100, -100]


def test_csv_parquet_and_saved_folder_read_the_same(tmp_path, tokenizer):
    from datasets import Dataset

    rows = [pair("John walked because", "Mary walked because"), pair("Mary ran because", "John ran because")]
    table = Dataset.from_list(rows)
    table.to_csv(str(tmp_path / "p.csv"))
    table.to_parquet(str(tmp_path / "p.parquet"))
    table.save_to_disk(str(tmp_path / "folder"))
    expected = PairsTask(settings(write_jsonl(tmp_path / "p.jsonl", rows))).built(tokenizer).dataset[:]
    for name in ("p.csv", "p.parquet", "folder"):
        assert PairsTask(settings(tmp_path / name)).built(tokenizer).dataset[:] == expected, name


def test_a_split_column_is_honoured_and_validation_reads_as_val(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because", split=s)
            for s in ("train", "train", "validation", "test")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    splits = PairsTask(settings(path)).split_pairs({"train": 1, "val": 5, "test": 5}, 0, tokenizer)
    assert {s: len(d) for s, d in splits.items()} == {"train": 1, "val": 1, "test": 1}


def test_without_splits_a_seeded_cut_shrinks_in_proportion(tmp_path, tokenizer):
    rows = [pair(f"John walked because {'x' * (i + 1)}", "Mary walked because") for i in range(10)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    task = PairsTask(settings(path))
    splits = task.split_pairs({"train": 20, "val": 5, "test": 5}, 0, tokenizer)
    # 10 of 30 asked: test and val floor(5 * 10 / 30) = 1, train floor(20 * 10 / 30) = 6 plus the 2 left
    assert {s: len(d) for s, d in splits.items()} == {"train": 8, "val": 1, "test": 1}
    keys = [tuple(ids) for d in splits.values() for ids in d[BASE_IDS]]
    assert len(set(keys)) == 10  # no pair in two splits
    again = task.split_pairs({"train": 20, "val": 5, "test": 5}, 0, tokenizer)
    assert again["test"][BASE_IDS] == splits["test"][BASE_IDS]


def test_the_tiny_model_gets_a_tokenizer_and_sentences(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair("John walked because", "Mary walked because")])
    task = PairsTask(settings(path, positions={"verb": "walked", "last": "last"}))
    words = task.build_tokenizer()
    assert task.sentences(words) == [("John walked because", " he"), ("Mary walked because", " she")]
    row = task.built(words).dataset[0]
    assert row[BASE_POSITIONS] == [2]  # <bos> John walked because
    assert row[BASE_LABEL] == words.convert_tokens_to_ids("he")


# -- bad data: clear errors naming the file, row and column, all at once ------------------------


def problems_of(path: Path, tokenizer, **overrides) -> str:
    with pytest.raises(PairFileError) as caught:
        PairsTask(settings(path, **overrides)).spec(tokenizer)
    return str(caught.value)


def test_a_missing_column_is_named_with_the_columns_there(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"base": "John walked because", "base_label": " he"}])
    message = problems_of(path, tokenizer)
    assert str(path) in message
    assert "column 'source': missing; the file has columns ['base', 'base_label']" in message
    assert "column 'counterfactual_label': missing" in message


def test_absent_markers_and_bad_answers_are_listed_by_row_and_column(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because"),
            pair("John ran because", "Mary ran because", base_label=""),
            pair("John walked because", "Mary walked because", source_label=999, counterfactual_label=" she")]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    message = problems_of(path, tokenizer, positions={"verb": "walked"})
    assert "row 2, column 'base': position 'verb': marker 'walked' is absent from the text 'John ran because'" in message
    assert "row 2, column 'source': position 'verb'" in message
    assert "row 2, column 'base_label': answer '' is empty" in message
    assert "row 3, column 'source_label': token id 999 is outside the vocabulary" in message
    assert "row 1" not in message


def test_an_answer_not_in_the_vocabulary(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [pair("John walked because", "Mary walked because")])
    words = PairsTask(settings(path)).build_tokenizer()
    path2 = write_jsonl(tmp_path / "q.jsonl", [pair("John walked because", "Mary walked because", " it")])
    message = problems_of(path2, words)
    assert "row 1, column 'base_label': answer ' it' is not in the tokenizer's vocabulary" in message


def test_answers_sharing_their_first_token_are_refused(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because", " he", " hex", counterfactual_label=" hex")]
    message = problems_of(write_jsonl(tmp_path / "p.jsonl", rows), tokenizer)
    assert "answers [' he', ' hex'] share their first token" in message


def test_an_empty_file_and_a_missing_file(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_text("")
    assert "the file is empty" in problems_of(tmp_path / "empty.jsonl", tokenizer)
    assert "no such file or folder" in problems_of(tmp_path / "nope.csv", tokenizer)


def test_a_hub_id_fails_fast_offline(monkeypatch, tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = problems_of(Path("someone/some_pairs"), tokenizer)
    assert "the Hub is off (HF_HUB_OFFLINE is set)" in message


def test_a_split_left_empty_and_an_unknown_split(tmp_path, tokenizer):
    rows = [pair("John walked because", "Mary walked because", split="train")]
    task = PairsTask(settings(write_jsonl(tmp_path / "p.jsonl", rows)))
    with pytest.raises(PairFileError, match="the file's splits give no test pairs"):
        task.split_pairs({"train": 5, "val": 5, "test": 5}, 0, tokenizer)
    bad = write_jsonl(tmp_path / "q.jsonl", [pair("John walked because", "Mary walked because", split="holdout")])
    assert "row 1, column 'split': split 'holdout' is not one of" in problems_of(bad, tokenizer)


def test_a_bad_position_rule_is_named(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [pair("John walked because", "Mary walked because")])
    message = problems_of(path, tokenizer, positions={"verb": "span:x"})
    assert "task.positions.verb = 'span:x': not a position rule; allowed:" in message


def test_load_task_hands_the_config_and_turns_bad_files_into_config_errors(tmp_path):
    from das_train.training.schema import ConfigError
    from das_train.training.task_loading import load_task

    path = write_jsonl(tmp_path / "p.jsonl", [pair("John walked because", "Mary walked because")])
    config = {**dataclasses.asdict(TaskConfig()), "name": "pairs", "path": str(path)}
    assert isinstance(load_task("pairs", config), PairsTask)
    with pytest.raises(ConfigError, match=r"task.path=.*nope.jsonl: no such file"):
        load_task("pairs", {**config, "path": str(tmp_path / "nope.jsonl")})
