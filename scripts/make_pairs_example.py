"""Writes ``recipes/data/animal_sounds.jsonl``, the pair file ``recipe=pairs_file`` runs on.

A small counterfactual task in the plain pair-file format (README "Your own data"): "the big
cow in the old barn says" -> " moo". The variable is the animal; interchanging it from a
source makes the counterfactual answer the source animal's sound. Adjectives before the animal
and place names of one or two words make texts of several lengths, so the animal stands at a
different token in each row and often at a different one in base and source: what a
researcher's own file looks like, and what fixed templates cannot express. Seeded, so the
shipped file is this script's output:

    python scripts/make_pairs_example.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack"}
ADJECTIVES = ("", "big ", "small ", "very big ", "very small ", "happy ")
PLACES = ("barn", "old barn", "field", "green field", "house", "yard", "big yard")
PAIRS = 400
OUT = Path(__file__).resolve().parents[1] / "recipes" / "data" / "animal_sounds.jsonl"


def sentence(rng: random.Random, animal: str) -> str:
    return f"the {rng.choice(ADJECTIVES)}{animal} in the {rng.choice(PLACES)} says"


def rows(seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    animals = sorted(SOUNDS)
    out = []
    for _ in range(PAIRS):
        base, source = rng.choice(animals), rng.choice(animals)
        out.append({
            "base": sentence(rng, base),
            "source": sentence(rng, source),
            "base_animal": base,
            "source_animal": source,
            "base_label": " " + SOUNDS[base],
            "source_label": " " + SOUNDS[source],
            "counterfactual_label": " " + SOUNDS[source],
        })
    return out


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    temporary = OUT.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows()))
    temporary.replace(OUT)
    print(f"wrote {PAIRS} pairs to {OUT}")


if __name__ == "__main__":
    main()
