"""Counterfactual-pair tasks, their tokenizer layouts, the tiny LM and the DataModule.

Every label is checked against the causal model written out here by hand (name lists,
capital table, vector equality), positions against the tokens that sit there, and the
"hub-like" case against a byte-level BPE built in code that splits some words in two.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_outputs import SequenceClassifierOutput

import das_train.data.pair_datamodule as datamodule_module
import das_train.data.tiny_lm as tiny_lm_module
from das_train.data.pair_contract import (
    BASE_CONTROL,
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    LABEL_COLUMNS,
    SOURCE_IDS,
    SOURCE_LABEL,
    SOURCE_MASK,
    SOURCE_VARIABLE,
)
from das_train.data.pair_datamodule import PairDataModule, collate
from das_train.data.tiny_lm import answer_accuracy, train_tiny_lm
from das_train.data.tokenization import encode_sentences
from das_train.tasks.capitals import CapitalsTask
from das_train.tasks.gender import FEMALE_NAMES, MALE_NAMES, GenderTask
from das_train.tasks.hierarchical_equality import EqualityPairsTask, EqualityTask

TEXT_COLUMNS = (BASE_IDS, BASE_MASK, SOURCE_IDS, SOURCE_MASK, *LABEL_COLUMNS)


def rows(dataset, n: int) -> list[dict]:
    return [dataset[i] for i in range(n)]


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


# -- a "hub-like" byte-level BPE built in code ---------------------------------------------------


def chain_bpe(words: list[str], split: dict[str, tuple[str, ...]]) -> PreTrainedTokenizerFast:
    """A GPT-NeoX-style byte-level BPE: no ``<bos>``, ``Ġ`` marks a leading space.

    Every word in ``words`` becomes one token (merges grow it left to right); a word in
    ``split`` gets only its parts as tokens, so it tokenizes to several.
    """
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    # Merges apply by rank, so an early merge inside another word could break that word's
    # chain: rank "Ġ" words first, then the other whole words, then the parts of split words.
    whole = sorted((w for w in words if w not in split), key=lambda w: not w.startswith("Ġ"))
    pieces = whole + [p for w in words if w in split for p in split[w]]
    for piece in pieces:
        for k in range(1, len(piece)):
            if (piece[:k], piece[k]) not in merges:
                merges.append((piece[:k], piece[k]))
            vocab.setdefault(piece[: k + 1], len(vocab))
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    for word in whole:  # the fixture itself works as meant
        assert len(tokenizer.tokenize(word.replace("Ġ", " "))) == 1, word
    return tokenizer


GENDER_SPLIT = {"Jennifer": ("Jen", "nifer"), "Matthew": ("Mat", "thew"), "Elizabeth": ("Eliza", "beth"),
                "Ġdanced": ("Ġdan", "ced")}


@pytest.fixture(scope="module")
def gender_bpe() -> PreTrainedTokenizerFast:
    task = GenderTask()
    words = [*task.male_names, *task.female_names, *("Ġ" + v for v in task.verbs), "Ġbecause", "Ġhe", "Ġshe"]
    return chain_bpe(words, GENDER_SPLIT)


# -- gender ---------------------------------------------------------------------------------------


def test_gender_pairs_follow_the_causal_model():
    task = GenderTask()
    tok = task.build_tokenizer()
    he, she = tok.convert_tokens_to_ids("he"), tok.convert_tokens_to_ids("she")
    control = task.control_classes()
    dataset = task.pairs(64, seed=0, tokenizer=tok)
    assert dataset.column_names == list(TEXT_COLUMNS)
    for row in rows(dataset, 16):
        base, source = tokens(tok, row[BASE_IDS]), tokens(tok, row[SOURCE_IDS])
        assert base[0] == source[0] == "<bos>" and base[3] == source[3] == "because"
        assert base[2] in task.verbs and source[2] in task.verbs
        base_female, source_female = base[1] in FEMALE_NAMES, source[1] in FEMALE_NAMES
        assert base_female != (base[1] in MALE_NAMES)
        assert row[BASE_VARIABLE] == int(base_female) and row[SOURCE_VARIABLE] == int(source_female)
        assert row[BASE_LABEL] == (she if base_female else he)
        assert row[SOURCE_LABEL] == (she if source_female else he)
        assert row[COUNTERFACTUAL_LABEL] == (she if source_female else he)  # gender from the source
        assert row[BASE_CONTROL] == control[base[1]]
        assert row[BASE_MASK] == row[SOURCE_MASK] == [1, 1, 1, 1]
    spec = task.spec(tok)
    assert spec.positions == {"bos": 0, "name": 1, "verb": 2, "last": 3}
    assert (spec.variable, spec.variable_values, spec.label_names) == ("gender", 2, {he: " he", she: " she"})


def test_gender_classes_are_balanced_and_both_genders_swap():
    dataset = GenderTask().pairs(2000, seed=1)[:]
    share = torch.tensor(dataset[BASE_VARIABLE]).float().mean().item()
    assert 0.45 < share < 0.55
    swapped = [b != s for b, s in zip(dataset[BASE_VARIABLE], dataset[SOURCE_VARIABLE])]
    assert 0.4 < sum(swapped) / len(swapped) < 0.6


def test_gender_sentences_cover_every_name_and_verb():
    task = GenderTask()
    sentences = task.sentences()
    assert len(sentences) == (len(task.male_names) + len(task.female_names)) * len(task.verbs)
    assert ("Sarah walked because", " she") in sentences and ("John ran because", " he") in sentences


def test_control_labels_are_a_function_of_the_name_type():
    task = GenderTask(control_seed=3)
    tok = task.build_tokenizer()
    data = task.pairs(500, seed=0, tokenizer=tok)[:]
    seen: dict[str, set[int]] = {}
    for ids, control in zip(data[BASE_IDS], data[BASE_CONTROL]):
        seen.setdefault(tok.convert_ids_to_tokens(ids[1]), set()).add(control)
    assert all(len(classes) == 1 for classes in seen.values())
    assert {c for classes in seen.values() for c in classes} == {0, 1}
    assert GenderTask(control_seed=4).control_classes() != task.control_classes()


# -- capitals -------------------------------------------------------------------------------------


def test_capitals_pairs_follow_the_causal_model():
    task = CapitalsTask()
    tok = task.build_tokenizer()
    capital = dict(task.countries)
    countries = [c for c, _ in task.countries]
    spec = task.spec(tok)
    assert spec.positions == {"the": 0, "capital": 1, "of": 2, "country": 3, "is": 4}
    assert spec.variable_values == len(countries)
    dataset = task.pairs(32, seed=0, tokenizer=tok)
    for row in rows(dataset, 12):
        base, source = tokens(tok, row[BASE_IDS]), tokens(tok, row[SOURCE_IDS])
        assert base[:3] == ["The", "capital", "of"] and base[4] == "is"
        assert row[BASE_VARIABLE] == countries.index(base[3])
        assert row[SOURCE_VARIABLE] == countries.index(source[3])
        assert tokens(tok, [row[BASE_LABEL]]) == [capital[base[3]]]
        assert tokens(tok, [row[SOURCE_LABEL]]) == [capital[source[3]]]
        assert tokens(tok, [row[COUNTERFACTUAL_LABEL]]) == [capital[source[3]]]
    assert ("The capital of France is", " Paris") in task.sentences()


# -- hierarchical equality ------------------------------------------------------------------------


def test_equality_pairs_follow_the_causal_model():
    task = EqualityPairsTask()
    dim = task.equality.embedding_dim
    data = task.pairs(64, seed=5).with_format("torch")[:]
    reference = EqualityTask().counterfactual_pairs(64, seed=5, variable="WX")
    assert data["base_inputs_embeds"].shape == (64, 1, 4 * dim)
    torch.testing.assert_close(data["base_inputs_embeds"][:, 0], reference["base"])
    torch.testing.assert_close(data["source_inputs_embeds"][:, 0], reference["source"])
    assert torch.equal(data[COUNTERFACTUAL_LABEL], reference["counterfactual_label"])

    def equal(x: torch.Tensor, a: int, b: int) -> torch.Tensor:
        return (x[:, 0, a * dim:(a + 1) * dim] == x[:, 0, b * dim:(b + 1) * dim]).all(-1)

    base, source = data["base_inputs_embeds"], data["source_inputs_embeds"]
    wx_b, yz_b, wx_s, yz_s = equal(base, 0, 1), equal(base, 2, 3), equal(source, 0, 1), equal(source, 2, 3)
    assert torch.equal(data[BASE_LABEL], (wx_b == yz_b).long())
    assert torch.equal(data[SOURCE_LABEL], (wx_s == yz_s).long())
    assert torch.equal(data[COUNTERFACTUAL_LABEL], (wx_s == yz_b).long())
    assert torch.equal(data[BASE_VARIABLE], wx_b.long()) and torch.equal(data[SOURCE_VARIABLE], wx_s.long())
    spec = task.spec()
    assert (spec.positions, spec.variable, spec.is_language_model_task) == ({"objects": 0}, "WX", False)


# -- reproducibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [GenderTask(), CapitalsTask(), EqualityPairsTask()], ids=lambda t: t.name)
def test_pairs_are_seeded(task):
    first, again, other = task.pairs(40, seed=7)[:], task.pairs(40, seed=7)[:], task.pairs(40, seed=8)[:]
    assert first == again
    assert first != other


# -- a hub-like tokenizer -------------------------------------------------------------------------


def test_hub_like_bpe_drops_multi_token_words_and_measures_positions(gender_bpe, caplog):
    task = GenderTask()
    with caplog.at_level(logging.WARNING, logger="das_train.data.templates"):
        layout = task.layout(gender_bpe)
    assert layout.template.dropped == {"name": ("Matthew", "Jennifer", "Elizabeth"), "verb": ("danced",)}
    assert "dropped 3 of 40 words" in caplog.text and "dropped 1 of 12 words" in caplog.text
    spec = task.spec(gender_bpe)
    assert spec.positions == {"name": 0, "verb": 1, "last": 2}  # no <bos> added by this tokenizer
    he, she = gender_bpe.convert_tokens_to_ids(["Ġhe", "Ġshe"])
    assert spec.label_names == {he: " he", she: " she"}
    data = task.pairs(200, seed=0, tokenizer=gender_bpe)[:]
    for ids, label in zip(data[BASE_IDS], data[BASE_LABEL]):
        name, verb, last = tokens(gender_bpe, ids)
        assert name not in GENDER_SPLIT and "Ġ" + verb[1:] not in GENDER_SPLIT and last == "Ġbecause"
        assert label == (she if name in FEMALE_NAMES else he)
    assert len(task.sentences(gender_bpe)) == 37 * 11


def test_hub_like_bpe_drops_countries_and_capitals():
    task = CapitalsTask()
    words = ["The", "Ġcapital", "Ġof", "Ġis", *("Ġ" + w for pair in task.countries for w in pair)]
    tok = chain_bpe(words, {"ĠHungary": ("ĠHun", "gary"), "ĠNairobi": ("ĠNai", "robi")})
    layout = task.layout(tok)
    assert layout.dropped_countries == ("Hungary",) and layout.dropped_capitals == ("Kenya",)
    assert task.spec(tok).variable_values == len(task.countries) - 2
    assert task.spec(tok).positions == {"the": 0, "capital": 1, "of": 2, "country": 3, "is": 4}


def test_a_tokenizer_that_splits_a_pronoun_is_refused():
    task = GenderTask()
    words = [*task.male_names, *task.female_names, *("Ġ" + v for v in task.verbs), "Ġbecause", "Ġhe", "Ġshe"]
    with pytest.raises(ValueError, match="one token"):
        task.layout(chain_bpe(words, {"Ġshe": ("Ġs", "he")}))


# -- the tiny LM, filtering and the DataModule -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gender(tmp_path_factory):
    task = GenderTask()
    tok = task.build_tokenizer()
    cache = tmp_path_factory.mktemp("tiny")
    model = train_tiny_lm(task, tok, seed=0, cache_dir=str(cache))
    return task, tok, model, cache


def test_tiny_lm_is_right_on_every_gender_sentence(tiny_gender):
    task, tok, model, _ = tiny_gender
    assert answer_accuracy(model, tok, task.sentences(tok)) == 1.0


def test_tiny_lm_is_cached_and_reloaded(tiny_gender, monkeypatch):
    task, tok, model, cache = tiny_gender
    (saved,) = os.listdir(cache)  # one finished model, no staging leftovers
    assert saved.startswith("tiny-gender-")
    monkeypatch.setattr(tiny_lm_module, "train_lm", lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = train_tiny_lm(task, tok, seed=0, cache_dir=str(cache))
    ids, _ = encode_sentences(tok, task.sentences(tok))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_filtering_keeps_all_pairs_for_the_trained_model_and_drops_for_a_random_one(tiny_gender):
    task, tok, model, _ = tiny_gender
    trained = PairDataModule(task, tok, n_train=200, n_val=50, n_test=50, batch_size=32, seed=0)
    assert trained.filter_with(model) == {"train": 0, "val": 0, "test": 0}
    torch.manual_seed(0)
    random_model = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16)).eval()
    untrained = PairDataModule(task, tok, n_train=200, n_val=50, n_test=50, batch_size=32, seed=0)
    dropped = untrained.filter_with(random_model)
    assert all(count > 0 for count in dropped.values())
    assert {s: len(untrained.datasets[s]) for s in dropped} == {"train": 200 - dropped["train"],
                                                               "val": 50 - dropped["val"],
                                                               "test": 50 - dropped["test"]}
    assert not PairDataModule(task, tok, 20, 5, 5, 8, 0, filter_pairs=False).filter_with(random_model)["train"]


class EqualityOracle(nn.Module):
    """The causal model as a classifier: one-hot logits of (w == x) == (y == z)."""

    def __init__(self, dim: int, flip: bool = False) -> None:
        super().__init__()
        self.dim, self.flip = dim, flip
        self.unused = nn.Parameter(torch.zeros(1))  # filter_with reads the device from a parameter

    def forward(self, inputs_embeds: torch.Tensor) -> SequenceClassifierOutput:
        x = inputs_embeds.unflatten(-1, (4, self.dim))  # (batch, 1, 4, dim)
        label = (x[..., 0, :] == x[..., 1, :]).all(-1) == (x[..., 2, :] == x[..., 3, :]).all(-1)  # (batch, 1)
        label = label ^ self.flip
        return SequenceClassifierOutput(logits=nn.functional.one_hot(label.long(), 2).float())  # (batch, 1, 2)


def test_filtering_vector_pairs_uses_the_class_logits():
    task = EqualityPairsTask()
    module = PairDataModule(task, None, n_train=100, n_val=20, n_test=20, batch_size=16, seed=0)
    assert module.filter_with(EqualityOracle(task.equality.embedding_dim)) == {"train": 0, "val": 0, "test": 0}
    flipped = PairDataModule(task, None, n_train=100, n_val=20, n_test=20, batch_size=16, seed=0)
    assert flipped.filter_with(EqualityOracle(task.equality.embedding_dim, flip=True)) == {
        "train": 100, "val": 20, "test": 20}


def test_dataloaders_yield_stacked_tensors_of_the_contract_columns():
    task = GenderTask()
    module = PairDataModule(task, task.build_tokenizer(), n_train=50, n_val=10, n_test=10, batch_size=8, seed=0)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == set(TEXT_COLUMNS)
    assert batch[BASE_IDS].shape == (8, 4) and batch[BASE_IDS].dtype == torch.long
    assert batch[COUNTERFACTUAL_LABEL].shape == (8,)
    assert sum(len(b[BASE_LABEL]) for b in module.val_dataloader()) == 10
    stacked = collate([{"a": torch.tensor([1, 2])}, {"a": torch.tensor([3, 4])}])
    assert torch.equal(stacked["a"], torch.tensor([[1, 2], [3, 4]]))
    assert module.spec().positions == {"bos": 0, "name": 1, "verb": 2, "last": 3}


def test_splits_share_no_pair():
    # 22 countries give 484 distinct pairs: without care the splits would overlap
    module = PairDataModule(CapitalsTask(), None, n_train=300, n_val=60, n_test=60, batch_size=8, seed=0)
    module.setup()
    keys = {s: set(datamodule_module._pair_keys(module.datasets[s])) for s in ("train", "val", "test")}
    assert {s: len(module.datasets[s]) for s in keys} == {"train": 300, "val": 60, "test": 60}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]


def test_pairs_are_cached_once_and_reloaded(tmp_path, monkeypatch):
    task = GenderTask()
    tok = task.build_tokenizer()

    def build() -> PairDataModule:
        return PairDataModule(task, tok, n_train=40, n_val=10, n_test=10, batch_size=8, seed=3, cache_dir=str(tmp_path))

    first = build()
    first.prepare_data()
    first.setup()
    (entry,) = os.listdir(tmp_path)  # one finished cache, no staging leftovers
    assert entry.startswith("gender-")
    stamp = os.path.getmtime(tmp_path / entry)
    monkeypatch.setattr(PairDataModule, "generate", lambda self: pytest.fail("regenerated despite the cache"))
    second = build()
    second.prepare_data()
    second.setup()
    assert os.path.getmtime(tmp_path / entry) == stamp
    for split in ("train", "val", "test"):
        assert second.datasets[split].with_format(None)[:] == first.datasets[split].with_format(None)[:]
    other = PairDataModule(task, tok, n_train=40, n_val=10, n_test=10, batch_size=8, seed=4, cache_dir=str(tmp_path))
    assert other.cache_path() != first.cache_path()
