"""An offline demonstration of the hook core, used by ``python -m das_train``."""

from __future__ import annotations

import time

import torch


def main() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    import das_train as pv

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, bos_token_id=0, eos_token_id=0)).eval()
    base = {"input_ids": torch.randint(1, 64, (4, 8))}
    source = {"input_ids": torch.randint(1, 64, (4, 8))}
    clean = torch.softmax(model(**base).logits[:, -1], -1)
    print(f"das_train {pv.__version__}: interchange at position 7 of a tiny GPT-2 (built on the spot)")
    print(f"{'layer':>5}  {'component':<28} {'mean |Δp|':>10}")
    start = time.perf_counter()
    for layer in range(2):
        for component in ("block_input", "attention_output", "mlp_activation", "mlp_output", "block_output"):
            im = pv.IntervenableModel({"layer": layer, "component": component}, model)
            _, out = im(base, [source], {"sources->base": 7})
            delta = (torch.softmax(out.logits[:, -1], -1) - clean).abs().sum(-1).mean()
            print(f"{layer:>5}  {component:<28} {delta.item():>10.4f}")
    print(f"done in {time.perf_counter() - start:.2f}s")
