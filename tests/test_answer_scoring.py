"""``task.score_among=answers``: a language model's prediction chosen among the task's answers
only, checked by hand on a tiny GPT-2, refused where it cannot apply, and carried by a sweep
(the random-init control is then not at 0 by construction)."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import make_gpt2

from das_train import cli
from das_train.training import run as run_module
from das_train.training.answer_scoring import restrict_to_answers
from das_train.training.schema import ConfigError


def test_the_prediction_is_the_argmax_among_the_answers_by_hand():
    model = make_gpt2().eval()
    ids = torch.randint(0, model.config.vocab_size, (6, 5), generator=torch.Generator().manual_seed(0))
    answers = [3, 17, 40]
    with torch.no_grad():
        plain = model(input_ids=ids).logits[:, -1]  # (6, vocab)
        handle = restrict_to_answers(model, answers)
        restricted = model(input_ids=ids).logits[:, -1]
        handle.remove()
        again = model(input_ids=ids).logits[:, -1]
    expected = torch.tensor(answers)[plain[:, answers].argmax(-1)]
    assert torch.equal(restricted.argmax(-1), expected)
    assert torch.equal(restricted[:, answers], plain[:, answers])
    others = torch.ones(plain.shape[-1], dtype=torch.bool)
    others[answers] = False
    assert (restricted[:, others] == torch.finfo(restricted.dtype).min).all()
    assert torch.equal(again, plain)  # removing the hook restores the vocabulary
    # The loss DAS trains on is finite and equals the cross-entropy among the answers.
    labels = torch.tensor([17, 3, 40, 17, 3, 40])
    loss = torch.nn.functional.cross_entropy(restricted, labels)
    by_hand = torch.nn.functional.cross_entropy(plain[:, answers], torch.tensor([1, 0, 2, 1, 0, 2]))
    torch.testing.assert_close(loss, by_hand)


@pytest.mark.parametrize("answers,message", [([3], "two or more"), ([3, 10_000], "two or more answer token ids in 0..")])
def test_bad_answers_are_refused(answers, message):
    with pytest.raises(ValueError, match=message):
        restrict_to_answers(make_gpt2(), answers)


def test_a_model_without_an_output_embedding_is_refused():
    with pytest.raises(ValueError, match="needs a language model with an output embedding"):
        restrict_to_answers(torch.nn.Linear(3, 3), [0, 1])


def test_answers_with_sequence_scoring_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="score_among"):
        cli.check("gender_tiny", ["task.score_among=answers", "task.answer_score=sequence"])


def test_a_random_init_sweep_scored_among_the_answers_is_not_zero_by_construction(tmp_path):
    common = [f"cache_dir={tmp_path}/cache", "progress=false", "logger=none", "trainer.max_steps=60",
              "task.n_train=256", "task.n_val=32", "task.n_test=128", "sweep.layers=[3]", "sweep.include_embeddings=false",
              "sweep.positions=[last]", "sweep.methods=[das]", "sweep.probe.max_epochs=2", "model.random_init=true"]
    iia = {}
    for among in ("vocabulary", "answers"):
        run_dir = run_module.run(cli.check("gender_tiny", [f"run_dir={tmp_path}/{among}", f"task.score_among={among}",
                                                           *common]))
        with (run_dir / "results.csv").open() as handle:
            (row,) = list(csv.DictReader(handle))
        iia[among] = float(row["iia"]), float(row["iia_changing"])
    assert iia["vocabulary"] == (0.0, 0.0)  # an untrained network never ranks he/she first
    assert iia["answers"][0] > 0.3  # among he/she it predicts one of them, right or wrong
