"""``job: steering``: a word's embedding added while a model writes (the pyvene paper's Figure 1).

Figure 1 steers TinyStories-33M by adding the input embedding of "happy" (or "sad"), times
0.3, to the MLP output of every layer at every decoding step (Li et al., 2023's
inference-time intervention). Here every prompt is continued once plainly and once per
coefficient, with an :class:`AdditionIntervention` on ``mlp_output`` of every layer whose
constant source is ``coefficient x embedding``; greedy, or sampled with the same seed for the
plain and the steered runs, so the columns differ only by the steering. The effect is
measured, not shown by one example: the share of continuations that contain the word, plain
versus steered.

Outputs (rank 0 only): ``steering.csv`` (one row per continuation) and ``steering.md`` (the
measured shares and every continuation side by side); the first continuation of each prompt
is also printed as a side-by-side table.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import das_train as pv
from das_train.core.files import atomic_write_text
from das_train.data.stories import build_tokenizer, train_story_lm
from das_train.training.model_loading import build_model, number_of_layers
from das_train.training.ranks import is_global_zero
from das_train.training.schema import ConfigError, RunConfig, SteeringConfig

log = logging.getLogger("das_train")

CSV_COLUMNS = ("prompt_index", "prompt", "sample", "coefficient", "continuation", "contains_word", "word_count")


@dataclass(frozen=True)
class Continuation:
    prompt_index: int
    sample: int
    coefficient: float
    """0.0 for the plain continuation."""
    text: str
    count: int
    """How often the steering word occurs in ``text`` (as a whole word, any case)."""


# -- checks ----------------------------------------------------------------------------------


def coefficients(steering: SteeringConfig) -> list[float]:
    value = steering.coefficient
    return [float(value)] if isinstance(value, (int, float)) else [float(c) for c in value]


def word_token(tokenizer, word: str) -> int:
    """The token whose embedding steers: the first token of " word", which is the word itself
    in a word-level vocabulary and the word as it appears inside a sentence under a BPE
    ("Ġhappy"), as in Figure 1.

    Raises ConfigError when the tokenizer does not know the word.
    """
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    if not ids or (tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids):
        known = sorted(w for w in tokenizer.get_vocab() if not w.startswith("<"))
        hint = f"; the vocabulary: {known}" if len(known) <= 200 else ""
        raise ConfigError([f"'steering.word' = {word!r} is not in the model's vocabulary{hint}"])
    if len(ids) > 1:
        log.warning("%r is %d tokens (%s); steering with the first, %r", word, len(ids),
                    tokenizer.convert_ids_to_tokens(ids), tokenizer.convert_ids_to_tokens(ids[0]))
    return ids[0]


def count_word(text: str, word: str) -> int:
    return len(re.findall(rf"(?<![\w]){re.escape(word.strip())}(?![\w])", text, flags=re.IGNORECASE))


def check_context(model, tokenizer, prompts: list[str], max_new_tokens: int) -> None:
    """Raises ConfigError when a prompt and its continuation outgrow the model's positions
    (a tiny stories model is trained on 64)."""
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit is None:
        return
    long = [p for p in prompts if len(tokenizer(p)["input_ids"]) + max_new_tokens > limit]
    if long:
        raise ConfigError([f"{len(long)} prompts plus steering.max_new_tokens={max_new_tokens} exceed the model's "
                           f"{limit} positions (e.g. {long[0]!r}); shorten them or lower steering.max_new_tokens"])


# -- the model -------------------------------------------------------------------------------


def load_model(config: RunConfig):
    """(model, tokenizer, steering token id): a hub model, or the tiny stories GPT-2 trained
    with ``config.seed`` and cached under ``config.cache_dir``.

    The word is looked up before the tiny model trains, so a bad word costs nothing.
    """
    model_config, word = config.model, config.steering.word
    if model_config.kind == "hub":
        model, tokenizer = build_model(config, None)  # fails fast offline, naming the offline recipes
        token = word_token(tokenizer, word)
        if model_config.device_map is None and torch.cuda.is_available():
            model = model.cuda()
        return model.eval(), tokenizer, token
    if model_config.kind != "tiny":
        raise ConfigError([f"job=steering needs a language model: model.kind=tiny or hub, not {model_config.kind!r}"])
    tokenizer = build_tokenizer()
    token = word_token(tokenizer, word)
    model = train_story_lm(tokenizer, n_layer=model_config.n_layer, hidden=model_config.hidden,
                           heads=model_config.heads, steps=model_config.max_steps, seed=config.seed,
                           cache_dir=Path(config.cache_dir) / "models")
    return model.eval(), tokenizer, token


def steering_model(model, n_layers: int):
    """Figure 1's intervenable model: an addition on every layer's MLP output; the constant
    (coefficient x embedding) is given per call, so one model serves every coefficient."""
    config = pv.IntervenableConfig(
        representations=[{"layer": layer, "component": "mlp_output"} for layer in range(n_layers)],
        intervention_types=pv.AdditionIntervention,
    )
    return pv.IntervenableModel(config, model)


def generation_kwargs(steering: SteeringConfig, tokenizer) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs = {"max_new_tokens": steering.max_new_tokens, "do_sample": steering.do_sample, "pad_token_id": pad}
    if steering.do_sample:
        kwargs.update(temperature=steering.temperature, top_k=steering.top_k, num_return_sequences=steering.samples)
    return kwargs


def continue_prompt(model, steered, inputs: dict, vector: torch.Tensor | None, coefficient: float, seed: int,
                    intervene_on_prompt: bool, kwargs: dict) -> torch.Tensor:
    """New token ids (samples, new) of one prompt: plain when ``coefficient`` is 0, else with
    ``coefficient x vector`` added to every layer's MLP output at every decoding step (and at
    every prompt position with ``intervene_on_prompt``). Sampling is seeded by ``seed``, so
    every coefficient draws the same random numbers."""
    torch.manual_seed(seed)
    with torch.no_grad():
        if coefficient == 0:
            out = model.generate(**inputs, **kwargs)
        else:
            _, out = steered.generate(
                inputs, source_representations=coefficient * vector, intervene_on_prompt=intervene_on_prompt,
                # on the prompt *and* every decoding step; None alone would mean the prompt only
                timestep_selector=(lambda step: True) if intervene_on_prompt else None, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` (None: left alone) and restored afterwards.

    One thread is fastest for a model a few dozen wide, and spares it the many-fold slowdown
    of threads spinning on a busy machine (as ``das_train.data.tiny_lm`` trains)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- outputs ---------------------------------------------------------------------------------


def shares(rows: list[Continuation], coefs: list[float]) -> dict[float, tuple[int, int]]:
    """Per coefficient (0.0: plain), (continuations containing the word, continuations)."""
    return {c: (sum(r.count > 0 for r in rows if r.coefficient == c), sum(r.coefficient == c for r in rows))
            for c in [0.0, *coefs]}


def _label(c: float) -> str:
    return "original" if c == 0 else f"steered x{c:g}"


def summary_lines(word: str, rows: list[Continuation], coefs: list[float]) -> list[str]:
    lines = []
    for c, (hit, total) in shares(rows, coefs).items():
        mean = sum(r.count for r in rows if r.coefficient == c) / max(total, 1)
        lines.append(f"{_label(c)}: {hit}/{total} continuations contain {word!r} ({hit / max(total, 1):.1%}), "
                     f"{mean:.2f} times per continuation")
    return lines


def side_by_side(prompts: list[str], rows: list[Continuation], coefs: list[float], width: int = 34) -> str:
    """A plain-text table of each prompt's first continuation, columns wrapped at ``width``."""
    columns = [0.0, *coefs]
    first = {(r.prompt_index, r.coefficient): r.text for r in rows if r.sample == 0}
    header = ["prompt", *(_label(c) for c in columns)]
    table = [header] + [[p, *(first[(i, c)] for c in columns)] for i, p in enumerate(prompts)]
    rule = "+" + "+".join("-" * (width + 2) for _ in header) + "+"
    out = [rule]
    for n, row in enumerate(table):
        cells = [textwrap.wrap(text, width) or [""] for text in row]
        for line in range(max(len(c) for c in cells)):
            out.append("| " + " | ".join((c[line] if line < len(c) else "").ljust(width) for c in cells) + " |")
        if n == 0:
            out.append(rule)
    out.append(rule)
    return "\n".join(out)


def write_csv(path: Path, prompts: list[str], rows: list[Continuation]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.prompt_index, prompts[r.prompt_index], r.sample, f"{r.coefficient:g}", r.text,
                         int(r.count > 0), r.count])
    atomic_write_text(path, buffer.getvalue())


def markdown(config: RunConfig, prompts: list[str], rows: list[Continuation], coefs: list[float], token: str) -> str:
    s = config.steering
    decoding = (f"sampled (temperature {s.temperature:g}, top_k {s.top_k or 'off'}, {s.samples} per prompt, seeded)"
                if s.do_sample else "greedy")
    where = "every prompt position and every decoding step" if s.intervene_on_prompt else "every decoding step"
    lines = [f"# Steering: {config.recipe}", "",
             f"Model {config.model.name or 'the tiny stories GPT-2'}; the embedding of {token!r} times each coefficient "
             f"added to the MLP output of every layer at {where}; {decoding}, {s.max_new_tokens} new tokens.", ""]
    lines += [f"- {line}" for line in summary_lines(s.word, rows, coefs)]
    columns = [0.0, *coefs]
    by_key = {(r.prompt_index, r.sample, r.coefficient): r.text for r in rows}
    lines += ["", "| prompt | sample | " + " | ".join(_label(c) for c in columns) + " |",
              "|---|---|" + "---|" * len(columns)]
    samples = sorted({r.sample for r in rows})
    for i, prompt in enumerate(prompts):
        for sample in samples:
            cells = " | ".join(by_key[(i, sample, c)].replace("|", "\\|").replace("\n", " ") for c in columns)
            lines.append(f"| {prompt} | {sample} | {cells} |")
    return "\n".join(lines) + "\n"


# -- the job ---------------------------------------------------------------------------------


def run_steering(config: RunConfig, run_dir: Path) -> Path:
    """Plain and steered continuations of ``config.steering.prompts``; writes steering.csv/.md."""
    s = config.steering
    coefs = coefficients(s)
    prompts = [str(p) for p in s.prompts]
    model, tokenizer, token = load_model(config)
    n_layers = number_of_layers(model)
    vector = model.get_input_embeddings().weight[token].detach()  # (hidden,)
    steered = steering_model(model, n_layers)
    kwargs = generation_kwargs(s, tokenizer)
    token_text = tokenizer.convert_ids_to_tokens(token)
    log.info("steering with %r (token %d, embedding norm %.3f) x %s on mlp_output of all %d layers, at %s; "
             "%d prompts, %s", token_text, token, vector.norm().item(), coefs, n_layers,
             "the prompt and every decoding step" if s.intervene_on_prompt else "every decoding step",
             len(prompts), f"{s.samples} samples each" if s.do_sample else "greedy")

    check_context(model, tokenizer, prompts, s.max_new_tokens)
    unk = tokenizer.unk_token_id
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        if unk is not None and unk in ids:
            log.warning("prompt %r has %d words the model does not know; it reads them as %s", prompt,
                        ids.count(unk), tokenizer.unk_token)
    device = next(model.parameters()).device
    rows: list[Continuation] = []
    bar = tqdm(prompts, desc="steering", unit="prompt", disable=not config.progress or not is_global_zero())
    with bar, torch_threads(1 if config.model.kind == "tiny" else None):
        for i, prompt in enumerate(bar):
            encoded = tokenizer(prompt, return_tensors="pt")
            inputs = {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
            for c in [0.0, *coefs]:
                new = continue_prompt(model, steered, inputs, vector, c, config.seed * 100_003 + i,
                                      s.intervene_on_prompt, kwargs)
                for sample, ids in enumerate(new):
                    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    rows.append(Continuation(i, sample, c, text, count_word(text, s.word)))

    if is_global_zero():
        write_csv(run_dir / "steering.csv", prompts, rows)
        atomic_write_text(run_dir / "steering.md", markdown(config, prompts, rows, coefs, token_text))
        print("\n" + side_by_side(prompts, rows, coefs), flush=True)
        print(f"\nsteering with {s.word!r}:", flush=True)
        for line in summary_lines(s.word, rows, coefs):
            print(f"  {line}", flush=True)
        print(f"wrote {run_dir / 'steering.csv'} and {run_dir / 'steering.md'}", flush=True)
    return run_dir
