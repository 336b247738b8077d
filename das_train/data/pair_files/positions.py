"""Named positions of a pair file, from config to a token index in each text.

``task.positions`` maps a name to a rule:

- ``last``: the last token (the int -1 of the TaskSpec: rows are left-padded, so the last
  column is every row's last token);
- an int, or ``index:N``: the N-th token of the text (negative counts from the end, -1 the
  last), special tokens such as a BOS included;
- ``span:N``: the N-th piece of a text given as a list of pieces (CausalGym's ``base``/``src``);
- ``{slot}``: the value of the slot in this row: placed by the template column, or looked up
  in the row (``base_<slot>`` or ``<slot>`` for the base; ``<source column>_<slot>``,
  ``source_<slot>`` or ``<slot>`` for the source) and found in the text;
- ``marker:TEXT``, or any other string: the first occurrence of TEXT as whole words.

A span of characters becomes tokens through the tokenizer's offsets
(``return_offsets_mapping``), so byte-level BPE pieces with a leading space and words of several
tokens resolve to the right token; ``task.span_token`` picks the span's ``first`` or ``last``
token (``last`` by default: the token where a word's whole content has been read).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from das_train.data.pair_files.records import Side

LAST = "last"
SLOT = re.compile(r"^\{(\w+)\}$")


@dataclass(frozen=True)
class Rule:
    """One position rule: ``kind`` is last, index, span, slot or marker."""

    kind: str
    value: int | str = 0


def parse_rules(positions: Mapping[str, Any]) -> tuple[dict[str, Rule], list[str]]:
    """The rules of ``task.positions`` and the problems of those that cannot be read; none
    named means the last token alone."""
    rules, problems = {}, []
    positions = positions or {"last": "last"}
    for name, spec in positions.items():
        rule = _parse(spec)
        if rule is None:
            problems.append(f"task.positions.{name} = {spec!r}: not a position rule; allowed: last, a token "
                            "index (int or index:N), span:N, {slot}, marker:TEXT or a marker word")
        else:
            rules[str(name)] = rule
    return rules, problems


def _parse(spec: Any) -> Rule | None:
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return Rule("index", spec)
    if not isinstance(spec, str) or not spec.strip():
        return None
    if spec == LAST:
        return Rule(LAST)
    kind, _, rest = spec.partition(":")
    if kind in ("index", "span"):
        return Rule(kind, int(rest)) if re.fullmatch(r"-?\d+", rest.strip()) else None
    if kind == "marker":
        return Rule("marker", rest) if rest.strip() else None
    slot = SLOT.match(spec)
    return Rule("slot", slot.group(1)) if slot else Rule("marker", spec)


def slot_names(rules: Mapping[str, Rule]) -> set[str]:
    """The slots the rules read from rows."""
    return {str(rule.value) for rule in rules.values() if rule.kind == "slot"}


def token_index(rule: Rule, side: Side, offsets: Sequence[tuple[int, int]], span_token: str) -> int | str:
    """The token index (in the unpadded text) that ``rule`` names in ``side``, or a sentence
    saying why there is none."""
    length = len(offsets)
    if rule.kind == "index":
        index = int(rule.value)
        if not -length <= index < length:
            return f"token index {index} is outside the text's {length} tokens"
        return index % length
    if side.text is None:
        return f"a {rule.kind} position needs text, but this file gives token ids; use last or a token index"
    chars = _char_span(rule, side)
    if isinstance(chars, str):
        return chars
    start, end = chars
    while start < end and side.text[start].isspace():  # a piece's leading space belongs to no word
        start += 1
    tokens = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    if not tokens:
        return f"characters {start}..{end} of {side.text!r} cover no token"
    return tokens[0] if span_token == "first" else tokens[-1]


def _char_span(rule: Rule, side: Side) -> tuple[int, int] | str:
    text = side.text or ""
    if rule.kind == "span":
        if side.spans is None:
            return "span:N needs the text as a list of pieces (CausalGym's base/src columns)"
        index = int(rule.value)
        if not -len(side.spans) <= index < len(side.spans):
            return f"span {index} is outside the text's {len(side.spans)} pieces"
        index %= len(side.spans)
        start = sum(len(piece) for piece in side.spans[:index])
        return start, start + len(side.spans[index])
    if rule.kind == "slot":
        slot = str(rule.value)
        if slot in side.slot_chars:
            return side.slot_chars[slot]
        if slot not in side.slots:
            return f"slot {{{slot}}} has no value in this row (no column {slot!r} or {slot!r} with a side prefix)"
        value, column = side.slots[slot]
        return find_marker(text, value, f"the value {value!r} of slot {{{slot}}} (column {column!r})")
    return find_marker(text, str(rule.value), f"marker {rule.value!r}")


def find_marker(text: str, marker: str, what: str) -> tuple[int, int] | str:
    """The first occurrence of ``marker`` in ``text`` as whole words (``he`` is not found in
    ``the``), or a sentence saying it is absent."""
    wanted = marker.strip()
    if not wanted:
        return f"{what} is empty"
    found = re.search(rf"(?<!\w){re.escape(wanted)}(?!\w)", text)
    if found is None:
        return f"{what} is absent from the text {text!r}"
    return found.start(), found.end()
