"""The schema is the one home of defaults: YAML holds only what differs from it, and the code
reads its settings from the config rather than keeping defaults of its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from das_train.training import schema

ROOT = Path(__file__).resolve().parents[1]
GROUP_FILES = sorted((ROOT / "das_train" / "conf").glob("*/*.yaml"))
TOP_FILES = [ROOT / "das_train" / "conf" / "base.yaml", *sorted((ROOT / "recipes").glob("*.yaml"))]


def redundant_keys(data: dict, defaults: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``data`` whose value is the schema's default (``recipe`` aside: each
    recipe names itself)."""
    found = []
    for key, value in data.items():
        if key in ("defaults", "hydra", "recipe") and not prefix or key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            found += redundant_keys(value, defaults[key], f"{prefix}{key}.")
        elif value == defaults[key] and type(value) is type(defaults[key]):
            found.append(prefix + key)
    return found


@pytest.mark.parametrize("path", GROUP_FILES + TOP_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_yaml_key_repeats_the_schema_default(path):
    data = yaml.safe_load(path.read_text()) or {}
    defaults = schema.defaults()
    if path in GROUP_FILES:
        data, defaults = {path.parent.name: data}, {path.parent.name: defaults[path.parent.name]}
    assert redundant_keys(data, defaults) == [], f"{path}: these keys repeat the schema's default; remove them"


def test_the_check_finds_a_repeated_default():
    assert redundant_keys({"model": {"kind": "tiny", "n_layer": 2}}, schema.defaults()) == ["model.kind"]
