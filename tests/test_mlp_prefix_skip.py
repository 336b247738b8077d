"""The batched sweep on an MLP whose first block widens its input (hierarchical_equality's
16-wide input, 64-wide hidden layers): the cached prefix replaces a stand-in of another width.

Before the fix, the prefix skip refused every such group with "cached prefix of shape (256, 1,
64) does not match the block's (256, 1, 16)", so ``recipe=hierarchical_equality`` crashed
unless ``sweep.batched=false``.
"""

from __future__ import annotations

import csv

import pytest
import torch

import das_train as pv
from das_train import cli
from das_train.training import run as run_module
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import collect_layer

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)


@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("component", ["block_input", "block_output"])
def test_a_widening_mlp_runs_from_its_cached_prefix_as_in_full(layer, component):
    _, _, model = pv.create_mlp_classifier(pv.MLPConfig(h_dim=12, n_layer=3, input_dim=5), seed=0)
    model.eval()
    inputs = torch.randn(6, 1, 5)
    batch = {"base_inputs_embeds": inputs, "source_inputs_embeds": inputs.flip(0)}
    acts = collect_layer(model, layer, component, [None], [batch], is_language_model_task=False)
    template = PrefixSkip.output_template(model, {"inputs_embeds": inputs})
    with torch.no_grad():
        full = model(inputs_embeds=inputs).logits
        with PrefixSkip(model, layer, component, template).active(acts.prefix):
            skipped = model(inputs_embeds=inputs).logits
    torch.testing.assert_close(skipped, full)
    with pytest.raises(ValueError, match="in rows and positions"), torch.no_grad():
        with PrefixSkip(model, layer, component, template).active(acts.prefix[:3]):
            model(inputs_embeds=inputs)


def _rows(tmp_path, name, *extra):
    overrides = [f"run_dir={tmp_path / name}", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none",
                 "trainer.max_steps=15", "task.n_train=512", "task.n_val=64", "task.n_test=256",
                 "trainer.batch_size=64", "sweep.probe.max_epochs=2", *extra]
    run_dir = run_module.run(cli.check("hierarchical_equality", overrides))
    with (run_dir / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # minutes on 2 shared cores: the per-site path fits each probe alone
def test_hierarchical_equality_batched_equals_per_site(tmp_path):
    batched = _rows(tmp_path, "batched", "sweep.batched=true")
    per_site = _rows(tmp_path, "per_site", "sweep.batched=false")
    assert [r["layer"] for r in batched] == ["0", "1", "2"]
    for b, p in zip(batched, per_site, strict=True):
        for key in ("layer", "position", "seed", "probe_accuracy", "control_accuracy", "test_pairs"):
            assert b[key] == p[key], key
        assert float(b["iia"]) == pytest.approx(float(p["iia"]), abs=1e-6)
