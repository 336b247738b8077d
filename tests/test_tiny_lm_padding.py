"""The tiny-model trainer on prompts of several lengths (pairs read from a file): left padding
with a mask and position ids that leave each prompt computing what it computes alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from das_train.data.tiny_lm import answer_accuracy, train_tiny_lm
from das_train.data.tokenization import encode_prompts, encode_sentences, word_level_tokenizer

WORDS = ["the", "old", "big", "cat", "dog", "sat", "ran", "yes", "no", "very"]


def tokenizer():
    return word_level_tokenizer(WORDS, bos=True)


def test_prompts_of_one_length_are_stacked_as_encode_sentences_stacks_them():
    tok = tokenizer()
    sentences = [("the cat sat", " yes"), ("the dog ran", " no")]
    inputs, answers = encode_prompts(tok, sentences)
    ids, expected = encode_sentences(tok, sentences)
    assert set(inputs) == {"input_ids"}  # nothing added: fixed-template tasks train as before
    assert torch.equal(inputs["input_ids"], ids) and torch.equal(answers, expected)


def test_prompts_of_several_lengths_are_left_padded_with_position_ids():
    tok = tokenizer()
    inputs, answers = encode_prompts(tok, [("the cat", " yes"), ("the very old dog ran", " no")])
    pad = tok.pad_token_id
    bos = tok.bos_token_id
    assert inputs["input_ids"][0].tolist() == [pad, pad, pad, bos, tok.convert_tokens_to_ids("the"),
                                                 tok.convert_tokens_to_ids("cat")]
    assert inputs["attention_mask"][0].tolist() == [0, 0, 0, 1, 1, 1]
    assert inputs["position_ids"][0].tolist() == [0, 0, 0, 0, 1, 2]
    assert inputs["attention_mask"][1].tolist() == [1] * 6
    assert inputs["position_ids"][1].tolist() == list(range(6))
    assert answers.tolist() == [tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")]


def test_a_padded_prompt_predicts_what_it_predicts_alone():
    tok = tokenizer()
    torch.manual_seed(0)
    # GPT-2's positions are absolute: without the position ids the padded row would differ
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4)).eval()
    inputs, _ = encode_prompts(tok, [("the cat", " yes"), ("the very old dog ran", " no")])
    alone, _ = encode_prompts(tok, [("the cat", " yes")])
    with torch.no_grad():
        padded = model(**inputs).logits[0, -1]
        single = model(**alone).logits[0, -1]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=1e-5)


def test_an_answer_of_several_tokens_is_learned_by_its_first_token():
    tok = tokenizer()
    _, answers = encode_prompts(tok, [("the cat", " very old")])
    assert answers.tolist() == [tok.convert_tokens_to_ids("very")]


@dataclass(frozen=True)
class RaggedTask:
    """Answer "yes" for cats and "no" for dogs, with zero to two adjectives before the noun."""

    name: ClassVar[str] = "ragged"

    def sentences(self, tokenizer=None) -> list[tuple[str, str]]:
        out = []
        for adjectives in ("", "old ", "very old ", "big "):
            for noun, answer in (("cat", " yes"), ("dog", " no")):
                for verb in ("sat", "ran"):
                    out.append((f"the {adjectives}{noun} {verb}", answer))
        return out


def test_train_tiny_lm_learns_prompts_of_several_lengths():
    tok = tokenizer()
    task = RaggedTask()
    model = train_tiny_lm(task, tok, n_layer=2, hidden=32, heads=4, max_steps=400, seed=0)
    assert answer_accuracy(model, tok, task.sentences(tok)) == 1.0
