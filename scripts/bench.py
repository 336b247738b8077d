"""Benchmark: das_train against plain hooked forwards (the floor) and pyvene 0.1.8.

Prints one table of times and ratios measured in the same run (medians over repeats, after
warm-up). Not a test: run it by hand.

    python scripts/bench.py [--quick] [--out FILE.md] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import GPT2Config, GPT2Model

import das_train as pv

B, T, POS = 8, 32, 17
VOCAB = 1000


# -- helpers --------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def median_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def build_gpt2(n_embd: int, n_layer: int, n_head: int) -> GPT2Model:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=VOCAB, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )
    return GPT2Model(cfg).eval()


def inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, VOCAB, (B, T), generator=g)}


class ForwardCounter:
    """Counts calls of ``model.forward`` with a forward pre-hook.

    The hook is global (``register_module_forward_pre_hook``) and filters on the model: pyvene
    clears every hook registered on the model's modules at the start of each call, so a hook
    on the model itself would count nothing for pyvene.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        self.model = model

    def _hook(self, module, args):
        if module is self.model:
            self.n += 1

    def count(self, fn: Callable[[], Any]) -> int:
        self.n = 0
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        try:
            fn()
        finally:
            handle.remove()
        return self.n

    def remove(self) -> None:
        pass


def hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def with_hidden(out: Any, h: torch.Tensor) -> Any:
    return (h, *out[1:]) if isinstance(out, tuple) else h


def fmt_ms(v: Any) -> str:
    return f"{v:.2f} ms" if isinstance(v, float) else str(v)


def ratio(a: Any, b: Any) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return f"{a / b:.2f}x"
    return "n/a"


def try_pyvene(what: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn``; on failure returns ``"n/a (reason)"``."""
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - any pyvene failure is reported, not raised
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:80]
        print(f"  pyvene {what} failed: {reason}", file=sys.stderr)
        return f"n/a ({reason})"


def locs(k: int) -> dict[str, Any]:
    one = [[POS]] * B
    return {"sources->base": ([one] * k, [one] * k)}


# -- cases ----------------------------------------------------------------------------------------


def case_interchange(model: GPT2Model, layer: int, pyvene, warmup: int, reps: int) -> dict:
    base, source = inputs(1), inputs(2)
    ours = pv.IntervenableModel(
        {"layer": layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1}, model
    )
    block = model.h[layer]

    def floor():
        saved: dict[str, torch.Tensor] = {}

        def get(module, args, output):
            saved["x"] = hidden(output)[:, POS].clone()

        def put(module, args, output):
            h = hidden(output).clone()
            h[:, POS] = saved["x"]
            return with_hidden(output, h)

        handle = block.register_forward_hook(get)
        try:
            model(**source)
        finally:
            handle.remove()
        handle = block.register_forward_hook(put)
        try:
            return model(**base)
        finally:
            handle.remove()

    def run_ours():
        return ours(base, [source], unit_locations=locs(1))

    with torch.no_grad():
        # same result as the floor, or the comparison means nothing
        a = hidden(run_ours()[1].last_hidden_state)
        b = floor().last_hidden_state
        assert torch.allclose(a, b, atol=1e-5), "das_train and the floor disagree"
        t_ours = median_ms(run_ours, warmup, reps)
        t_floor = median_ms(floor, warmup, reps)

        def pyv():
            theirs = pyvene.IntervenableModel(
                pyvene.IntervenableConfig(
                    [{"layer": layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1}]
                ),
                model,
            )

            def call():
                return theirs(base, [source], unit_locations=locs(1))

            c = call()[1].last_hidden_state
            if not torch.allclose(c, b, atol=1e-5):
                return "n/a (pyvene result differs from the floor)"
            return median_ms(call, warmup, reps), counter.count(call)

        counter = ForwardCounter(model)
        f_ours = counter.count(run_ours)
        got = try_pyvene("interchange", pyv)
        counter.remove()
    t_pyv, f_pyv = got if isinstance(got, tuple) else (got, "n/a")
    return {"ours": t_ours, "floor": t_floor, "pyvene": t_pyv, "fwd_ours": f_ours, "fwd_pyvene": f_pyv}


def sites(k: int, n_layer: int) -> list[dict]:
    reps = []
    for j in range(k):
        comp = "block_output" if j % 2 == 0 else "mlp_output"
        reps.append({"layer": (j // 2) % n_layer, "component": comp, "unit": "pos", "max_number_of_units": 1})
    return reps


def case_k_sites(model: GPT2Model, k: int, pyvene, warmup: int, reps: int) -> dict:
    n_layer = model.config.n_layer
    base, source = inputs(1), inputs(2)
    ours = pv.IntervenableModel(sites(k, n_layer), model)

    def run_ours():
        return ours(base, [source] * k, unit_locations=locs(k))

    counter = ForwardCounter(model)
    with torch.no_grad():
        ref = run_ours()[1].last_hidden_state
        f_ours = counter.count(run_ours)
        t_ours = median_ms(run_ours, warmup, reps)

        def pyv():
            theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig(sites(k, n_layer)), model)

            def call():
                return theirs(base, [source] * k, unit_locations=locs(k))

            c = call()[1].last_hidden_state
            if not torch.allclose(c, ref, atol=1e-5):
                return "n/a (pyvene result differs)", "n/a"
            n = counter.count(call)
            return median_ms(call, warmup, reps), n

        got = try_pyvene(f"k={k}", pyv)
    counter.remove()
    t_pyv, f_pyv = got if isinstance(got, tuple) else (got, "n/a")
    return {"ours": t_ours, "floor": "-", "pyvene": t_pyv, "fwd_ours": f_ours, "fwd_pyvene": f_pyv}


SIX_B, SIX_T, SIX_POS = 32, 16, 9


def six_sites(n_layer: int) -> list[dict]:
    """One site per layer, block output and MLP output alternating: no layer left for an early stop."""
    comps = ("block_output", "mlp_output")
    return [
        {"layer": j, "component": comps[j % 2], "unit": "pos", "max_number_of_units": 1}
        for j in range(n_layer)
    ]


def case_six_sites_floor(model: GPT2Model, pyvene, warmup: int, reps: int) -> dict:
    """Six sites sharing one source against two plain forwards with six hand-written hook pairs.

    The floor reads the six positions in the source forward and writes them in the base forward,
    which is the least any library can do for this call; issue 16 asks for at most 1.05x of it.
    """
    n_layer = model.config.n_layer
    g = torch.Generator().manual_seed(3)
    base = {"input_ids": torch.randint(0, VOCAB, (SIX_B, SIX_T), generator=g)}
    source = {"input_ids": torch.randint(0, VOCAB, (SIX_B, SIX_T), generator=g)}
    reps_cfg = six_sites(n_layer)
    modules = [model.h[r["layer"]] if r["component"] == "block_output" else model.h[r["layer"]].mlp
               for r in reps_cfg]
    one = [[SIX_POS]] * SIX_B
    unit_locations = {"sources->base": ([one] * n_layer, [one] * n_layer)}
    ours = pv.IntervenableModel(reps_cfg, model)

    def run_ours():
        return ours(base, [source] * n_layer, unit_locations=unit_locations)

    def floor():
        saved: list[torch.Tensor] = [None] * len(modules)  # type: ignore[list-item]

        def getter(i):
            def get(module, args, output):
                saved[i] = hidden(output)[:, SIX_POS].clone()
            return get

        def putter(i):
            def put(module, args, output):
                h = hidden(output).clone()
                h[:, SIX_POS] = saved[i]
                return with_hidden(output, h)
            return put

        handles = [m.register_forward_hook(getter(i)) for i, m in enumerate(modules)]
        try:
            model(**source)
        finally:
            for h in handles:
                h.remove()
        handles = [m.register_forward_hook(putter(i)) for i, m in enumerate(modules)]
        try:
            return model(**base)
        finally:
            for h in handles:
                h.remove()

    counter = ForwardCounter(model)
    with torch.no_grad():
        ref = floor().last_hidden_state
        got_ours = run_ours()[1].last_hidden_state
        assert torch.allclose(got_ours, ref, atol=1e-5), "das_train and the floor disagree (six sites)"
        f_ours = counter.count(run_ours)
        # interleave the two so that a noisy neighbour on the machine slows both alike
        t_ours, t_floor = [], []
        for _ in range(3):
            t_ours.append(median_ms(run_ours, warmup, reps))
            t_floor.append(median_ms(floor, warmup, reps))

        def pyv():
            theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig(six_sites(n_layer)), model)

            def call():
                return theirs(base, [source] * n_layer, unit_locations=unit_locations)

            c = call()[1].last_hidden_state
            if not torch.allclose(c, ref, atol=1e-5):
                return "n/a (pyvene result differs from the floor)", "n/a"
            return median_ms(call, warmup, reps), counter.count(call)

        got = try_pyvene("six sites", pyv)
    counter.remove()
    t_pyv, f_pyv = got if isinstance(got, tuple) else (got, "n/a")
    return {"ours": statistics.median(t_ours), "floor": statistics.median(t_floor), "pyvene": t_pyv,
            "fwd_ours": f_ours, "fwd_pyvene": f_pyv}


def case_collect(model: GPT2Model, pyvene, warmup: int, reps: int) -> tuple[dict, str]:
    n_layer = model.config.n_layer
    base = inputs(1)

    def reps_for(lib):
        return [
            {"layer": layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1,
             "intervention_type": lib.CollectIntervention}
            for layer in range(n_layer)
        ]

    ours = pv.IntervenableModel(reps_for(pv), model)
    one = [[POS]] * B
    unit_locations = {"base": [one] * n_layer}

    def run_ours():
        return ours(base, unit_locations=unit_locations)

    counter = ForwardCounter(model)
    full_bytes = n_layer * B * T * model.config.n_embd * 4
    with torch.no_grad():
        (_, acts), _ = run_ours()
        ours_bytes = sum(a.numel() * a.element_size() for a in acts)
        f_ours = counter.count(run_ours)
        t_ours = median_ms(run_ours, warmup, reps)
        # floor: one plain forward with hooks copying the position at every layer
        saved: list[torch.Tensor] = []

        def get(module, args, output):
            saved.append(hidden(output)[:, POS].clone())

        def floor():
            saved.clear()
            handles = [blk.register_forward_hook(get) for blk in model.h]
            try:
                model(**base)
            finally:
                for h in handles:
                    h.remove()

        t_floor = median_ms(floor, warmup, reps)
        for a, s in zip(acts, saved):
            assert torch.allclose(a.reshape(s.shape), s, atol=1e-5), "collected activations differ"

        def pyv():
            theirs = pyvene.IntervenableModel(pyvene.IntervenableConfig(reps_for(pyvene)), model)

            def call():
                return theirs(base, unit_locations=unit_locations)

            (_, pacts), _ = call()
            nbytes = sum(a.numel() * a.element_size() for a in pacts)
            n = counter.count(call)
            return median_ms(call, warmup, reps), n, nbytes

        got = try_pyvene("collect", pyv)
    counter.remove()
    t_pyv, f_pyv, p_bytes = got if isinstance(got, tuple) else (got, "n/a", "n/a")
    note = (
        f"collected {ours_bytes / 1024:.0f} KiB (pyvene: "
        f"{p_bytes / 1024:.0f} KiB)" if isinstance(p_bytes, int) else f"collected {ours_bytes / 1024:.0f} KiB"
    ) + f" of {full_bytes / 1024:.0f} KiB full activations ({ours_bytes / full_bytes:.1%})"
    row = {"ours": t_ours, "floor": t_floor, "pyvene": t_pyv, "fwd_ours": f_ours, "fwd_pyvene": f_pyv}
    return row, note


def case_das_step(model: GPT2Model, layer: int, pyvene, warmup: int, reps: int) -> dict:
    d = model.config.n_embd
    base, source = inputs(1), inputs(2)
    rep = {"layer": layer, "component": "block_output", "unit": "pos", "max_number_of_units": 1}

    def make_step(im, params):
        opt = torch.optim.Adam(params, lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            _, out = im(base, [source], unit_locations=locs(1))
            loss = out.last_hidden_state[:, -1].pow(2).mean()
            loss.backward()
            opt.step()

        return step

    torch.manual_seed(0)
    ours = pv.IntervenableModel({**rep, "intervention": pv.RotatedSpaceIntervention(embed_dim=d)}, model)
    for m in ours.interventions.values():
        m.set_interchange_dim(d // 2)
    t_ours = median_ms(make_step(ours, ours.get_trainable_parameters()), warmup, reps)

    # floor: hand-written hooks calling the same kind of rotation module
    torch.manual_seed(0)
    rot = pv.RotatedSpaceIntervention(embed_dim=d, interchange_dim=d // 2)
    opt = torch.optim.Adam(rot.parameters(), lr=1e-3)
    block = model.h[layer]

    def floor_step():
        opt.zero_grad(set_to_none=True)
        saved: dict[str, torch.Tensor] = {}

        def get(module, args, output):
            saved["x"] = hidden(output)[:, POS].detach()

        def put(module, args, output):
            new = rot(hidden(output)[:, POS], saved["x"])  # read before the copy is written
            h = hidden(output).clone()
            h[:, POS] = new
            return with_hidden(output, h)

        handle = block.register_forward_hook(get)
        try:
            with torch.no_grad():
                model(**source)
        finally:
            handle.remove()
        handle = block.register_forward_hook(put)
        try:
            out = model(**base)
        finally:
            handle.remove()
        out.last_hidden_state[:, -1].pow(2).mean().backward()
        opt.step()

    t_floor = median_ms(floor_step, warmup, reps)

    def pyv():
        torch.manual_seed(0)
        theirs = pyvene.IntervenableModel(
            pyvene.IntervenableConfig([{**rep, "intervention_type": pyvene.RotatedSpaceIntervention}]), model
        )
        for m in theirs.interventions.values():
            m = m[0] if isinstance(m, (tuple, list)) else m
            m.set_interchange_dim(d // 2)
        theirs.disable_model_gradients()
        return median_ms(make_step(theirs, theirs.get_trainable_parameters()), warmup, reps)

    t_pyv = try_pyvene("DAS step", pyv)
    for p in model.parameters():
        p.requires_grad_(False)
    return {"ours": t_ours, "floor": t_floor, "pyvene": t_pyv, "fwd_ours": "-"}


def case_import(n: int) -> dict:
    def run(code: str) -> float:
        times = []
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
        for _ in range(n):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    base = run("import torch, transformers")
    ours = run("import torch, transformers, das_train")
    return {"ours": ours, "floor": base, "pyvene": "-", "extra": ours - base}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats, for a short run")
    ap.add_argument("--out", help="also write the table as Markdown to this file")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    warmup, reps, imports = (1, 5, 3) if args.quick else (3, 20, 7)

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    try:
        import pyvene
    except Exception as err:  # noqa: BLE001
        pyvene = None
        print(f"pyvene unavailable: {err}", file=sys.stderr)
    pyv_version = getattr(pyvene, "__version__", None) or _dist_version("pyvene")

    info = [
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); torch.set_num_threads({torch.get_num_threads()})",
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"pyvene {pyv_version}",
        f"batch {B}, seq {T}, position {POS}; warm-up {warmup}, median of {reps} "
        f"({'--quick' if args.quick else 'full'})",
    ]
    print("\n".join(info), flush=True)

    big = build_gpt2(768, 6, 12)
    small = build_gpt2(64, 4, 4)
    for p in list(big.parameters()) + list(small.parameters()):
        p.requires_grad_(False)

    rows: list[tuple[str, dict]] = []
    notes: list[str] = []

    def pyv_or_none():
        return pyvene if pyvene is not None else _Missing()

    t_start = time.perf_counter()
    print("1. one interchange ...", flush=True)
    rows.append(("1. interchange, 1 site, d=768 (6 layers)", case_interchange(big, 3, pyv_or_none(), warmup, reps)))
    rows.append(("1. interchange, 1 site, d=64 (4 layers)", case_interchange(small, 2, pyv_or_none(), warmup, reps)))
    print("2. k sites, one source ...", flush=True)
    for k in (6, 12):
        rows.append((f"2. {k} sites, sources=[source]*{k}, d=768", case_k_sites(big, k, pyv_or_none(), warmup, reps)))
    print("2b. six sites against the hand-hook floor ...", flush=True)
    mid = build_gpt2(256, 6, 8)
    for p in mid.parameters():
        p.requires_grad_(False)
    rows.append((f"2b. 6 sites (one a layer), one source, d=256, batch {SIX_B}x{SIX_T}",
                 case_six_sites_floor(mid, pyv_or_none(), warmup, reps)))
    print("3. collect every layer ...", flush=True)
    row, note = case_collect(big, pyv_or_none(), warmup, reps)
    rows.append(("3. collect block_output at all 6 layers, d=768", row))
    notes.append("3: " + note)
    print("4. DAS step ...", flush=True)
    rows.append(("4. DAS step, full rotation d=768 (fwd+bwd+Adam)",
                 case_das_step(big, 3, pyv_or_none(), warmup, max(3, reps // 2))))
    print("5. import time ...", flush=True)
    row = case_import(imports)
    rows.append(("5. import das_train (floor: torch+transformers)", row))
    notes.append(f"5: das_train adds {row['extra']:.0f} ms over `import torch, transformers`")
    notes.append("floor = plain forwards with hand-written hooks (source forward runs to the end); "
                 "'-' = not applicable")
    notes.append(f"benchmark ran in {time.perf_counter() - t_start:.1f} s")

    header = ["case", "das_train", "floor (plain hooks)", "pyvene", "ratio vs floor", "pyvene / das_train",
              "forwards (ours / pyvene)"]
    table = []
    for name, r in rows:
        fwd = "-" if r.get("fwd_ours", "-") == "-" else f"{r['fwd_ours']} / {r.get('fwd_pyvene', 'n/a')}"
        table.append([
            name, fmt_ms(r["ours"]), fmt_ms(r["floor"]), fmt_ms(r["pyvene"]),
            ratio(r["ours"], r["floor"]), ratio(r["pyvene"], r["ours"]), fwd,
        ])

    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)]
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for line in table:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))
    for n in notes:
        print(n)

    if args.out:
        md = ["# das_train benchmark", "", *[f"- {i}" for i in info], "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        md += ["| " + " | ".join(str(x) for x in line) + " |" for line in table]
        md += ["", *[f"- {n}" for n in notes], ""]
        with open(args.out, "w") as fh:
            fh.write("\n".join(md))
        print(f"wrote {args.out}")
    gc.collect()


class _Missing:
    """Stands in for pyvene when it cannot be imported: every use fails with the reason."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("pyvene is not importable")


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "not installed"


if __name__ == "__main__":
    main()
