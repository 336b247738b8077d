"""Benchmark of a whole DAS sweep: das_train's batched, cached sweep against per-site loops.

The sweep is ``recipe=gender_tiny``'s: every layer x every position of the tiny GPT-NeoX plus
the embedding row (20 sites), 1-d low-rank DAS trained for ``trainer.max_steps`` steps, IIA on
the test pairs, and a probe and a control probe at each site. Variants:

- ``batched``: ``python -m das_train recipe=gender_tiny`` as it ships (``sweep.batched=true``,
  ``sweep.sites_per_pass=auto``: as many of a layer's sites per pass as keep no more activations
  than the costliest one-site step);
- ``batched_one_pass``: the same with ``sweep.sites_per_pass=null`` (all of a layer's sites in
  one pass: fastest, most memory);
- ``batched_train_all``: the same with ``sweep.skip_shared_prefix=false`` (the BOS sites, where
  every pair's source equals its base, trained rather than tested untrained);
- ``per_site``: the same run with ``sweep.batched=false`` (a Lightning fit per site);
- ``loop``: a per-site loop in the style of pyvene's tutorials (build an IntervenableModel per
  site, a plain PyTorch training loop running source and base every step), on das_train,
  ending with the recipe's table and heatmaps;
- ``pyvene_loop``: the same loop with ``import pyvene as pv`` (0.1.8), where installed.

Every variant builds the same model (trained once beforehand and loaded from the cache), the
same pairs and the same seeds, so the per-site IIA must agree; the table reports the largest
per-site IIA difference from ``batched``. Each variant runs in its own processes: ``--repeats``
timed sweeps (the table gives the median and range), then one sweep whose peak memory is
measured: a warm-up sweep first loads everything loaded once, then the peak resident memory is
reset and the table gives how far the sweep raised it (glibc is set to hand freed memory back,
so the peak is that of live memory), and on a GPU the peak CUDA memory the same way. A second
column gives the peak of the sites' own work, between the shared set-up (loading the model,
filtering the pairs) and the shared end (writing the table and heatmaps, which the loops write
too).

    python scripts/bench_sweep.py [--max-steps N] [--repeats R] [--no-memory]
        [--variants batched,batched_one_pass,batched_train_all,per_site,loop,pyvene_loop] [--device cpu|cuda] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("batched", "batched_one_pass", "batched_train_all", "per_site", "loop", "pyvene_loop")
RECIPE_VARIANTS = {"batched": [], "batched_one_pass": ["sweep.sites_per_pass=null"],
                   "batched_train_all": ["sweep.skip_shared_prefix=false"], "per_site": ["sweep.batched=false"]}
"""The variants that run the recipe, with their overrides."""


def overrides(args: argparse.Namespace, run_dir: Path, steps: int, probe_epochs: int | None) -> list[str]:
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    epochs = [f"sweep.probe.max_epochs={probe_epochs}"] if probe_epochs is not None else []
    return [f"run_dir={run_dir}", f"cache_dir={args.cache}", "progress=false", "logger=none",
            f"trainer.max_steps={steps}", f"trainer.accelerator={accelerator}",
            *RECIPE_VARIANTS.get(args.variant, []), *epochs]


def config(args: argparse.Namespace, run_dir: Path, steps: int, probe_epochs: int | None = None):
    from das_train import cli
    from das_train.training import run as run_module

    chosen = overrides(args, run_dir, steps, probe_epochs)
    return run_module.as_run_config(cli.check("gender_tiny", chosen))


def run_recipe(args: argparse.Namespace, run_dir: Path, steps: int,
               probe_epochs: int | None = None) -> dict[str, dict[str, float]]:
    import csv

    from das_train.training import run as run_module

    out = run_module.run(config(args, run_dir, steps, probe_epochs).as_data())
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {f"{r['component']}-L{r['layer']}-{r['position_name']}": {
        "iia": float(r["iia"]), "probe": float(r["probe_accuracy"])} for r in rows}


def run_loop(args: argparse.Namespace, run_dir: Path, pv, steps: int,
             probe_epochs: int | None = None) -> dict[str, dict[str, float]]:
    """A per-site loop as pyvene's tutorials write it; ``pv`` is das_train or pyvene."""
    import lightning
    import torch

    from das_train.data.pair_datamodule import PairDataModule
    from das_train.training import model_loading, outputs, task_loading
    from das_train.training.probe import collect_activations
    from das_train.training.probe_results import probe_with_control
    from das_train.training.sweep import group_fit
    from das_train.training.sweep import sites as sweep_sites

    cfg = config(args, run_dir, steps=steps, probe_epochs=probe_epochs)
    task = task_loading.load_task(cfg.task.name)
    model, tokenizer = model_loading.build_model(cfg, task)
    device = torch.device(args.device)
    model.to(device)
    datamodule = PairDataModule(task, tokenizer, n_train=cfg.task.n_train, n_val=cfg.task.n_val,
                                n_test=cfg.task.n_test, batch_size=cfg.trainer.batch_size, seed=cfg.seed,
                                cache_dir=str(Path(cfg.cache_dir) / "pairs"), filter_pairs=cfg.task.filter_pairs)
    datamodule.prepare_data()
    datamodule.setup()
    datamodule.filter_with(model)
    spec = datamodule.spec()
    sites = sweep_sites.build_sites(cfg.sweep, spec, model_loading.number_of_layers(model))
    results, rows = {}, []
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
        rows.append(group_fit.result_row(site, cfg.seed, right / total, probe, None, total, 0.0))
    # The same table and heatmaps as the recipe writes, so every variant ends with the same work.
    outputs.write_outputs(cfg, run_dir, rows, spec.variable)
    return results


def memory_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field of this process (Linux), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_memory() -> None:
    """Starts this process's peak resident memory (VmHWM) afresh at what it holds now (Linux)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


MALLOC_RETURNS_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_TOP_PAD_": "0"}
"""glibc settings for the memory runs: blocks of 16 KiB or more are mapped and unmapped one by
one and freed heap is trimmed at once, so resident memory follows what is allocated and its
peak is the peak of live memory (not of what the allocator kept after a free)."""


class SitesPeak:
    """The peak resident memory of the sites' own work, read apart from the whole sweep's.

    Every variant loads the model, filters the pairs and ends by writing the table and the
    heatmaps; between the two lies what differs (DAS, probes, caches). The peak is reset once
    the pairs are filtered and read when the outputs start, the same two points in every
    variant; what came before the reset is kept, so the whole sweep's peak is still known.
    """

    def __init__(self, before_mib: float) -> None:
        from das_train.data.pair_datamodule import PairDataModule
        from das_train.training import outputs
        from das_train.training.sweep import das_sweep

        self.before = before_mib
        self.setup = self.sites = float("nan")
        filter_with, write_outputs = PairDataModule.filter_with, outputs.write_outputs

        def filtered(*args, **kwargs):
            done = filter_with(*args, **kwargs)
            self.setup = memory_mib("VmHWM") - self.before
            reset_peak_memory()
            return done

        def writing(*args, **kwargs):
            self.sites = memory_mib("VmHWM") - self.before
            return write_outputs(*args, **kwargs)

        PairDataModule.filter_with = filtered
        # The sweep's own call and the hand-written loop's.
        outputs.write_outputs = das_sweep.write_outputs = writing

    def whole(self) -> float:
        """The whole sweep's peak growth: set-up, sites and outputs."""
        return max(self.setup, memory_mib("VmHWM") - self.before)


def sweep_once(args: argparse.Namespace, steps: int, probe_epochs: int | None = None) -> dict[str, dict[str, float]]:
    import das_train

    run_dir = Path(tempfile.mkdtemp(prefix=f"bench_sweep_{args.variant}_"))
    if args.variant in RECIPE_VARIANTS:
        return run_recipe(args, run_dir, steps, probe_epochs)
    if args.variant == "loop":
        return run_loop(args, run_dir, das_train, steps, probe_epochs)
    import pyvene

    return run_loop(args, run_dir, pyvene, steps, probe_epochs)


def one_variant(args: argparse.Namespace) -> None:
    """Runs one variant in this process and writes its figures to ``args.json``.

    A short warm-up sweep (1 step, 1 probe epoch) runs first, so lazy imports, the cached model
    and pairs and one-time set-up are loaded before anything is measured. ``--mode time`` then
    times one sweep; ``--mode memory`` resets the peak resident memory and reports how far the
    sweep raised it above what the process held before it (and the peak CUDA memory on a GPU).
    """
    import gc

    import torch
    import transformers

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    sweep_once(args, steps=1, probe_epochs=1)
    gc.collect()
    figures: dict[str, Any] = {}
    if args.mode == "memory":
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            cuda_before = torch.cuda.memory_allocated()
        reset_peak_memory()
        peaks = SitesPeak(memory_mib("VmRSS"))
        figures["sites"] = sweep_once(args, steps=args.max_steps)
        figures["peak_growth_mib"] = peaks.whole()
        figures["sites_peak_growth_mib"] = peaks.sites
        if torch.cuda.is_available():
            figures["peak_cuda_growth_mib"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    else:
        start = time.perf_counter()
        figures["sites"] = sweep_once(args, steps=args.max_steps)
        figures["seconds"] = time.perf_counter() - start
    Path(args.json).write_text(json.dumps(figures))


def run_variant(args: argparse.Namespace, variant: str, mode: str, env: dict[str, str]) -> dict[str, Any] | str:
    """One variant in its own process: its figures, or why it failed."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--variant", variant, "--mode", mode, "--max-steps",
                   str(args.max_steps), "--cache", args.cache, "--device", args.device, "--json", out.name]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            return lines[-1] if lines else f"exit code {done.returncode}"
        return json.loads(Path(out.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-steps", type=int, default=300, help="DAS steps per site (the recipe's 300)")
    ap.add_argument("--repeats", type=int, default=3, help="timed sweeps per variant; the table gives the median")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory runs (one more sweep per variant)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "das_train"), help="model and pairs cache")
    ap.add_argument("--out", help="also write the table as Markdown to this file")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        one_variant(args)
        return

    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    # Train (or load) the model and the pairs once, untimed, so no variant pays for them.
    warm = [sys.executable, __file__, "--variant", "batched", "--max-steps", "1", "--cache", args.cache,
            "--device", args.device, "--json", os.devnull]
    subprocess.run(warm, check=True, env=env, capture_output=True)
    timed: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    memory: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    # Repeats interleave the variants, so a slow spell of the machine does not fall on one.
    for repeat in range(args.repeats):
        for variant in variants:
            if variant in failures:
                continue
            print(f"timing {variant} ({repeat + 1}/{args.repeats}) ...", flush=True)
            result = run_variant(args, variant, "time", env)
            if isinstance(result, str):
                failures[variant] = result
                print(f"{variant} failed: {result}", file=sys.stderr)
            else:
                timed[variant].append(result)
    for variant in [] if args.no_memory else variants:
        if variant in failures:
            continue
        print(f"measuring the memory of {variant} ...", flush=True)
        result = run_variant(args, variant, "memory", {**env, **MALLOC_RETURNS_MEMORY})
        if isinstance(result, str):
            failures[variant] = result
        else:
            memory[variant] = result
    print_table(args, {v: runs for v, runs in timed.items() if runs and v not in failures}, memory, failures)


def print_table(args: argparse.Namespace, timed: dict[str, list[dict[str, Any]]], memory: dict[str, dict[str, Any]],
                failures: dict[str, str]) -> None:
    import platform
    import statistics

    import torch

    seconds = {v: statistics.median(run["seconds"] for run in runs) for v, runs in timed.items()}
    reference = timed["batched"][0]["sites"] if "batched" in timed else None
    header = ["variant", "seconds (median)", "range", "x slower than batched", "max |IIA - batched| per site"]
    if memory:
        header += ["peak memory growth MiB", "of it, the sites' work MiB"]
        if args.device == "cuda":
            header.append("peak CUDA growth MiB")
    lines = []
    for name, runs in timed.items():
        times = [run["seconds"] for run in runs]
        ratio = f"{seconds[name] / seconds['batched']:.2f}" if "batched" in seconds else "-"
        sites = runs[0]["sites"]
        if reference and set(sites) == set(reference):
            gap_text = f"{max(abs(sites[k]['iia'] - reference[k]['iia']) for k in sites):.3f}"
        else:
            gap_text = "-"
        line = [name, f"{seconds[name]:.1f}", f"{min(times):.1f}-{max(times):.1f}", ratio, gap_text]
        if memory:
            line += [f"{memory[name][key]:.1f}" if name in memory else "-"
                     for key in ("peak_growth_mib", "sites_peak_growth_mib")]
            if args.device == "cuda":
                line.append(f"{memory[name].get('peak_cuda_growth_mib', float('nan')):.1f}" if name in memory else "-")
        lines.append(line)
    repeats = {len(runs) for runs in timed.values()}
    info = (f"gender_tiny sweep ({len(reference) if reference else '?'} sites, {args.max_steps} DAS steps per site, "
            f"probes), {'/'.join(map(str, sorted(repeats)))} timed runs per variant; device {args.device}; "
            f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}); python "
            f"{platform.python_version()}, torch {torch.__version__}")
    memory_note = ("peak memory growth: how far one more sweep raised the process's peak resident memory above "
                   "what it held before the sweep (after a warm-up sweep; glibc set to return freed memory); "
                   "the sites' work: the same, from when the pairs are filtered to when the table and heatmaps "
                   "are written (every variant loads the model before and writes the outputs after)")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    print("\n" + info)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    notes = ([memory_note] if memory else []) + [f"{name} did not run: {why}" for name, why in failures.items()]
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
