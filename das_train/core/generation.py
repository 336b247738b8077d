"""``IntervenableModel.generate``: interventions while a Hugging Face model generates.

``model.generate`` calls every hooked module once for the prompt and then once per new token:
with the KV cache each later call sees one position (the newest token), without it each call
re-runs the whole sequence so far. One hook per intervention tells the calls apart by the
length of the tensor it sees: a module's ``c``-th call (0-based) works on a sequence of
``P + c`` absolute positions (``P``: the base's length, pads included) and its tensor holds the
last ``L`` of them, so it starts at ``offset = P + c - L`` (0 for the prompt pass and for every
re-run, ``P + c - 1`` for a cached step). Each call then gets the interventions of the windows
of positions it holds:

- the **prompt window** ``[0, P)``, when ``intervene_on_prompt``: the interventions at the
  configured base locations, exactly as :meth:`IntervenableModel.forward` applies them
  (re-applied on every re-run when ``use_cache=False``);
- one **decoding step** window per selected step ``s``: the position ``P + s`` of the ``s``-th
  generated token, worked on by the call that consumes it (the ``s + 1``-th call). Step 0 is
  the first call after the prompt pass, as in pyvene; so the first generated token, picked
  from the prompt pass, is never changed by decoding-step interventions alone (add
  ``intervene_on_prompt=True`` with ``unit_locations={"base": -1}`` to reach it too). Without
  the cache, every selected earlier step is re-applied at its position on each re-run, so both
  modes compute the same thing.

Sources are run once, as in ``forward``. At a decoding step the source value is the same one
the prompt would use: a constant ``source_representations`` (or the intervention's own), which
is the steering case; or the source run's activation at the source location, which must then
be a single position (with no location given and only decoding steps intervened, the source's
last position is used).

``timestep_selector`` may also be a dict from intervention key (or index) to a selector, to
give each intervention its own steps (the others then act on the prompt only, if at all).
Collect interventions gather one tensor per intervened window, in call order, returned as
``((original, activations), sequences)`` like ``forward``. Beam search and
``num_return_sequences`` repeat each example; locations, sources, per-example constants and
subspaces are repeated with them. Recurrent (``t``) units are not supported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch

from das_train.core import hooks as H
from das_train.core.locations import Location, LocationError
from das_train.core.patching import make_setter
from das_train.core.planning import Plan, plan_call, shape_of
from das_train.core.running import gather_sources
from das_train.core.wiring import Wiring
from das_train.interventions.static import CollectIntervention


def _step_selector(timestep_selector: Any) -> Callable[[int], bool]:
    """Steps as a predicate: ``None`` is every step; a list of indices; or a callable."""
    if timestep_selector is None:
        return lambda step: True
    if callable(timestep_selector):
        cache: dict[int, bool] = {}

        def chosen(step: int) -> bool:
            if step not in cache:
                cache[step] = bool(timestep_selector(step))
            return cache[step]

        return chosen
    if isinstance(timestep_selector, torch.Tensor):
        timestep_selector = timestep_selector.tolist()
    if isinstance(timestep_selector, (int, str)) or not isinstance(timestep_selector, Iterable):
        raise TypeError(
            "timestep_selector must be a list of decoding-step indices or a callable "
            f"step -> bool, got {type(timestep_selector).__name__}"
        )
    steps = list(timestep_selector)
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"timestep_selector: steps must be ints >= 0, got {bad}")
    wanted = set(steps)
    return lambda step: step in wanted


def _selectors(wiring: Wiring, timestep_selector: Any, on_prompt: bool) -> list[Callable[[int], bool] | None]:
    """Per intervention: the decoding steps it acts at (``None``: none).

    A mapping gives a selector per intervention, by key or index; the others act on the
    prompt only.
    """
    count = len(wiring.entries)
    if timestep_selector is None:
        return [None] * count if on_prompt else [_step_selector(None)] * count
    if not isinstance(timestep_selector, Mapping):
        return [_step_selector(timestep_selector)] * count
    keys = [e.key for e in wiring.entries]
    out: list[Callable[[int], bool] | None] = [None] * count
    unknown = []
    for key, selector in timestep_selector.items():
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < count:
            index = key
        elif key in keys:
            index = keys.index(key)
        else:
            unknown.append(key)
            continue
        out[index] = None if selector is None else _step_selector(selector)
    if unknown:
        raise ValueError(f"timestep_selector has unknown interventions {unknown}; keys: {keys}")
    return out


def _as_mapping(base: Any) -> dict[str, Any]:
    if torch.is_tensor(base):
        return {"input_ids": base}
    if isinstance(base, Mapping):
        return dict(base)
    raise TypeError(f"generate needs `base` as a dict of tensors or an input_ids tensor, got {type(base).__name__}")


def _expand_loc(loc: Location | None, k: int) -> Location | None:
    if loc is None or k == 1:
        return loc

    def repeat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.repeat_interleave(k, 0)

    return Location(units=repeat(loc.units), heads=repeat(loc.heads))


class _Generation:
    """The state of one ``generate`` call: its plan, the gathered sources and the step rule."""

    def __init__(self, wiring: Wiring, plan: Plan, store: dict[int, Any], batch: int,
                 prompt_len: int, on_prompt: bool, selectors: list[Callable[[int], bool] | None]):
        self.wiring = wiring
        self.plan = plan
        self.store = store
        self.batch = batch
        self.prompt_len = prompt_len
        self.on_prompt = on_prompt
        self.selectors = selectors
        self.collected: dict[int, Any] = {}
        self.gathered: dict[int, list[torch.Tensor]] = {}
        self._setters: dict[tuple[int, int, str], Any] = {}

    # -- one setter per (intervention, expansion, window kind), made on first use -------------
    def _setter(self, i: int, k: int, kind: str):
        key = (i, k, kind)
        if key not in self._setters:
            plan = self.plan
            entry = self.wiring.entries[i]
            site = entry.site
            if k > 1:  # beams / num_return_sequences: HF repeats each example k times in a row
                subspaces = list(plan.subspaces)
                if subspaces[i] is not None:
                    subspaces[i] = [row for row in subspaces[i] for _ in range(k)]
                constants = list(plan.constants)
                c = constants[i]
                if c is not None and c.dim() == 2 and c.shape[0] == self.batch and self.batch > 1:
                    constants[i] = c.repeat_interleave(k, 0)
                plan = replace(plan, subspaces=subspaces, constants=constants)
                store = {j: v.repeat_interleave(k, 0) for j, v in self.store.items() if torch.is_tensor(v)}
            else:
                store = self.store
            base_loc = _expand_loc(plan.base_locs[i], k)
            if kind == "prompt":
                loc = base_loc
            elif site.unit == "h.pos":
                heads = base_loc.heads if base_loc is not None else None
                rows = self.batch * k
                loc = Location(units=torch.zeros(rows, 1, dtype=torch.long), heads=heads)
            elif site.unit == "h":
                loc = base_loc  # the chosen heads; the window is the one position
            else:
                loc = None  # the whole one-position window
            self._setters[key] = make_setter(i, entry, plan, loc, None, store, self.collected)
        return self._setters[key]

    def hook_for(self, i: int):
        calls = [0]
        entry = self.wiring.entries[i]

        def hook(module, args, kwargs, output):
            x = H.read_hooked(args, kwargs, output)
            if x.dim() != 3:
                raise ValueError(f"{entry.key}: generation needs (batch, seq, width) activations, got {tuple(x.shape)}")
            c = calls[0]
            calls[0] += 1
            length = x.shape[1]
            total = self.prompt_len + c
            offset = total - length
            if offset < 0 or x.shape[0] % self.batch:
                raise RuntimeError(
                    f"{entry.key}: call {c} of the hooked module saw {tuple(x.shape)}, which does not "
                    f"fit a generation from a prompt of {self.prompt_len} positions (batch "
                    f"{self.batch}); is the module called more than once per step?"
                )
            k = x.shape[0] // self.batch
            windows: list[tuple[int, int, str]] = []
            if self.on_prompt and offset < self.prompt_len:
                if offset > 0:
                    raise RuntimeError(
                        f"{entry.key}: the hooked module sees only positions {offset}.. of the "
                        "prompt, so prompt interventions cannot be applied there"
                    )
                windows.append((0, self.prompt_len, "prompt"))
            chosen = self.selectors[i]
            if chosen is not None:
                for step in range(max(0, offset - self.prompt_len), c):
                    if chosen(step):
                        start = self.prompt_len + step - offset
                        windows.append((start, start + 1, "decode"))
            result = None
            for start, stop, kind in windows:
                setter = self._setter(i, k, kind)
                result = _apply_window(setter, module, args, kwargs, output, result, start, stop)
                if i in self.collected:
                    self.gathered.setdefault(i, []).append(self.collected.pop(i))
            return result

        return hook


def _apply_window(setter, module, args, kwargs, output, result, start: int, stop: int):
    """Runs ``setter`` as if the module's tensor were only positions ``[start, stop)``.

    ``result`` is what earlier windows of this call returned (``None``: nothing replaced);
    returns what the hook should return after this window too.
    """
    if result is not None:  # an earlier window replaced the tensor: continue from its result
        if output is not None:
            output = result
        else:
            args, kwargs = result
    x = H.read_hooked(args, kwargs, output)
    if start == 0 and stop == x.shape[1]:
        new = setter(module, args, kwargs, output)
        return result if new is None else new
    cut_out = None if output is None else x[:, start:stop]
    try:  # an output hook's module input, for interventions that read it (LoRA)
        module_in = H.read_hooked(args, kwargs, None)
    except TypeError:
        module_in = None
    if module_in is not None and module_in.dim() == 3 and module_in.shape[1] == x.shape[1]:
        cut_args, cut_kwargs = H.write_hooked(args, kwargs, None, module_in[:, start:stop])
    else:
        cut_args, cut_kwargs = args, kwargs
    new = setter(module, cut_args, cut_kwargs, cut_out)
    if new is None:  # no change, or written in place into the view
        return result
    new_part = new if cut_out is not None else H.read_hooked(new[0], new[1], None)
    whole = torch.cat([x[:, :start], new_part.to(x.dtype), x[:, stop:]], dim=1)
    return H.write_hooked(args, kwargs, output, whole)


def _decoding_source_locations(wiring: Wiring, plan: Plan, selectors: list[Callable[[int], bool] | None],
                                on_prompt: bool, batch: int) -> list[Location | None]:
    """The source locations with one position each for the interventions that read a source
    run at decoding steps (the source's last position when none is given); raises
    :class:`LocationError` listing every intervention that cannot be generated with."""
    problems: list[str] = []
    src_locs = list(plan.src_locs)
    for i, e in enumerate(wiring.entries):
        if not plan.active[i]:
            continue
        if e.site.unit == "t":
            problems.append(f"{e.key}: recurrent time-step units cannot be used in generate")
            continue
        if selectors[i] is None or plan.source_of[i] is None:
            continue
        if e.site.unit == "h":
            problems.append(f"{e.key}: decoding-step interventions from a source run need unit 'pos' or 'h.pos', not 'h'")
            continue
        loc = src_locs[i]
        if loc is None or loc.units is None:
            if on_prompt:
                problems.append(
                    f"{e.key}: decoding steps take the source at one position; give unit_locations "
                    "with one source position (the prompt and the decoding steps share it)"
                )
                continue
            src_len = shape_of(plan.group_inputs[e.group])[1]
            if src_len is None:
                problems.append(f"{e.key}: cannot read the source's length; give unit_locations")
                continue
            src_locs[i] = Location(units=torch.full((batch, 1), src_len - 1, dtype=torch.long),
                                   heads=None if loc is None else loc.heads)
        elif loc.units.shape[1] != 1:
            problems.append(
                f"{e.key}: decoding steps take the source at one position per example, but the "
                f"source location has {loc.units.shape[1]}"
            )
    if problems:
        raise LocationError("invalid generate call:\n  - " + "\n  - ".join(problems))
    return src_locs


def generate(wiring: Wiring, mode: str, base: Any, sources: Any, unit_locations: dict[str, Any] | None,
             source_representations: Any, intervene_on_prompt: bool, timestep_selector: Any,
             output_original_output: bool, subspaces: Any, generate_kwargs: dict[str, Any]):
    """:meth:`IntervenableModel.generate` on ``wiring``: every argument as that method got it.

    No defaults here: the method's signature (pyvene's) is the one home of them.
    """
    base = _as_mapping(base)
    hf_generate = getattr(wiring.model, "generate", None)
    if hf_generate is None:
        raise TypeError(f"{type(wiring.model).__name__} has no `generate`; generation needs a Hugging Face LM")
    on_prompt = bool(intervene_on_prompt)
    selectors = _selectors(wiring, timestep_selector, on_prompt)
    batch, prompt_len = shape_of(base)
    if batch is None or prompt_len is None:
        raise ValueError("generate needs `base` with input_ids (or attention_mask / inputs_embeds) of shape (batch, seq)")
    plan = plan_call(wiring, mode, base, sources, unit_locations, source_representations, subspaces)
    plan = replace(plan, src_locs=_decoding_source_locations(wiring, plan, selectors, on_prompt, batch))

    original = hf_generate(**base, **generate_kwargs) if output_original_output else None
    collected: dict[int, Any] = {}
    with torch.no_grad():
        store, setters = gather_sources(wiring, mode, plan, collected, {})
    state = _Generation(wiring, plan, store, batch, prompt_len, on_prompt, selectors)
    for i, value in collected.items():
        state.gathered[i] = [value]
    with H.HookSet() as hooks:
        for i in setters:
            site = wiring.entries[i].site
            hooks.add(site.module, site.hook, state.hook_for(i))
        sequences = hf_generate(**base, **generate_kwargs)
    collects = [i for i, e in enumerate(wiring.entries) if isinstance(e.intervention, CollectIntervention)]
    if collects:
        activations = [t for i in collects for t in state.gathered.get(i, [])]
        return (original, activations), sequences
    return original, sequences
