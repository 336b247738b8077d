"""``model.kind=hub model.name=/a/folder``: a ``save_pretrained`` folder runs the sweep offline.

Each tiny model is built from a config and saved next to a byte-level BPE tokenizer trained here
on the gender task's sentences (so every name stays one token, as the task needs, and verbs and
pronouns carry the leading-space byte as in GPT-2 or Pythia). The network is closed for these
tests: the Hub reachability check and every socket connection fail the test if called. A family
no table names (Phi) gets its table from its module names; the interchange it gives is checked
against plain hooks on the same modules.
"""

from __future__ import annotations

import csv
import json
import logging
import socket
import subprocess
import sys

import pytest
import torch
from conftest import EOS, TINY_LM_FAMILIES, byte_level_bpe, capture, patched_run, tiny_causal_lm
from transformers import (
    MambaConfig,
    MambaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
)

import das_train as pv
from das_train import cli
from das_train.core import loaders
from das_train.core.sites import table_for
from das_train.tasks.gender import FEMALE_NAMES, MALE_NAMES, PRONOUNS, VERBS
from das_train.training import model_loading
from das_train.training import run as run_module
from das_train.training.schema import ConfigError

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)

HIDDEN, LAYERS = 16, 2


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained on every gender sentence: names, verbs, " because" and the
    pronouns become whole tokens; end-of-text doubles as bos, eos and pad, as in GPT-2."""
    sentences = [f"{n} {v} because{p}" for n in (*MALE_NAMES, *FEMALE_NAMES) for v in VERBS for p in PRONOUNS]
    return byte_level_bpe(sentences, 1000, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def _ids(tokenizer) -> dict:
    return {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


BUILDERS = TINY_LM_FAMILIES  # phi: no table lists it; its table is discovered from model.layers


def save_checkpoint(folder, model, tokenizer=None):
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def build(arch, tokenizer):
    return tiny_causal_lm(arch, tokenizer, max_positions=16, hidden=HIDDEN, layers=LAYERS)


@pytest.fixture
def offline(monkeypatch):
    """Any look at the network fails the test: the Hub check, and every socket connection."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network call was made for a local folder: {args}")

    monkeypatch.setattr(model_loading, "hub_unreachable_reason", refuse)
    monkeypatch.setattr(loaders, "hub_unreachable_reason", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def overrides(tmp_path, folder, *extra):
    return [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none",
            "trainer.max_steps=3", "task.n_train=32", "task.n_val=16", "task.n_test=32",
            "sweep.probe.max_epochs=2", "task.filter_pairs=false", "model.kind=hub", f"model.name='{folder}'",
            "sweep.layers=[0,1]", "sweep.positions=[name,last]", *extra]


def _table(run_dir):
    with (run_dir / "table.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_a_saved_folder_runs_the_sweep_end_to_end(arch, bpe, tmp_path, offline):
    folder = save_checkpoint(tmp_path / "ckpt", build(arch, bpe), bpe)
    run_dir = run_module.run(cli.check("gender_tiny", overrides(tmp_path, folder)))
    table = _table(run_dir)
    # the embedding row and layers 0, 1, each at the name and the last position (BPE: no bos)
    sites = [(row["layer"], row["component"], row["position_name"], row["position"]) for row in table]
    assert sites == [("0", "block_input", "name", "0"), ("0", "block_input", "last", "2"),
                     ("0", "block_output", "name", "0"), ("0", "block_output", "last", "2"),
                     ("1", "block_output", "name", "0"), ("1", "block_output", "last", "2")]
    assert all(0.0 <= float(row["iia"]) <= 1.0 for row in table)
    model = json.loads((run_dir / "run_info.json").read_text())["model"]
    assert model["folder"] == str(folder.resolve()) and model["revision_ignored"] == "main"
    assert set(model["files"]) == {"config.json", "model.safetensors"} and len(model["fingerprint"]) == 12


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_the_folder_loads_the_saved_model_and_tokenizer(arch, bpe, tmp_path, offline):
    model = build(arch, bpe)
    folder = save_checkpoint(tmp_path / "ckpt", model, bpe)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, folder)))
    loaded, tokenizer = model_loading.build_model(cfg, None)
    ids = tokenizer(["Mary sang because"], return_tensors="pt")["input_ids"]
    assert ids.tolist() == bpe(["Mary sang because"], return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert model_loading.number_of_layers(loaded) == LAYERS


def test_revision_is_ignored_for_a_folder_and_the_log_says_so(bpe, tmp_path, offline, caplog):
    folder = save_checkpoint(tmp_path / "ckpt", build("gpt2", bpe), bpe)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, folder, "model.revision=v2")))
    with caplog.at_level(logging.INFO, logger="das_train"):
        model_loading.build_model(cfg, None)
    assert f"local folder {folder.resolve()}" in caplog.text and "model.revision='v2' is ignored" in caplog.text
    assert model_loading.model_identity(cfg.model)["revision_ignored"] == "v2"


def test_a_folder_without_its_tokenizer_is_named_with_what_is_missing(bpe, tmp_path, offline):
    folder = save_checkpoint(tmp_path / "ckpt", build("gpt2", bpe))
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, folder)))
    with pytest.raises(ConfigError) as err:
        model_loading.build_model(cfg, None)
    (problem,) = err.value.problems
    assert f"{folder.resolve()} has no tokenizer (one of tokenizer.json" in problem
    assert "tokenizer.save_pretrained(folder)" in problem


def test_a_folder_without_config_and_weights_names_both(bpe, tmp_path, offline):
    folder = tmp_path / "only_tokenizer"
    bpe.save_pretrained(folder)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, folder)))
    with pytest.raises(ConfigError) as err:
        model_loading.build_model(cfg, None)
    assert [p.split(": ", 1)[1].split(" (")[0] for p in err.value.problems] == [
        f"{folder.resolve()} has no config.json", f"{folder.resolve()} has no weights"]


@pytest.mark.parametrize("name", ["/no/such/checkpoint", "./no_such_checkpoint", "~/no_such_checkpoint_here"])
def test_a_missing_local_path_is_named_and_never_sent_to_the_hub(name, tmp_path, offline, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, name)))
    with pytest.raises(ConfigError, match="looks like a local path, but .* does not exist"):
        model_loading.build_model(cfg, None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pv.create_gpt2_lm(name)


def test_a_hub_id_still_asks_the_hub(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(model_loading, "hub_unreachable_reason",
                        lambda name, revision: asked.append((name, revision)) or "closed for this test")
    monkeypatch.chdir(tmp_path)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides(tmp_path, "someone/some-model")))
    with pytest.raises(pv.HubUnavailableError, match="'someone/some-model': closed for this test"):
        model_loading.build_model(cfg, None)
    assert asked == [("someone/some-model", "main")]


def test_create_helpers_read_a_folder_offline(bpe, tmp_path, offline):
    model = build("gpt2", bpe)
    folder = save_checkpoint(tmp_path / "ckpt", model, bpe)
    config, tokenizer, loaded = pv.create_gpt2_lm(str(folder))
    assert config.n_layer == LAYERS and tokenizer.tokenize("Mary sang") == ["Mary", "Ġsang"]
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)


# -- tables found by module paths ------------------------------------------------------------


def _interchange(model, component, layer, position, base, source):
    intervenable = pv.IntervenableModel({"layer": layer, "component": component}, model)
    _, out = intervenable({"input_ids": base}, [{"input_ids": source}],
                          {"sources->base": ([[[position]] * 2], [[[position]] * 2])})
    return out.logits


@pytest.mark.parametrize("component, module", [
    ("block_output", lambda block: block),
    ("block_input", lambda block: block),
    ("mlp_output", lambda block: block.mlp),
    ("attention_output", lambda block: block.self_attn),
])
def test_a_discovered_table_patches_what_a_hand_hook_patches(bpe, component, module):
    model = build("phi", bpe)
    table = table_for(model)
    assert table.name == "phi (discovered at model.layers)" and table.causal
    assert sorted(table.components) == ["attention_input", "attention_output", "block_input", "block_output",
                                        "mlp_input", "mlp_output"]
    base = bpe(["John walked because", "Mary sang because"], return_tensors="pt")["input_ids"]
    source = bpe(["Emma cried because", "Paul ran because"], return_tensors="pt")["input_ids"]
    target = module(model.model.layers[1])
    side = "input" if component.endswith("_input") else "output"
    seen = capture(model, target, side, {"input_ids": source})  # (batch, seq, hidden)

    def edit(x):
        x[:, 1] = seen[:, 1]
        return x

    expected = patched_run(model, target, side, {"input_ids": base}, edit).logits
    with torch.no_grad():
        got = _interchange(model, component, 1, 1, base, source)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, model(base).logits)


def test_a_discovered_table_lists_only_what_its_names_show(bpe):
    """OPT keeps its MLP as fc1/fc2 on the block, with no MLP module to hook: no mlp rows."""
    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=32, num_attention_heads=2,
                                     word_embed_proj_dim=HIDDEN, max_position_embeddings=16, **_ids(bpe)))
    table = table_for(model)
    assert table.name == "opt (discovered at model.decoder.layers)"
    assert sorted(table.components) == ["attention_input", "attention_output", "block_input", "block_output"]
    with pytest.raises(ValueError, match="'mlp_output' is not in the opt .* table; allowed: "
                                         r"\['attention_input', 'attention_output', 'block_input', 'block_output'\]"):
        pv.IntervenableModel({"layer": 0, "component": "mlp_output"}, model)


class _Mystery(torch.nn.Module):
    """Blocks under a name no table and no discovery path knows; calling it fails the test."""

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"model_type": "mystery"})()
        self.stack = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    def forward(self, *args, **kwargs):
        raise AssertionError("a forward ran before the missing table was reported")


def test_no_table_and_no_block_list_is_named_before_any_forward():
    with pytest.raises(ConfigError) as err:
        model_loading.number_of_layers(_Mystery())
    (problem,) = err.value.problems
    assert "_Mystery (model_type='mystery') has no architecture table" in problem
    assert "'gpt2'" in problem and "'llama'" in problem and "model.layers, model.decoder.layers, transformer.h" in problem
    assert "register_architecture" in problem


def test_a_folder_of_an_undiscoverable_family_is_refused_before_any_forward(bpe, tmp_path, offline, monkeypatch):
    """Mamba keeps its blocks under backbone.layers, a path discovery does not search."""
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(hidden_size=HIDDEN, state_size=4, num_hidden_layers=LAYERS, expand=2,
                                         conv_kernel=2, **_ids(bpe)))
    folder = save_checkpoint(tmp_path / "ckpt", model, bpe)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran before the missing table was reported")

    monkeypatch.setattr(MambaForCausalLM, "forward", no_forward)
    with pytest.raises(ConfigError, match=r"MambaForCausalLM \(model_type='mamba'\) has no architecture table"):
        run_module.run(cli.check("gender_tiny", overrides(tmp_path, folder)))


@pytest.mark.slow
def test_the_command_line_runs_a_folder_offline(bpe, tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", build("llama", bpe), bpe)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "das_train", "recipe=gender_tiny", *overrides(tmp_path, folder)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_table(tmp_path / "run")) == 6


def test_a_list_of_containers_is_not_taken_for_blocks():
    """An ``nn.ModuleDict`` in ``layers`` is never called itself; a hook on it would never fire."""
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"ff": torch.nn.Linear(4, 4)}) for _ in range(2))
    assert table_for(model) is None
