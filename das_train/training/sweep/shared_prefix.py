"""Sites a sweep need not train: where every pair's source equals its base up to the site.

In a causal model (a decoder language model, a recurrent network) the activations at position
``p`` depend on the inputs at positions ``0..p`` only. Where every pair's base and source agree
on those inputs (a BOS token, the fixed opening words of a template), the source's activation
at ``p`` is the base's, at every layer. An intervention that swaps part of the source into the
base (``keeps_base_for_equal_source``: DAS's rotations, low-rank or full, the sigmoid masks)
then returns the base whatever its parameters: the counterfactual loss does not
depend on them, its gradient is zero up to rounding, and the IIA is the unintervened model's.
Training there is wasted work that ends, at best, where it began; at worst Adam, which divides
by the gradient's size, walks the parameters along rounding noise.

So with ``sweep.skip_shared_prefix`` (the default) such sites are tested with their untrained
interventions instead of trained: the same IIA, the initial (seeded) parameters, the probes
fitted as everywhere, and a log line saying why. A sweep over every position of a templated
task has them wherever the template is fixed before its first differing word: in
``gender_tiny`` that is the BOS column, 5 of the 20 sites. Not where training is more than the
counterfactual loss (a boundary penalty; boundless DAS's temperature schedule), nor in IIT,
which trains the model itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from das_train.core.sites import table_for
from das_train.data.pair_inputs import Position, model_inputs
from das_train.interventions.base import INTERVENTION_REGISTRY
from das_train.interventions.masks import BoundlessRotatedSpaceIntervention
from das_train.training.schema import InterventionConfig, SweepConfig


def has_positions(inputs: torch.Tensor, is_language_model_task: bool) -> bool:
    """Whether a model input has a sequence dimension: ``(batch, seq)`` token ids (or mask),
    ``(batch, seq, d)`` embeddings; a vector task's ``(batch, d)`` has none."""
    return inputs.dim() >= (2 if is_language_model_task else 3)


def shared_prefix_length(columns: Mapping[str, torch.Tensor], is_language_model_task: bool) -> int:
    """How many leading positions every pair's base and source inputs agree on (token ids and
    attention mask, or embeddings); 0 when the inputs have no positions or differ in shape."""
    base = model_inputs(columns, "base", is_language_model_task)
    try:
        source = model_inputs(columns, "source", is_language_model_task)
    except KeyError:
        return 0
    if base.keys() != source.keys():
        return 0
    agree: torch.Tensor | None = None  # (seq,): every pair agrees at this position
    for name, b in base.items():
        s = source[name]
        if b.shape != s.shape or not has_positions(b, is_language_model_task):
            return 0
        same = (b == s).reshape(b.shape[0], b.shape[1], -1).all(-1).all(0)
        agree = same if agree is None else agree & same
    if agree is None or len(agree) == 0:
        return 0
    differing = torch.nonzero(~agree)
    return len(agree) if len(differing) == 0 else int(differing[0])


def can_skip(sweep: SweepConfig, intervention: InterventionConfig, model: nn.Module) -> bool:
    """Whether this run's intervention and model allow any site to go untrained, whatever its
    position: a trainable interchange intervention that keeps the base given it as source,
    trained by the counterfactual loss alone (no boundary penalty, no temperature schedule,
    which is part of a boundless intervention's training), in DAS, on a causal model."""
    if not sweep.skip_shared_prefix or intervention.iit or intervention.boundary_penalty:
        return False
    cls = INTERVENTION_REGISTRY.get(intervention.type)
    if cls is None or not (cls.trainable and cls.source_kind == "interchange" and cls.keeps_base_for_equal_source):
        return False
    if issubclass(cls, BoundlessRotatedSpaceIntervention):
        return False
    table = table_for(model)
    return table is not None and table.causal


def untrained_reason(sweep: SweepConfig, intervention: InterventionConfig, model: nn.Module, position: Position,
                     prefix: int, seq: int) -> str | None:
    """Why the site at ``position`` is tested untrained (see the module docstring), or ``None``
    when it trains. ``prefix`` is :func:`shared_prefix_length` over the training and test
    pairs together, ``seq`` their sequence length. A per-row position (RowPosition) always
    trains: the prefix is measured in columns shared by every pair, not per row."""
    if not isinstance(position, int) or not -seq <= position < seq or not can_skip(sweep, intervention, model):
        return None
    row = position % seq
    if row >= prefix:
        return None
    return (f"every pair's base and source agree on positions 0..{row}, so the intervention returns the base "
            "whatever its parameters: tested untrained (sweep.skip_shared_prefix)")


def shared_prefix(splits: Iterable[Mapping[str, torch.Tensor]], is_language_model_task: bool) -> tuple[int, int]:
    """``(positions every pair of every split shares, sequence length)`` of the splits' columns
    (:func:`shared_prefix_length`); ``(0, 0)`` for inputs without positions."""
    prefix, seq = None, 0
    for columns in splits:
        inputs = model_inputs(columns, "base", is_language_model_task)
        first = next(iter(inputs.values()))
        if not has_positions(first, is_language_model_task) or (seq and first.shape[1] != seq):
            return 0, 0
        seq = first.shape[1]
        length = shared_prefix_length(columns, is_language_model_task)
        prefix = length if prefix is None else min(prefix, length)
    return (prefix or 0), seq


def untrained_positions(sweep: SweepConfig, intervention: InterventionConfig, model: nn.Module,
                        splits: Iterable[Mapping[str, torch.Tensor]], is_language_model_task: bool,
                        positions: Iterable[Position]) -> dict[Position, str]:
    """The swept ``positions`` tested untrained, each with why: those every pair of ``splits``
    (the training and test columns) agrees on, base and source, up to the position."""
    if not can_skip(sweep, intervention, model):
        return {}
    prefix, seq = shared_prefix(splits, is_language_model_task)
    found = {}
    for position in positions:
        reason = untrained_reason(sweep, intervention, model, position, prefix, seq)
        if reason is not None:
            found[position] = reason
    return found


__all__ = ["can_skip", "shared_prefix", "shared_prefix_length", "untrained_positions", "untrained_reason"]
