"""Does ``gender_pythia``'s DAS set-up fit and train on one GPU at Pythia-6.9B's size?

The recipe downloads 14 GB of weights; what it costs to train does not depend on them. This
script builds a GPT-NeoX with Pythia-6.9B's configuration (hidden 4096, 32 layers, 32 heads,
intermediate 16384, vocabulary 50432: 6.86 B parameters) from random weights, in bf16 and
directly on the GPU, so it never exists in fp32 or on the CPU. It then trains the recipe's
intervention (read from ``recipes/gender_pythia.yaml``: a low-rank rotation at a middle layer's
block output, the recipe's batch size, precision and learning rate) for a few steps through the
same ``DASModule`` and Lightning Trainer a sweep uses, on random pairs of the gender prompt's
length ("NAME walked because": 3 tokens), and prints the median step time and the peak GPU
memory as a table.

    python scripts/check_big_model.py                 # needs a CUDA GPU with about 16 GiB free
    python scripts/check_big_model.py --steps 50 --out docs/big_model.md
    python scripts/check_big_model.py --small         # a scaled-down model on the CPU (the test)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

PYTHIA_6_9B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                   intermediate_size=16384, vocab_size=50432)
"""EleutherAI/pythia-6.9b's sizes (its config.json); rotary on a quarter of each head."""
SMALL = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
             vocab_size=512)
"""The same architecture scaled down for a CPU, for the test of this script."""


def gpt_neox_config(sizes: dict):
    import transformers

    return transformers.GPTNeoXConfig(
        **sizes, max_position_embeddings=2048, use_parallel_residual=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    )


def build_model(sizes: dict, device, dtype):
    """A random-init GPT-NeoX created on ``device`` in ``dtype``: each weight is allocated and
    initialized there, never as an fp32 copy on the CPU first."""
    import torch
    import transformers

    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(gpt_neox_config(sizes), dtype=dtype)
    return model.eval()


def random_pairs(n: int, length: int, vocab: int, seed: int = 0):
    """Pair rows shaped as the gender task's (``das_train.data.pair_contract`` columns), with random tokens."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [{
        "base_input_ids": torch.randint(0, vocab, (length,), generator=gen),
        "base_attention_mask": torch.ones(length, dtype=torch.long),
        "source_input_ids": torch.randint(0, vocab, (length,), generator=gen),
        "source_attention_mask": torch.ones(length, dtype=torch.long),
        "counterfactual_label": torch.randint(0, vocab, (), generator=gen),
    } for _ in range(n)]


def recipe_settings(overrides: list[str]):
    """The composed, validated ``gender_pythia`` recipe (with any overrides)."""
    from das_train import cli

    return cli.check("gender_pythia", overrides)


def measure(args: argparse.Namespace) -> dict:
    import lightning
    import torch

    from das_train.training.das_module import DASModule

    cfg = recipe_settings(args.override)
    cuda = not args.small
    if cuda and not torch.cuda.is_available():
        raise SystemExit("check_big_model: no CUDA device here; run it on a GPU, or pass --small "
                         "for the scaled-down CPU run")
    sizes = SMALL if args.small else PYTHIA_6_9B
    if args.small:
        # Matrices this small gain nothing from threads, and on a busy machine two OpenMP
        # threads waiting on each other made a step 100x slower.
        torch.set_num_threads(1)
    dtype = getattr(torch, cfg.model.dtype)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    lightning.seed_everything(0, verbose=False)
    built = time.perf_counter()
    model = build_model(sizes, device, dtype)
    built = time.perf_counter() - built
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    layer = sizes["num_hidden_layers"] // 2 if args.layer is None else args.layer
    position = args.length - 1  # the "last" position, where the pronoun is predicted
    module = DASModule(
        model, layer=layer, component="block_output", position=position,
        intervention=cfg.intervention.type, low_rank_dimension=cfg.intervention.low_rank_dimension,
        lr=cfg.intervention.lr, boundary_penalty=cfg.intervention.boundary_penalty,
    )
    batch_size = cfg.trainer.batch_size
    steps = args.warmup + args.steps
    pairs = torch.utils.data.DataLoader(
        random_pairs(batch_size * steps, args.length, sizes["vocab_size"]), batch_size=batch_size)

    class StepTimer(lightning.Callback):
        """Wall time of each optimizer step, the device synchronized at both ends."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._start)

    timer = StepTimer()
    trainer = lightning.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision=cfg.trainer.precision,
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(module, pairs)
    timed = timer.seconds[args.warmup:]
    params = list(module.intervenable.get_trainable_parameters())
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        where = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        where = f"CPU ({os.cpu_count()} cores)"
    return {
        "model": ("Pythia-6.9B config" if not args.small else "scaled-down config (--small)")
        + f": hidden {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, "
        f"{sizes['num_attention_heads']} heads, intermediate {sizes['intermediate_size']}, "
        f"vocab {sizes['vocab_size']}; random init",
        "parameters": sum(p.numel() for p in model.parameters()),
        "model dtype / precision": f"{cfg.model.dtype} / {cfg.trainer.precision}",
        "intervention": f"{cfg.intervention.type} (rank {cfg.intervention.low_rank_dimension}) at "
        f"block_output, layer {layer}, position {position}",
        "intervention parameter dtypes": sorted({str(p.dtype).replace("torch.", "") for p in params}),
        "batch": f"{batch_size} pairs x {args.length} tokens",
        "steps timed": f"{len(timed)} (after {args.warmup} warm-up)",
        "step time, median": statistics.median(timed) if timed else float("nan"),
        "step time, min / max": (min(timed), max(timed)) if timed else (float("nan"),) * 2,
        "model weights": weights_bytes,
        "peak memory": peak,
        "peak memory measures": "torch.cuda.max_memory_allocated" if cuda else "process max RSS (CPU run)",
        "model built in": built,
        "device": where,
        "torch": torch.__version__,
    }


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def table(result: dict) -> str:
    rows = []
    for key, value in result.items():
        if key in ("model weights", "peak memory"):
            text = gib(value)
        elif key == "parameters":
            text = f"{value / 1e9:.3f} B" if value >= 1e8 else f"{value:,}"
        elif key == "step time, median":
            text = f"{value * 1000:.1f} ms"
        elif key == "model built in":
            text = f"{value:.1f} s"
        elif key == "step time, min / max":
            text = f"{value[0] * 1000:.1f} / {value[1] * 1000:.1f} ms"
        elif isinstance(value, list):
            text = ", ".join(value)
        else:
            text = str(value)
        rows.append(f"| {key} | {text} |")
    return "\n".join(["| | gender_pythia DAS set-up |", "|---|---|", *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a scaled-down model on the CPU")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--length", type=int, default=3, help="tokens per prompt (NAME walked because)")
    parser.add_argument("--layer", type=int, default=None, help="layer of the site (default: the middle)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("override", nargs="*", help="recipe overrides, e.g. trainer.batch_size=64")
    args = parser.parse_args(argv)
    text = table(measure(args))
    print(text, flush=True)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
