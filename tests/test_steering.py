"""Steering (``job: steering``, the paper's Figure 1): the offline recipe runs and writes its
table, the steered continuation is the one plain forward hooks give in step-by-step greedy
decoding, the word's share rises, and bad configs and a closed Hub fail fast and clearly."""

from __future__ import annotations

import csv
import time

import pytest
import torch

from das_train import cli
from das_train.core.loaders import HubUnavailableError
from das_train.training import run as run_module
from das_train.training import steering
from das_train.training.schema import ConfigError, RunConfig

PROMPTS = "[one day the,the dog,the boy had a,they went to the]"


def _overrides(root, *extra):
    """A 1-layer, 32-wide stories model (3 s to train) and a few short continuations."""
    return [f"run_dir={root}/run", f"cache_dir={root}/cache", "progress=false", "model.n_layer=1",
            "model.hidden=32", "model.heads=2", "model.max_steps=300", f"steering.prompts={PROMPTS}",
            "steering.samples=6", "steering.max_new_tokens=16", "steering.coefficient=[4.0]", *extra]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The stories model is 32 wide: more threads only wait for each other on a busy machine."""
    with steering.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    root = tmp_path_factory.mktemp("steering")
    cfg = cli.check("steering_tiny", _overrides(root))
    return root, run_module.run(cfg)


def _rows(run_dir):
    with open(run_dir / "steering.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_recipe_runs_and_writes_outputs(steered, capsys):
    _, run_dir = steered
    rows = _rows(run_dir)
    assert len(rows) == 4 * 6 * 2  # prompts x samples x (original, one coefficient)
    assert {r["coefficient"] for r in rows} == {"0", "4"}
    assert all(r["continuation"] for r in rows)
    text = (run_dir / "steering.md").read_text()
    assert "original: " in text and "steered x4: " in text and "| one day the | 0 |" in text


def test_the_word_appears_far_more_often_when_steered(steered):
    _, run_dir = steered
    rows = _rows(run_dir)

    def share(coefficient):
        chosen = [r for r in rows if r["coefficient"] == coefficient]
        return sum(int(r["contains_word"]) for r in chosen) / len(chosen)

    assert share("0") <= 0.25
    assert share("4") >= share("0") + 0.3
    # the count agrees with the text
    for r in rows:
        assert int(r["word_count"]) == r["continuation"].split().count("happy")


def _hand_greedy(model, ids, n_new, vector, on_prompt):
    """Greedy decoding re-running the whole sequence each step, with plain forward hooks that
    add ``vector`` to every layer's MLP output at the generated positions (and at the
    prompt's with ``on_prompt``)."""
    prompt_len = ids.shape[1]
    start = 0 if on_prompt else prompt_len

    def add(module, args, output):
        output = output.clone()
        output[:, start:] += vector
        return output

    handles = [block.mlp.register_forward_hook(add) for block in model.transformer.h]
    try:
        seq = ids
        with torch.no_grad():
            for _ in range(n_new):
                logits = model(input_ids=seq).logits[:, -1]
                seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    finally:
        for h in handles:
            h.remove()
    return seq[:, prompt_len:]


@pytest.mark.parametrize("on_prompt", [False, True])
def test_steered_greedy_continuation_equals_hand_decoding(steered, on_prompt):
    root, _ = steered
    config = RunConfig.from_data(run_module.run_data(cli.check("steering_tiny", _overrides(
        root, "steering.do_sample=false", "steering.samples=1", "steering.max_new_tokens=10"))))
    model, tokenizer, token = steering.load_model(config)  # the fixture's cached model
    vector = model.get_input_embeddings().weight[token].detach()
    im = steering.steering_model(model, model.config.n_layer)
    kwargs = steering.generation_kwargs(config.steering, tokenizer)
    changed = 0
    for prompt in config.steering.prompts[:3]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for coefficient in (1.5, 4.0):
            got = steering.continue_prompt(model, im, inputs, vector, coefficient, seed=0,
                                           intervene_on_prompt=on_prompt, kwargs=kwargs)
            expected = _hand_greedy(model, ids, 10, coefficient * vector, on_prompt)
            assert torch.equal(got, expected), (prompt, coefficient)
            plain = steering.continue_prompt(model, im, inputs, vector, 0.0, 0, on_prompt, kwargs)
            changed += not torch.equal(got, plain)
            if not on_prompt:  # the first new token comes from the unsteered prompt pass
                assert got[0, 0] == plain[0, 0]
    assert changed >= 3, "steering should change most greedy continuations"
    assert all(not m._forward_hooks for m in model.modules()), "no hooks left behind"


def test_same_seed_same_table(steered):
    root, run_dir = steered
    again = run_module.run(cli.check("steering_tiny", _overrides(root, f"run_dir={root}/again")))
    assert (again / "steering.csv").read_text() == (run_dir / "steering.csv").read_text()


def test_bad_steering_config_is_refused_before_any_forward(tmp_path, monkeypatch):
    import das_train.data.stories

    def no_training(*args, **kwargs):
        raise AssertionError("the model was trained before the config was checked")

    monkeypatch.setattr(das_train.data.stories, "train_story_lm", no_training)
    with pytest.raises(ConfigError) as err:
        cli.check("steering_tiny", _overrides(tmp_path, "steering.prompts=[]", "steering.word=two words",
                                              "steering.do_sample=false", "steering.samples=3"))
    message = str(err.value)
    assert "'steering.prompts' is empty" in message
    assert "'steering.word' = 'two words' must be one word" in message
    assert "'steering.samples' = 3 needs steering.do_sample=true" in message

    cfg = cli.check("steering_tiny", _overrides(tmp_path, "steering.word=zebra"))
    with pytest.raises(ConfigError, match="'steering.word' = 'zebra' is not in the model's vocabulary; the "
                                          "vocabulary: \\[.*'happy'"):
        run_module.run(cfg)
    with pytest.raises(ConfigError, match="must be positive"):
        cli.check("steering_tiny", _overrides(tmp_path, "steering.max_new_tokens=0"))


def test_hub_recipe_composes_as_figure_1():
    cfg = cli.check("steering_tinystories", [])
    assert cfg.job == "steering" and cfg.model.kind == "hub" and cfg.model.name == "roneneldan/TinyStories-33M"
    assert list(cfg.steering.coefficient) == [0.3] and cfg.steering.word == "happy"
    assert not cfg.steering.do_sample and not cfg.steering.intervene_on_prompt
    assert cfg.steering.prompts[0] == "Once upon a time there was a"


def test_hub_recipe_offline_fails_fast_naming_the_offline_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cli.check("steering_tinystories", [f"run_dir={tmp_path}/run", "progress=false"])
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match="roneneldan/TinyStories-33M.*Recipes that work offline: .*steering_tiny"):
        run_module.run(cfg)
    assert time.perf_counter() - start < 10


def test_hub_recipe_runs_on_a_tiny_model_offline(steered, caplog):
    """``model=tiny`` puts the tiny stories model under the hub recipe, as for other recipes."""
    root, _ = steered
    cfg = cli.check("steering_tinystories", [f"run_dir={root}/hub_tiny", f"cache_dir={root}/cache", "progress=false",
                                             "model=tiny", "model.n_layer=1", "model.hidden=32", "model.heads=2",
                                             "model.max_steps=300", "steering.max_new_tokens=8"])
    run_dir = run_module.run(cfg)
    assert len(_rows(run_dir)) == 4 * 2  # four prompts, greedy, original and x0.3
    assert "words the model does not know" in caplog.text  # "Once", "Lily", ... are not story words


def test_a_continuation_longer_than_the_model_is_refused(steered):
    root, _ = steered
    cfg = cli.check("steering_tiny", _overrides(root, f"run_dir={root}/long", "steering.max_new_tokens=70"))
    with pytest.raises(ConfigError, match="exceed the model's 64 positions"):
        run_module.run(cfg)


def test_a_bpe_steers_with_the_first_token_of_the_word_after_a_space(caplog):
    """As Figure 1 on GPT-Neo: " happy" is one token ("Ġhappy"), a long word its first piece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(["the happy dog was happy", "a happy day"] * 20,
                                trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert tokenizer.convert_ids_to_tokens(steering.word_token(tokenizer, "happy")) == "Ġhappy"
    first = steering.word_token(tokenizer, "happiness")
    assert tokenizer.convert_ids_to_tokens(first) == tokenizer.convert_ids_to_tokens(
        tokenizer(" happiness")["input_ids"])[0]
    assert "steering with the first" in caplog.text


def test_word_counting_is_whole_word_and_case_blind():
    assert steering.count_word("Happy days, happy dog. unhappy happy!", "happy") == 3
    assert steering.count_word("happyhappy", "happy") == 0
