"""Benchmark of a whole DAS sweep: das_train's batched, cached sweep against per-site loops.

The sweep is ``recipe=gender_tiny``'s: every layer x every position of the tiny GPT-NeoX plus
the embedding row (20 sites), 1-d low-rank DAS trained for ``trainer.max_steps`` steps, IIA on
the test pairs, and a probe and a control probe at each site. Variants:

- ``batched``: ``python -m das_train recipe=gender_tiny`` as it ships (``sweep.batched=true``);
- ``batched_one_site_per_pass``: the same with ``sweep.sites_per_pass=1`` (cached activations,
  one forward pass per site, the least memory);
- ``per_site``: the same run with ``sweep.batched=false`` (a Lightning fit per site);
- ``loop``: a per-site loop in the style of pyvene's tutorials (build an IntervenableModel per
  site, a plain PyTorch training loop running source and base every step), on das_train;
- ``pyvene_loop``: the same loop with ``import pyvene as pv`` (0.1.8), where installed.

Every variant builds the same model (trained once beforehand and loaded from the cache), the
same pairs and the same seeds, so the per-site IIA must agree; the table reports the largest
per-site IIA difference from ``batched``. Each variant runs in its own process, so its peak
resident memory (and peak CUDA memory on a GPU) is its own.

    python scripts/bench_sweep.py [--max-steps N] [--variants batched,per_site,loop,pyvene_loop]
        [--device cpu|cuda] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("batched", "batched_one_site_per_pass", "per_site", "loop", "pyvene_loop")


def overrides(args: argparse.Namespace, run_dir: Path, batched: bool) -> list[str]:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    one_per_pass = ["sweep.sites_per_pass=1"] if args.variant == "batched_one_site_per_pass" else []
    return [f"run_dir={run_dir}", f"cache_dir={args.cache}", "progress=false", "logger=none",
            f"trainer.max_steps={args.max_steps}", f"trainer.accelerator={accelerator}",
            f"sweep.batched={str(batched).lower()}", *one_per_pass]


def config(args: argparse.Namespace, run_dir: Path, batched: bool):
    from das_train import cli
    from das_train.training import run as run_module

    return run_module.as_run_config(cli.check("gender_tiny", overrides(args, run_dir, batched)))


def run_recipe(args: argparse.Namespace, run_dir: Path, batched: bool) -> dict[str, dict[str, float]]:
    import csv

    from das_train.training import run as run_module

    out = run_module.run(config(args, run_dir, batched))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {f"{r['component']}-L{r['layer']}-{r['position_name']}": {
        "iia": float(r["iia"]), "probe": float(r["probe_accuracy"])} for r in rows}


def run_loop(args: argparse.Namespace, run_dir: Path, pv) -> dict[str, dict[str, float]]:
    """A per-site loop as pyvene's tutorials write it; ``pv`` is das_train or pyvene."""
    import lightning
    import torch

    from das_train.training import run as run_module
    from das_train.training.probe import collect_activations, probe_with_control
    from tasks.datamodule import PairDataModule

    cfg = config(args, run_dir, batched=False)
    task = run_module.load_task(cfg.task.name)
    model, tokenizer = run_module.build_model(cfg, task)
    device = torch.device(args.device)
    model.to(device)
    datamodule = PairDataModule(task, tokenizer, n_train=cfg.task.n_train, n_val=cfg.task.n_val,
                                n_test=cfg.task.n_test, batch_size=cfg.trainer.batch_size, seed=cfg.seed,
                                cache_dir=str(Path(cfg.cache_dir) / "pairs"), filter_pairs=cfg.task.filter_pairs)
    datamodule.prepare_data()
    datamodule.setup()
    datamodule.filter_with(model)
    spec = datamodule.spec()
    sites = run_module.build_sites(cfg, spec, run_module.number_of_layers(model))
    results = {}
    for site in sites:
        lightning.seed_everything(cfg.seed, verbose=False)
        intervenable = pv.IntervenableModel(pv.IntervenableConfig([{
            "layer": site.layer, "component": site.component, "unit": "pos",
            "low_rank_dimension": cfg.intervention.low_rank_dimension,
            "intervention_type": pv.LowRankRotatedSpaceIntervention,
        }]), model)
        intervenable.set_device(device)
        intervenable.disable_model_gradients()
        optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=cfg.intervention.lr)

        def intervened_logits(batch, site=site, intervenable=intervenable):
            size = batch["base_input_ids"].shape[0]
            where = [[site.position]] * size
            base = {"input_ids": batch["base_input_ids"].to(device),
                    "attention_mask": batch["base_attention_mask"].to(device)}
            source = {"input_ids": batch["source_input_ids"].to(device),
                      "attention_mask": batch["source_attention_mask"].to(device)}
            _, out = intervenable(base, [source], {"sources->base": (where, where)})
            return out.logits[:, -1]

        step = 0
        while step < cfg.trainer.max_steps:
            for batch in datamodule.train_dataloader():
                loss = torch.nn.functional.cross_entropy(intervened_logits(batch), batch["counterfactual_label"].to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step == cfg.trainer.max_steps:
                    break
        right = total = 0
        with torch.no_grad():
            for batch in datamodule.test_dataloader():
                predicted = intervened_logits(batch).argmax(-1).cpu()
                right += int((predicted == batch["counterfactual_label"]).sum())
                total += len(predicted)
        activations, variables, controls = collect_activations(
            model, site.layer, site.component, site.position, datamodule.ordered_dataloader("train"))
        probe = probe_with_control(activations, variables, controls, n_classes=spec.variable_values,
                                   lr=cfg.sweep.probe.lr, weight_decay=cfg.sweep.probe.weight_decay,
                                   max_epochs=cfg.sweep.probe.max_epochs, seed=cfg.seed)
        results[f"{site.component}-L{site.layer}-{site.position_name}"] = {"iia": right / total,
                                                                           "probe": probe.accuracy}
    return results


def current_rss_mib() -> float:
    """This process's resident memory now (Linux), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_variant(args: argparse.Namespace) -> None:
    """Runs one variant in this process and writes its figures to ``args.json``."""
    import torch
    import transformers

    # Every variant imports the same modules before the baseline is read, so the growth
    # column is the sweep's (model, pairs, training, probes), not a difference in imports.
    import das_train.training.batched_sweep  # noqa: F401
    import das_train.training.run  # noqa: F401

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_sweep_{args.variant}_"))
    rss_before = current_rss_mib()
    start = time.perf_counter()
    if args.variant in ("batched", "batched_one_site_per_pass", "per_site"):
        results = run_recipe(args, run_dir, batched=args.variant != "per_site")
    elif args.variant == "loop":
        import das_train

        results = run_loop(args, run_dir, das_train)
    else:
        import pyvene

        results = run_loop(args, run_dir, pyvene)
    seconds = time.perf_counter() - start
    figures: dict[str, Any] = {
        "seconds": seconds, "sites": results,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": rss_before,
    }
    if torch.cuda.is_available():
        figures["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.json).write_text(json.dumps(figures))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-steps", type=int, default=300, help="DAS steps per site (the recipe's 300)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "das_train"), help="model and pairs cache")
    ap.add_argument("--out", help="also write the table as Markdown to this file")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        one_variant(args)
        return

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # Train (or load) the model and the pairs once, untimed, so no variant pays for them.
    warm = [sys.executable, __file__, "--variant", "batched", "--max-steps", "1", "--cache", args.cache,
            "--device", args.device, "--json", os.devnull]
    subprocess.run(warm, check=True, env=env, capture_output=True)
    figures: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for variant in variants:
        print(f"running {variant} ...", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            command = [sys.executable, __file__, "--variant", variant, "--max-steps", str(args.max_steps),
                       "--cache", args.cache, "--device", args.device, "--json", out.name]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
                failures[variant] = lines[-1] if lines else f"exit code {done.returncode}"
                print(f"{variant} failed: {failures[variant]}", file=sys.stderr)
                continue
            figures[variant] = json.loads(Path(out.name).read_text())
    print_table(args, figures, failures)


def print_table(args: argparse.Namespace, figures: dict[str, dict[str, Any]], failures: dict[str, str]) -> None:
    import platform

    import torch

    reference = figures.get("batched")
    header = ["variant", "seconds", "x slower than batched", "max |IIA - batched| per site",
              "peak RSS MiB", "RSS growth in the sweep MiB"] + (["peak CUDA MiB"] if args.device == "cuda" else [])
    lines = []
    for name, f in figures.items():
        ratio = f"{f['seconds'] / reference['seconds']:.2f}" if reference else "-"
        if reference and set(f["sites"]) == set(reference["sites"]):
            gap = max(abs(f["sites"][k]["iia"] - reference["sites"][k]["iia"]) for k in f["sites"])
            gap_text = f"{gap:.3f}"
        else:
            gap_text = "-"
        line = [name, f"{f['seconds']:.1f}", ratio, gap_text, f"{f['peak_rss_mib']:.0f}",
                f"{f['peak_rss_mib'] - f['rss_before_mib']:.0f}"]
        if args.device == "cuda":
            line.append(f"{f.get('peak_cuda_mib', float('nan')):.0f}")
        lines.append(line)
    info = (f"gender_tiny sweep ({len(reference['sites']) if reference else '?'} sites, {args.max_steps} DAS steps "
            f"per site, probes); device {args.device}; {os.cpu_count()} CPU cores; python "
            f"{platform.python_version()}, torch {torch.__version__}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    print("\n" + info)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    notes = [f"{name} did not run: {why}" for name, why in failures.items()]
    for note in notes:
        print(note)
    if args.out:
        md = [f"- {info}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(line) + " |" for line in lines]
        md += ["", *[f"- {note}" for note in notes]]
        Path(args.out).write_text("\n".join(md) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
