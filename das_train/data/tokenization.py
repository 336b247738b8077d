"""Tokenizer helpers text tasks share: word-level tokenizers built in code, answer tokens,
stacked (prompt, answer) sentences and pair datasets of token ids.

Tasks and the tiny-model trainer use these, so a task file holds only its words and causal
model, and every task encodes its prompts and answers the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from datasets import Dataset, Features, List, Value
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from das_train.data.pair_contract import BASE_IDS, BASE_MASK, LABEL_COLUMNS, SOURCE_IDS, SOURCE_MASK

BOS, PAD, UNK = "<bos>", "<pad>", "<unk>"


def word_level_tokenizer(words: Sequence[str], bos: bool) -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word of ``words`` (first occurrence order).

    Args:
        words: the vocabulary; duplicates are ignored.
        bos: prepend ``<bos>`` to every encoded text (as ``add_special_tokens=True`` does).

    ``<pad>``, ``<unk>`` and ``<bos>`` are ids 0, 1 and 2 whether or not ``bos`` is set.
    """
    vocab = {word: i for i, word in enumerate(dict.fromkeys([PAD, UNK, BOS, *words]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
        )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, pad_token=PAD, unk_token=UNK)


def answer_token(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> int | None:
    """The id of ``answer`` as the token after ``prompt``, or None when it is not one token.

    Tokenizing prompt and answer together is what the model sees in training, and it is right
    for tokenizers where ``answer`` alone would tokenize differently (SentencePiece's ``▁``).
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + answer)["input_ids"]
    if len(full) != len(prompt_ids) + 1 or full[: len(prompt_ids)] != prompt_ids:
        return None
    return int(full[-1])


def encode_sentences(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt ids (n, length) and answer ids (n,) of (prompt, answer) pairs.

    Raises ``ValueError`` when prompts differ in length or an answer is not one token.
    """
    prompts = tokenizer([p for p, _ in sentences])["input_ids"]
    lengths = {len(ids) for ids in prompts}
    if len(lengths) != 1:
        raise ValueError(f"prompts tokenize to different lengths {sorted(lengths)}; they cannot be stacked")
    full = tokenizer([p + a for p, a in sentences])["input_ids"]
    answers = []
    for (prompt, answer), prompt_ids, ids in zip(sentences, prompts, full):
        if len(ids) != len(prompt_ids) + 1 or ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"answer {answer!r} after {prompt!r} is not a single token")
        answers.append(int(ids[-1]))
    return torch.tensor(prompts, dtype=torch.long), torch.tensor(answers, dtype=torch.long)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[tuple[str, str]]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Model inputs of the prompts and the first token of each answer, ``(n,)``.

    Prompts of one length are stacked as they are (``{"input_ids": (n, length)}``), exactly
    what :func:`encode_sentences` gives. Prompts of several lengths (pairs read from a file)
    are padded on the left, so every answer is predicted at the last column, with an
    attention mask and position ids that skip the pads, so a padded prompt computes what it
    computes alone. An answer of several tokens is learned by its first token, the token the
    pair files label it with (``das_train.data.pair_files``).

    Raises ``ValueError`` when a prompt's tokens change once its answer follows (the answer
    would not be the next token the model sees).
    """
    prompts = tokenizer([p for p, _ in sentences])["input_ids"]
    full = tokenizer([p + a for p, a in sentences])["input_ids"]
    answers = []
    for (prompt, answer), prompt_ids, ids in zip(sentences, prompts, full):
        if len(ids) <= len(prompt_ids) or ids[: len(prompt_ids)] != prompt_ids:
            raise ValueError(f"answer {answer!r} after {prompt!r} does not start with a token of its own")
        answers.append(int(ids[len(prompt_ids)]))
    answer_ids = torch.tensor(answers, dtype=torch.long)
    longest = max(len(ids) for ids in prompts)
    if all(len(ids) == longest for ids in prompts):
        return {"input_ids": torch.tensor(prompts, dtype=torch.long)}, answer_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("prompts of several lengths need a pad (or eos) token to pad them; the tokenizer has none")
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    positions = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt_ids in enumerate(prompts):
        start = longest - len(prompt_ids)
        ids[row, start:] = torch.tensor(prompt_ids, dtype=torch.long)
        mask[row, start:] = 1
        positions[row, start:] = torch.arange(len(prompt_ids))
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, answer_ids


def text_pairs(
    base_ids: torch.Tensor,
    source_ids: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
) -> Dataset:
    """A pair dataset of token ids: base/source (n, length) ids, all-ones masks, int labels."""
    columns: dict[str, list] = {
        BASE_IDS: base_ids.tolist(),
        BASE_MASK: torch.ones_like(base_ids).tolist(),
        SOURCE_IDS: source_ids.tolist(),
        SOURCE_MASK: torch.ones_like(source_ids).tolist(),
    }
    features = {name: List(Value("int64")) for name in columns}
    for name in LABEL_COLUMNS:
        columns[name] = labels[name].tolist()
        features[name] = Value("int64")
    return Dataset.from_dict(columns, features=Features(features))
