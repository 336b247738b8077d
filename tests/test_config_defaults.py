"""The schema is the one home of defaults: YAML holds only what differs from it, and the code
reads its settings from the config rather than keeping defaults of its own."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import transformers
import yaml

from das_train.training import schema
from das_train.training.das_module import DASModule
from das_train.training.probe import train_probes
from das_train.training.sweep.group_fit import build_member
from das_train.training.sweep.sites import SweepSite

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


def _tiny_neox():
    config = transformers.GPTNeoXConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=16, max_position_embeddings=8)
    return transformers.GPTNeoXForCausalLM(config).eval()


def test_das_module_takes_its_defaults_from_the_schema_and_a_run_its_config():
    assert DASModule(_tiny_neox(), layer=0, position=1).hparams.lr == schema.InterventionConfig.lr
    intervention = schema.InterventionConfig(lr=0.0123, low_rank_dimension=2)
    site = SweepSite(layer=0, component="block_output", position=1, position_name="last")
    module = build_member(intervention, _tiny_neox(), site, seed=0, lm=True)
    assert (module.hparams.lr, module.hparams.low_rank_dimension) == (0.0123, 2)
    assert module.configure_optimizers().param_groups[0]["lr"] == 0.0123


def test_probes_take_their_defaults_from_the_schema():
    defaults = inspect.signature(train_probes).parameters
    probe = schema.ProbeConfig()
    assert (defaults["lr"].default, defaults["max_epochs"].default, defaults["weight_decay"].default) == (
        probe.lr, probe.max_epochs, probe.weight_decay)
