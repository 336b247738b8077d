"""``task.answer_score=sequence``: answers of several tokens scored as whole sequences.

The tokenizer is a byte-level BPE trained here on the prompts only, so every country answer
(" France", " Italy", ...) falls apart into several byte pieces, and all of them start with the
same bare "Ġ" piece: the first-token rule cannot tell them apart, the sequence score can. The
loss and the candidate scores are checked against a hand computation on a tiny GPT-2: each
row's unpadded prompt followed by its answer, one plain forward, log_softmax, gather; with the
intervention, a forward hook that writes ``b + W Wᵀ (s - b)`` at the base position, ``s`` read
from the unpadded source by another hook.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import EOS, byte_level_bpe
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from das_train import cli
from das_train.data.answer_sequences import (
    answer_logits,
    candidate_scores,
    choice_index,
    with_answer,
)
from das_train.data.pair_contract import (
    ANSWER_PAD,
    BASE_ANSWER_IDS,
    BASE_IDS,
    BASE_MASK,
    BASE_POSITIONS,
    CANDIDATE_ANSWER_IDS,
    COUNTERFACTUAL_ANSWER_IDS,
    SOURCE_ANSWER_IDS,
    SOURCE_IDS,
    SOURCE_MASK,
    SOURCE_POSITIONS,
    RowPosition,
)
from das_train.data.pair_datamodule import PairDataModule, best_candidates
from das_train.data.pair_files import PairFileError, PairFileSettings
from das_train.data.pair_inputs import model_inputs
from das_train.tasks.pairs import PairsTask
from das_train.training import run as run_module
from das_train.training.das_module import DASModule
from das_train.training.schema import ConfigError, InterventionConfig, SweepConfig, TaskConfig
from das_train.training.sequence_scoring import sequence_loss, sequence_predictions
from das_train.training.sweep.groups import batched_reason
from das_train.training.sweep.sites import SweepSite
from das_train.training.task_loading import load_task

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)

CITIES = {"Paris": "France", "Old Rome": "Italy", "Madrid": "Spain", "Big Berlin": "Germany"}
PROMPT = "{city} is the capital of"


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE over the prompts: the countries are never seen, so each is bytes."""
    return byte_level_bpe([PROMPT.format(city=c) for c in CITIES] * 50, 300, trim_offsets=True, eos_token=EOS)


def rows() -> list[dict]:
    """Every ordered pair of distinct cities: the counterfactual answer is the source's."""
    return [{"base": PROMPT.format(city=b), "source": PROMPT.format(city=s), "base_label": " " + CITIES[b],
             "source_label": " " + CITIES[s], "counterfactual_label": " " + CITIES[s]}
            for b in CITIES for s in CITIES if b != s]


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def settings(path: Path, **overrides) -> PairFileSettings:
    config = {**dataclasses.asdict(TaskConfig()), "path": str(path), "answer_score": "sequence",
              "positions": {"verb": "is", "last": "last"}, **overrides}
    return PairFileSettings.from_mapping(config)


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer()


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("seq") / "pairs.jsonl", rows())


@pytest.fixture(scope="module")
def batch(tokenizer, pairs_path):
    dataset = PairsTask(settings(pairs_path)).built(tokenizer).dataset.with_format("torch")
    return dataset[:]


@pytest.fixture(scope="module")
def gpt2(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def continuation(tokenizer, prompt: str, answer: str) -> list[int]:
    before = tokenizer(prompt)["input_ids"]
    return tokenizer(prompt + answer)["input_ids"][len(before):]


# -- the built columns -------------------------------------------------------------------------


def test_answers_of_several_tokens_sharing_their_first_token_are_refused_by_first_token(tokenizer, pairs_path):
    pieces = {country: continuation(tokenizer, "Paris is the capital of", " " + country) for country in CITIES.values()}
    assert all(len(ids) > 1 for ids in pieces.values())
    assert len({ids[0] for ids in pieces.values()}) == 1  # all start with the bare space piece
    with pytest.raises(PairFileError, match="share their first token"):
        PairsTask(settings(pairs_path, answer_score="first_token")).built(tokenizer)


def test_columns_hold_whole_answers_and_the_files_distinct_answers_as_candidates(tokenizer, batch):
    row = 0  # base "Paris ...", source "Old Rome ..."
    base, source = "Paris is the capital of", "Old Rome is the capital of"
    length = batch[CANDIDATE_ANSWER_IDS].shape[-1]
    longest = max(len(continuation(tokenizer, base, " " + c)) for c in CITIES.values())
    assert length == longest

    def padded(ids):
        return ids + [ANSWER_PAD] * (length - len(ids))

    assert batch[BASE_ANSWER_IDS][row].tolist() == padded(continuation(tokenizer, base, " France"))
    assert batch[SOURCE_ANSWER_IDS][row].tolist() == padded(continuation(tokenizer, source, " Italy"))
    assert batch[COUNTERFACTUAL_ANSWER_IDS][row].tolist() == padded(continuation(tokenizer, base, " Italy"))
    expected = [padded(continuation(tokenizer, base, " " + c)) for c in sorted(CITIES.values())]
    assert batch[CANDIDATE_ANSWER_IDS][row].tolist() == expected  # sorted: France, Germany, Italy, Spain
    assert choice_index(batch[CANDIDATE_ANSWER_IDS], batch[COUNTERFACTUAL_ANSWER_IDS])[row] == 2
    # prompts stay left-padded to one length: "Old Rome" and "Big Berlin" are longer than "Paris"
    assert batch[BASE_MASK][row, 0] == 0 and batch[SOURCE_MASK][row].all()


def test_a_mib_rows_choices_are_its_candidates(tmp_path, tokenizer):
    def mib(prompt, choices, key, cf_prompt, cf_key):
        return {"prompt": prompt, "choices": choices, "answerKey": key,
                "capital_counterfactual": {"prompt": cf_prompt, "choices": choices, "answerKey": cf_key}}

    path = write_jsonl(tmp_path / "mib.jsonl", [
        mib("Paris is the capital of", ["France", "Italy", "Spain"], 0, "Old Rome is the capital of", 1),
        mib("Madrid is the capital of", ["Spain", "Germany"], 0, "Big Berlin is the capital of", 1),
    ])
    dataset = PairsTask(settings(path, answer_prefix=" ", positions={})).built(tokenizer).dataset
    first, second = dataset[0][CANDIDATE_ANSWER_IDS], dataset[1][CANDIDATE_ANSWER_IDS]
    length = len(first[0])

    def padded(ids):
        return ids + [ANSWER_PAD] * (length - len(ids))

    prompt = "Paris is the capital of"
    assert first == [padded(continuation(tokenizer, prompt, " " + c)) for c in ("France", "Italy", "Spain")]
    prompt = "Madrid is the capital of"
    assert second == [*(padded(continuation(tokenizer, prompt, " " + c)) for c in ("Spain", "Germany")),
                      [ANSWER_PAD] * length]  # fewer choices: a candidate of padding only
    torch_rows = dataset.with_format("torch")[:]
    index = choice_index(torch_rows[CANDIDATE_ANSWER_IDS], torch_rows[COUNTERFACTUAL_ANSWER_IDS])
    assert index.tolist() == [1, 1]


def test_a_candidate_of_padding_only_is_never_chosen():
    candidates = torch.tensor([[[3, ANSWER_PAD], [4, 5]], [[3, ANSWER_PAD], [ANSWER_PAD, ANSWER_PAD]]])
    logits = torch.zeros(2, 2, 8)  # uniform: each token costs log 8, so a shorter answer scores higher
    scores = candidate_scores(lambda answer: logits, candidates)
    log8 = torch.log(torch.tensor(8.0))
    assert torch.allclose(scores[0], torch.stack([-log8, -2 * log8]))
    assert scores[1, 0] == -log8 and scores[1, 1] == -torch.inf


def test_token_id_answers_are_refused_before_any_tokenizer(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"base": "a b", "source": "c d", "base_label": 5,
                                                 "source_label": " x", "counterfactual_label": 7}])
    with pytest.raises(PairFileError) as err:
        PairsTask(settings(path))
    text = str(err.value)
    assert "row 1" in text and "'base_label'" in text and "'counterfactual_label'" in text
    assert "task.answer_score=sequence" in text and "token id 5" in text


def test_sequence_mode_on_a_task_that_is_not_a_pair_file_is_a_config_error():
    config = {**dataclasses.asdict(TaskConfig()), "name": "gender", "answer_score": "sequence"}
    with pytest.raises(ConfigError, match="answer_score=sequence.*'gender'.*first_token"):
        load_task("gender", config)


def test_a_bad_answer_score_names_the_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match="answer_score.*first_token.*sequence"):
        cli.check("pairs_file", [f"run_dir={tmp_path}", "task.answer_score=whole"])


# -- scoring against hand computations ---------------------------------------------------------


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ids[mask.bool()]


def real(answer: torch.Tensor) -> list[int]:
    return [int(t) for t in answer if t != ANSWER_PAD]


def hand_log_prob(model, prompt: torch.Tensor, answer: list[int], hooks=()) -> torch.Tensor:
    """Summed log-probability of ``answer`` after the unpadded ``prompt``, one plain forward."""
    ids = torch.cat([prompt, torch.tensor(answer[:-1], dtype=prompt.dtype)])[None]
    handles = [model.transformer.h[layer].register_forward_hook(hook) for layer, hook in hooks]
    try:
        logits = model(ids).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    log_probs = torch.log_softmax(logits[len(prompt) - 1:], dim=-1)  # predicts answer[0], answer[1], ...
    return log_probs.gather(-1, torch.tensor(answer)[:, None]).sum()


def test_frozen_model_candidate_scores_match_a_plain_forward_per_row(gpt2, batch):
    best = best_candidates(gpt2, model_inputs(batch, "base", True), batch[CANDIDATE_ANSWER_IDS])
    for i in range(len(best)):
        prompt = unpadded(batch[BASE_IDS][i], batch[BASE_MASK][i])
        scores = torch.stack([hand_log_prob(gpt2, prompt, real(c)) for c in batch[CANDIDATE_ANSWER_IDS][i]])
        assert int(best[i]) == int(scores.argmax())


def interchange_hooks(module: DASModule, batch, row: int, position, layer: int):
    """The hand interchange of row ``row``: the source's block output at its position, read
    unpadded, written into the base's through ``b + W Wᵀ (s - b)``."""
    weight = module.intervention.rotate_layer.weight.detach()  # (d, k)
    source = unpadded(batch[SOURCE_IDS][row], batch[SOURCE_MASK][row])
    pad_base = int((batch[BASE_MASK][row] == 0).sum())
    pad_source = int((batch[SOURCE_MASK][row] == 0).sum())
    if isinstance(position, RowPosition):
        at_base = int(batch[BASE_POSITIONS][row, position.column]) - pad_base
        at_source = int(batch[SOURCE_POSITIONS][row, position.column]) - pad_source
    else:
        at_base, at_source = position + len(batch[BASE_IDS][row]) - pad_base, position + len(source)
    captured = {}

    def read(_module, _inputs, output):
        captured["s"] = (output[0] if isinstance(output, tuple) else output)[0, at_source].clone()

    handle = module.model.transformer.h[layer].register_forward_hook(read)
    try:
        module.model(source[None])
    finally:
        handle.remove()

    def write(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        b = hidden[0, at_base]
        hidden = hidden.clone()
        hidden[0, at_base] = b + weight @ (weight.T @ (captured["s"] - b))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return [(layer, write)]


@pytest.mark.parametrize("position", [-1, RowPosition(0)], ids=["last", "verb"])
def test_loss_and_predictions_match_a_hand_hook_interchange(gpt2, batch, position):
    torch.manual_seed(1)
    module = DASModule(gpt2, layer=1, component="block_output", position=position, low_rank_dimension=4)
    with torch.no_grad():
        forward = module.answer_forward(batch)
        loss = sequence_loss(forward, batch)
        predicted, target, _ = sequence_predictions(forward, batch)
    total, tokens = torch.tensor(0.0), 0
    for i in range(len(predicted)):
        prompt = unpadded(batch[BASE_IDS][i], batch[BASE_MASK][i])
        with torch.no_grad():
            hooks = interchange_hooks(module, batch, i, position, layer=1)
            answer = real(batch[COUNTERFACTUAL_ANSWER_IDS][i])
            total -= hand_log_prob(gpt2, prompt, answer, hooks)
            tokens += len(answer)
            scores = torch.stack([hand_log_prob(gpt2, prompt, real(c), hooks)
                                  for c in batch[CANDIDATE_ANSWER_IDS][i]])
        assert int(predicted[i]) == int(scores.argmax())
    assert torch.allclose(loss, total / tokens, atol=1e-5)
    assert target.tolist() == [sorted(CITIES.values()).index(r["counterfactual_label"][1:]) for r in rows()]


def test_no_intervention_loss_matches_a_plain_forward_and_the_interchange_changes_it(gpt2, batch):
    def plain(answer):
        return answer_logits(gpt2(**with_answer(model_inputs(batch, "base", True), answer)), answer.shape[1])

    total, tokens = torch.tensor(0.0), 0
    with torch.no_grad():
        loss = sequence_loss(plain, batch)
        for i in range(len(batch[BASE_IDS])):
            answer = real(batch[COUNTERFACTUAL_ANSWER_IDS][i])
            total -= hand_log_prob(gpt2, unpadded(batch[BASE_IDS][i], batch[BASE_MASK][i]), answer)
            tokens += len(answer)
        # a full-rank interchange at the verb swaps the whole vector: the loss must move
        module = DASModule(gpt2, layer=0, component="block_output", position=RowPosition(0), low_rank_dimension=32)
        swapped = sequence_loss(module.answer_forward(batch), batch)
    assert torch.allclose(loss, total / tokens, atol=1e-5)
    assert not torch.allclose(swapped, loss)


def test_the_filter_keeps_rows_whose_best_candidates_are_their_own_answers(gpt2, tokenizer, pairs_path):
    task = PairsTask(settings(pairs_path))
    datamodule = PairDataModule(task, tokenizer, n_train=6, n_val=2, n_test=4, batch_size=4)
    datamodule.setup()
    expected = {}
    for split, dataset in datamodule.datasets.items():
        rows_ = dataset[:]
        candidates = rows_[CANDIDATE_ANSWER_IDS]
        keep = torch.ones(len(candidates), dtype=torch.bool)
        for side, answers in (("base", BASE_ANSWER_IDS), ("source", SOURCE_ANSWER_IDS)):
            for i in range(len(candidates)):
                prompt = unpadded(rows_[f"{side}_input_ids"][i], rows_[f"{side}_attention_mask"][i])
                scores = torch.stack([hand_log_prob(gpt2, prompt, real(c)) for c in candidates[i]])
                keep[i] &= real(candidates[i][int(scores.argmax())]) == real(rows_[answers][i])
        expected[split] = len(candidates) - int(keep.sum())
    with torch.no_grad():
        assert datamodule.filter_with(gpt2) == expected


# -- the sweep ---------------------------------------------------------------------------------


def test_sequence_mode_takes_the_per_site_path_and_says_why():
    site = SweepSite(layer=0, component="block_output", position=-1, position_name="last")
    reason = batched_reason(SweepConfig(), InterventionConfig(), torch.nn.Linear(1, 1), site, "sequence")
    assert reason is not None and "task.answer_score=sequence" in reason


SOUNDS = {"cow": " moo loudly", "dog": " woof loudly", "duck": " quack loudly"}


@pytest.mark.slow
def test_a_sweep_on_multi_token_answers_completes_and_writes_the_table(tmp_path, caplog):
    """Answers of two words (two tokens of the tiny model's word-level tokenizer) through the
    whole run: the sequence filter, per-site fits, the table. A full-width rotation at the
    animal's embedding (block_input, layer 0) is an exact interchange of the animal word, so
    there IIA is 1 whatever the training, and the pair's RowPosition is checked end to end."""
    lines = [{"base": f"the {b} in the barn says", "source": f"the big {s} in the yard says", "base_animal": b,
              "source_animal": s, "base_label": SOUNDS[b], "source_label": SOUNDS[s], "counterfactual_label": SOUNDS[s]}
             for b in SOUNDS for s in SOUNDS for _ in range(4)]
    path = write_jsonl(tmp_path / "sounds.jsonl", lines)
    config = cli.check("pairs_file", [
        f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none",
        f"task.path={path}", "task.answer_score=sequence", "task.positions={animal:'{animal}',last:last}",
        "task.n_train=20", "task.n_val=4", "task.n_test=12", "trainer.max_steps=2", "sweep.probe.max_epochs=1",
        "sweep.layers=[0]", "intervention.low_rank_dimension=64",
    ])
    with caplog.at_level("INFO", logger="das_train"):
        run_dir = run_module.run(config)
    kept = json.loads((run_dir / "run_info.json").read_text())["dataset"]["kept"]
    assert kept["test"] > 0  # the sequence filter kept pairs the tiny model answers whole
    with (run_dir / "results.csv").open() as handle:
        results = {(r["component"], r["position_name"]): r for r in csv.DictReader(handle)}
    assert all(int(r["test_pairs"]) == kept["test"] for r in results.values())
    assert float(results[("block_input", "animal")]["iia"]) == 1.0
    assert (run_dir / "table.csv").is_file()
    assert any("one site at a time: task.answer_score=sequence" in m for m in caplog.messages)
