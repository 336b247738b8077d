"""``job: causal_tracing``: where a model recalls a fact (Meng et al., 2022; pyvene paper, case study I).

For every traced fact the subject's token embeddings are corrupted with Gaussian noise of
standard deviation ``noise_scale`` x the std of the model's input embedding matrix (a
:class:`NoiseIntervention` on ``block_input`` of layer 0 at the subject positions), in
``samples`` noise draws at once (the prompt repeated ``samples`` times in one batch). Then,
for each component, layer and position, the clean activation is restored (a
:class:`VanillaIntervention` whose source is the clean run of the same prompt) and the
probability of the correct answer at the last position is recorded. Components other than
``block_output`` restore a window of ``window`` layers centred on the layer, clipped at the
edges, as the paper's ``tracing_config`` does.

Facts of different layouts (hub models, where subjects have different token counts) are
aggregated by the role of a position, as Meng et al. do: first / middle / last subject token,
first token after the subject, further tokens, last token. When every traced fact has the same
token at a role, the token itself is the label. Subject positions are marked with ``*``.

Outputs (rank 0 only): ``tracing.csv``, ``tracing.md`` and ``tracing.png`` (one heatmap per
component, positions x layers, like the paper's Figure 2).
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import das_train as pv
from das_train.core.devices import input_device
from das_train.core.files import atomic_write, atomic_write_text
from das_train.training.model_loading import build_model, number_of_layers
from das_train.training.ranks import is_global_zero
from das_train.training.schema import RunConfig, TracingConfig
from das_train.training.task_loading import load_task

log = logging.getLogger("das_train")

HUB_FACTS: tuple[tuple[str, str, str], ...] = (
    # (prompt, subject as it appears in the prompt, answer): Meng et al.'s style of facts.
    ("The Space Needle is in downtown", "The Space Needle", " Seattle"),
    ("The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris"),
    ("Michael Jordan professionally played the sport of", "Michael Jordan", " basketball"),
    ("Steve Jobs was the co-founder of", "Steve Jobs", " Apple"),
    ("The Colosseum is located in the city of", "The Colosseum", " Rome"),
    ("Danielle Darrieux's mother tongue is", "Danielle Darrieux", " French"),
    ("The Statue of Liberty is located in the city of", "The Statue of Liberty", " New"),
    ("Lionel Messi plays the sport of", "Lionel Messi", " soccer"),
    ("The Great Wall is located in the country of", "The Great Wall", " China"),
    ("Barack Obama was born in the state of", "Barack Obama", " Hawaii"),
    ("The Taj Mahal is located in the country of", "The Taj Mahal", " India"),
    ("Toyota Corolla is a car made by", "Toyota Corolla", " Toyota"),
)

CSV_COLUMNS = ("component", "layer", "position", "position_label", "restored_prob", "clean_prob", "corrupted_prob")


@dataclass(frozen=True)
class Fact:
    input_ids: torch.Tensor
    """(1, length) prompt ids."""
    subject: tuple[int, ...]
    """Positions of the subject's tokens."""
    answer: int
    """Token id of the answer (its first token)."""
    tokens: tuple[str, ...]
    """The prompt's tokens, for labels."""


@dataclass
class FactTrace:
    clean: float
    corrupted: float
    restored: dict[str, torch.Tensor]
    """Per component, (layers, length) mean probability of the answer after restoring."""


# -- facts ------------------------------------------------------------------------------------


def _subject_span(tokenizer, prompt: str, subject: str) -> list[int]:
    start = prompt.index(subject)
    end = start + len(subject)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    return [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > start]


def _make_fact(tokenizer, prompt: str, subject_positions: list[int], answer: str) -> Fact:
    ids = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + answer)["input_ids"]
    if full[: len(ids)] != ids or len(full) == len(ids):
        raise ValueError(f"answer {answer!r} does not extend the tokens of {prompt!r}")
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
    tokens = tuple(t.replace("Ġ", " ").strip() or t for t in tokens)
    return Fact(torch.tensor([ids]), tuple(subject_positions), int(full[len(ids)]), tokens)


def load_facts(config: RunConfig, task, tokenizer) -> list[Fact]:
    """``config.tracing.facts`` facts: the task's own (a choice seeded by ``config.seed``) or, for
    hub models, HUB_FACTS."""
    wanted = config.tracing.facts
    if config.model.kind == "hub" or not hasattr(task, "subject_positions"):
        rows = [(p, _subject_span(tokenizer, p, s), a) for p, s, a in HUB_FACTS]
    else:
        subject = task.subject_positions(tokenizer)
        rows = [(p, subject, a) for p, a in task.sentences(tokenizer)]
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed)).tolist()
    chosen = [rows[i] for i in order[:wanted]]
    if len(chosen) < wanted:
        log.warning("tracing.facts=%d but only %d facts are available; tracing all of them", wanted, len(chosen))
    return [_make_fact(tokenizer, p, s, a) for p, s, a in chosen]


# -- tracing one fact --------------------------------------------------------------------------


def window_layers(layer: int, window: int, n_layers: int) -> list[int]:
    """The paper's ``tracing_config`` window: ``window`` layers centred on ``layer``, clipped."""
    start = max(0, layer - window // 2)
    end = min(n_layers, layer - (-window // 2))
    return list(range(start, end))


def embedding_std(model: torch.nn.Module) -> float:
    return model.get_input_embeddings().weight.detach().float().std().item()


def _noise_rep(noise_std: float, seed: int) -> dict:
    return {"layer": 0, "component": "block_input", "intervention": pv.NoiseIntervention(scale=noise_std, seed=seed)}


def _answer_prob(logits: torch.Tensor, answer: int) -> torch.Tensor:
    return logits[:, -1].float().softmax(-1)[:, answer].mean()


def corrupted_model(model, noise_std: float, seed: int):
    """An IntervenableModel that only adds the subject noise (for the corrupted run and checks)."""
    return pv.IntervenableModel(pv.IntervenableConfig([_noise_rep(noise_std, seed)]), model)


def trace_fact(model, fact: Fact, components: list[str], n_layers: int, window: int, noise_std: float,
               samples: int, seed: int, bar=None) -> FactTrace:
    """Clean, corrupted and restored probabilities of ``fact``'s answer (see the module doc)."""
    device = input_device(model)  # a model offloaded by accelerate has weights on `meta`
    ids = fact.input_ids.to(device)
    length = ids.shape[1]
    base = {"input_ids": ids.repeat(samples, 1)}
    subject = [list(fact.subject)] * samples
    with torch.no_grad():
        clean = _answer_prob(model(input_ids=ids).logits, fact.answer).item()
        im = corrupted_model(model, noise_std, seed)
        _, out = im(base, [None], {"sources->base": ([None], [subject])})
        corrupted = _answer_prob(out.logits, fact.answer).item()
        restored = {}
        for component in components:
            table = torch.zeros(n_layers, length)
            for layer in range(n_layers):
                layers = [layer] if component == "block_output" else window_layers(layer, window, n_layers)
                config = pv.IntervenableConfig(
                    [_noise_rep(noise_std, seed)]
                    + [{"layer": lay, "component": component, "intervention": pv.VanillaIntervention()}
                       for lay in layers]
                )
                im = pv.IntervenableModel(config, model)
                n = len(layers)
                for position in range(length):
                    for module in im.modules():  # the same noise draw for every site
                        if isinstance(module, pv.NoiseIntervention):
                            module.reset()
                    at = [[position]] * samples
                    _, out = im(base, [None] + [base] * n, {"sources->base": ([None] + [at] * n, [subject] + [at] * n)})
                    table[layer, position] = _answer_prob(out.logits, fact.answer).item()
                if bar is not None:
                    bar.update(1)
            restored[component] = table
    return FactTrace(clean, corrupted, restored)


# -- aggregation over facts --------------------------------------------------------------------


def position_roles(fact: Fact) -> list[str]:
    """The role of every position: ``bos``, subject first/middle/last, first after, further, last."""
    subject = set(fact.subject)
    first, last_subject = min(subject), max(subject)
    roles = []
    for p in range(len(fact.tokens)):
        if p == len(fact.tokens) - 1:
            roles.append("last")
        elif p in subject:
            roles.append("subject last" if p == last_subject else "subject first" if p == first else "subject middle")
        elif p < first:
            roles.append("before")
        elif p == last_subject + 1:
            roles.append("first after")
        else:
            roles.append("further")
    return roles


ROLE_ORDER = ("before", "subject first", "subject middle", "subject last", "first after", "further", "last")


def aggregate(facts: list[Fact], traces: list[FactTrace], components: list[str]) -> tuple[list[str], dict]:
    """(position labels, {component: (positions, layers) mean restored prob}) over the facts.

    With one layout shared by every fact (the synthetic task) the positions are the prompt's
    positions; otherwise they are the roles, each averaged within a fact first.
    """
    same_layout = len({(f.input_ids.shape[1], f.subject) for f in facts}) == 1
    if same_layout:
        keys = list(range(facts[0].input_ids.shape[1]))
        per_fact_keys = [keys for _ in facts]
        names = [str(k) for k in keys]
    else:
        per_fact_keys = [position_roles(f) for f in facts]
        present = {r for roles in per_fact_keys for r in roles}
        keys = [r for r in ROLE_ORDER if r in present]
        names = keys
    labels = []
    for key, name in zip(keys, names):
        tokens = {f.tokens[p] for f, ks in zip(facts, per_fact_keys) for p, k in enumerate(ks) if k == key}
        subj = any(p in f.subject for f, ks in zip(facts, per_fact_keys) for p, k in enumerate(ks) if k == key)
        text = next(iter(tokens)) if len(tokens) == 1 else (
            ("subject " + ("last" if key == max(facts[0].subject) else "first" if key == min(facts[0].subject)
                           else "middle")) if same_layout and subj else name if not same_layout else f"pos {key}")
        labels.append(("*" if subj else "") + text)
    tables = {}
    for component in components:
        stacked = []
        for trace, ks in zip(traces, per_fact_keys):
            table = trace.restored[component]  # (layers, length)
            cols = []
            for key in keys:
                idx = [p for p, k in enumerate(ks) if k == key]
                cols.append(table[:, idx].mean(1) if idx else torch.full((table.shape[0],), float("nan")))
            stacked.append(torch.stack(cols))  # (positions, layers)
        tables[component] = torch.stack(stacked).nanmean(0)
    return labels, tables


# -- outputs -------------------------------------------------------------------------------------


def write_csv(path: Path, labels: list[str], tables: dict, clean: float, corrupted: float) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for component, table in tables.items():
        for layer in range(table.shape[1]):
            for position, label in enumerate(labels):
                writer.writerow([component, layer, position, label, f"{table[position, layer].item():.6f}",
                                 f"{clean:.6f}", f"{corrupted:.6f}"])
    atomic_write_text(path, buffer.getvalue())


def best_sites(labels: list[str], tables: dict) -> dict[str, tuple[int, str, float]]:
    out = {}
    for component, table in tables.items():
        flat = torch.nan_to_num(table, nan=-1.0).argmax().item()
        position, layer = divmod(flat, table.shape[1])
        out[component] = (layer, labels[position], table[position, layer].item())
    return out


def markdown(recipe: str, tracing: TracingConfig, labels: list[str], tables: dict, clean: float, corrupted: float,
             n_facts: int) -> str:
    lines = [f"# Causal tracing: {recipe}", "",
             f"{n_facts} facts, {tracing.samples} noise samples, noise std = {tracing.noise_scale} x "
             f"embedding std, window {tracing.window}.", "",
             f"- clean probability of the answer: {clean:.4f}",
             f"- corrupted (subject noised): {corrupted:.4f}", ""]
    for component, (layer, label, prob) in best_sites(labels, tables).items():
        lines.append(f"- best {component} site: layer {layer}, position {label!r}: {prob:.4f}")
    for component, table in tables.items():
        lines += ["", f"## {component}", "", "| position | " + " | ".join(f"L{i}" for i in range(table.shape[1])) + " |",
                  "|---|" + "---|" * table.shape[1]]
        for position, label in enumerate(labels):
            cells = " | ".join(f"{v:.3f}" for v in table[position].tolist())
            lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def plot(path: Path, title: str, labels: list[str], tables: dict, clean: float, corrupted: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmaps = {"block_output": "Purples", "mlp_activation": "Greens", "attention_output": "Reds"}
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 0.45 * len(labels) + 2.2), squeeze=False)
    for ax, (component, table) in zip(axes[0], tables.items()):
        image = ax.imshow(table.numpy(), aspect="auto", cmap=cmaps.get(component, "viridis"),
                          vmin=min(corrupted, float(torch.nan_to_num(table, nan=1.0).min())))
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("layer")
        ax.set_title(f"restoring {component}")
        fig.colorbar(image, ax=ax, label="p(answer)")
    fig.suptitle(f"{title}  (clean {clean:.3f}, corrupted {corrupted:.3f}; * = subject)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# -- the job -------------------------------------------------------------------------------------


def run_tracing(config: RunConfig, run_dir: Path) -> Path:
    """Causal tracing of ``config.tracing.facts`` facts; writes tracing.csv/.md/.png in ``run_dir``."""
    tracing = config.tracing
    torch.manual_seed(config.seed)
    task = load_task(config.task.name, config.task)
    model, tokenizer = build_model(config, task)
    if tokenizer is None:
        raise ValueError("causal tracing needs a language model task with a tokenizer")
    if config.model.kind == "hub" and config.model.device_map is None and torch.cuda.is_available():
        model = model.cuda()
    model.eval()
    n_layers = number_of_layers(model)
    components = list(tracing.components)
    facts = load_facts(config, task, tokenizer)
    noise_std = tracing.noise_scale * embedding_std(model)
    log.info("causal tracing: %d facts, %d layers, components %s, noise std %.4f",
             len(facts), n_layers, components, noise_std)

    traces = []
    total = len(facts) * len(components) * n_layers
    with tqdm(total=total, desc="tracing", unit="layer", disable=not config.progress or not is_global_zero()) as bar:
        for i, fact in enumerate(facts):
            traces.append(trace_fact(model, fact, components, n_layers, tracing.window, noise_std,
                                     tracing.samples, seed=config.seed * 100_003 + i, bar=bar))
    clean = sum(t.clean for t in traces) / len(traces)
    corrupted = sum(t.corrupted for t in traces) / len(traces)
    labels, tables = aggregate(facts, traces, components)

    if is_global_zero():
        write_csv(run_dir / "tracing.csv", labels, tables, clean, corrupted)
        atomic_write_text(run_dir / "tracing.md",
                          markdown(config.recipe, tracing, labels, tables, clean, corrupted, len(facts)))
        plot(run_dir / "tracing.png", config.recipe, labels, tables, clean, corrupted)
        print(f"\ncausal tracing over {len(facts)} facts: clean p(answer) {clean:.4f}, corrupted {corrupted:.4f}",
              flush=True)
        for component, (layer, label, prob) in best_sites(labels, tables).items():
            print(f"  best {component}: layer {layer}, position {label!r}, restored p {prob:.4f}", flush=True)
        print(f"wrote {run_dir / 'tracing.csv'}, {run_dir / 'tracing.md'} and {run_dir / 'tracing.png'}", flush=True)
    return run_dir
