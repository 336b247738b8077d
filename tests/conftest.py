"""Seeded tiny models built from configs (no hub), shared inputs, and hand-hook helpers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch
import transformers
from transformers.utils import logging as hf_logging

import das_train as pv
from das_train import cli
from das_train.training import run as run_module
from das_train.training.schema import ConfigError

hf_logging.set_verbosity_error()
torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 64


def _seeded(build):
    torch.manual_seed(0)
    model = build()
    model.eval()
    return model


def make_gpt2():
    return _seeded(lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=16, n_head=4, vocab_size=VOCAB, n_positions=32,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)))


def make_neox():
    return _seeded(lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32,
        vocab_size=VOCAB, max_position_embeddings=32, bos_token_id=0, eos_token_id=0)))


def make_llama():
    # Grouped-query attention: 4 query heads share 2 key/value heads.
    return _seeded(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=32, vocab_size=VOCAB, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)))


def make_gpt_neo():
    return _seeded(lambda: transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
        num_layers=2, hidden_size=16, num_heads=4, attention_types=[[["global", "local"], 1]],
        vocab_size=VOCAB, max_position_embeddings=32, window_size=8,
        bos_token_id=0, eos_token_id=0)))


def make_bert():
    return _seeded(lambda: transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32,
        vocab_size=VOCAB, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)))


MAKERS = {"gpt2": make_gpt2, "gpt_neox": make_neox, "llama": make_llama}
ALL_MAKERS = {**MAKERS, "gpt_neo": make_gpt_neo, "bert": make_bert}


@pytest.fixture(scope="session")
def gpt2():
    return make_gpt2()


@pytest.fixture(scope="session")
def neox():
    return make_neox()


@pytest.fixture(scope="session")
def llama():
    return make_llama()


@pytest.fixture(params=sorted(MAKERS), scope="session")
def family(request):
    """(name, model) for each of the three main families."""
    return request.param, MAKERS[request.param]()


def ids(*rows):
    return {"input_ids": torch.tensor(rows, dtype=torch.long)}


@pytest.fixture
def base_source():
    """A batch of two bases and two sources of length 6."""
    torch.manual_seed(1)
    base = {"input_ids": torch.randint(1, VOCAB, (2, 6))}
    source = {"input_ids": torch.randint(1, VOCAB, (2, 6))}
    return base, source


def capture(model, module, side, inputs):
    """Runs ``model(**inputs)`` and returns the hooked tensor, with a plain hook."""
    seen = {}
    if side == "input":
        def pre(mod, args, kwargs):
            seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, out):
            seen["x"] = (out[0] if isinstance(out, tuple) else out).detach().clone()
        handle = module.register_forward_hook(post)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen["x"]


def patched_run(model, module, side, inputs, edit):
    """Runs ``model(**inputs)`` with ``edit(x) -> x'`` applied by a plain hook."""
    if side == "input":
        def pre(mod, args, kwargs):
            if args:
                return (edit(args[0].clone()), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"].clone())}
        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, out):
            if isinstance(out, tuple):
                return (edit(out[0].clone()), *out[1:])
            return edit(out.clone())
        handle = module.register_forward_hook(post)
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        handle.remove()


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def random_pair_rows(n: int, seed: int, vocab: int, length: int, control_classes: int = 2) -> list[dict]:
    """``n`` random pair rows with the columns of ``das_train.data.pair_contract`` (token ids in 1..vocab-1);
    the default collate stacks them. The same seed gives the same rows."""
    gen = torch.Generator().manual_seed(seed)
    return [{
        "base_input_ids": torch.randint(1, vocab, (length,), generator=gen),
        "base_attention_mask": torch.ones(length, dtype=torch.long),
        "source_input_ids": torch.randint(1, vocab, (length,), generator=gen),
        "source_attention_mask": torch.ones(length, dtype=torch.long),
        "counterfactual_label": torch.randint(1, vocab, (), generator=gen),
        "base_variable": torch.randint(0, 2, (), generator=gen),
        "base_control": torch.randint(0, control_classes, (), generator=gen),
    } for _ in range(n)]


class ForwardCounter:
    """A user hook on the model's top module that counts forwards (and must survive our calls)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def remove(self):
        self.handle.remove()


# -- real-style tokenizers and tiny causal LMs for checkpoint folders and pair files ----------------

EOS = "<|endoftext|>"


def byte_level_bpe(texts, vocab_size: int, trim_offsets: bool = False, **roles):
    """A GPT-2-style byte-level BPE trained here on ``texts`` (no prefix space, so a word after a
    space carries the space byte, and a word the merges did not reach falls apart into pieces),
    wrapped as a fast tokenizer; ``roles`` name its special tokens (``eos_token=EOS``, ...).
    ``trim_offsets`` keeps the leading space out of a word's character offsets, as GPT-2's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if trim_offsets:
        backend.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


TINY_LM_FAMILIES = ("gpt2", "gpt_neox", "llama", "phi")


def tiny_causal_lm(family: str, tokenizer, max_positions: int, hidden: int = 16, layers: int = 2):
    """A seeded, untrained causal LM of ``family`` sized for ``tokenizer`` (its vocabulary and
    special ids), in eval mode."""
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    shared = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
              "intermediate_size": 2 * hidden, "max_position_embeddings": max_positions, **ids}
    configs = {
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=hidden, n_layer=layers, n_head=2, n_positions=max_positions, **ids)),
        "gpt_neox": lambda: transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**shared)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=1, **shared)),
        "phi": lambda: transformers.PhiForCausalLM(transformers.PhiConfig(**shared)),
    }
    return _seeded(configs[family])


def planted_readout_mlp(u: torch.Tensor) -> torch.nn.Module:
    """A 2-layer identity MLP then logits ``(-5 u.h, 5 u.h)``: its class is the sign of ``u.h``, so a
    variable planted along ``u`` is the only thing it reads (the validity card's planted-direction tests)."""
    width = u.shape[0]
    _, _, model = pv.create_mlp_classifier(
        pv.MLPConfig(h_dim=width, n_layer=2, input_dim=width, num_classes=2, pdrop=0.0, activation_function="linear"),
        seed=0)
    with torch.no_grad():
        for block in model.mlp.h:
            block.ff1.weight.copy_(torch.eye(width))
            block.ff1.bias.zero_()
        model.score.weight.copy_(torch.stack([-u, u]) * 5)
        model.score.bias.zero_()
    return model.eval()


def assert_refused_before_any_work(recipe: str, overrides: list[str], expected: list[str], run_dir) -> None:
    """Running ``recipe`` with ``overrides`` raises one ConfigError holding every ``expected``
    text, and leaves no ``run_dir`` behind (nothing was started)."""
    with pytest.raises(ConfigError) as err:
        run_module.run(cli.compose(recipe, [f"run_dir={run_dir}", *overrides]))
    for text in expected:
        assert text in str(err.value)
    assert not run_dir.exists()
