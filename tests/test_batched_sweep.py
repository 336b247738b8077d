"""The cached and batched sweep path against the plain per-site path.

The batched path (das_train/training/sweep/: site_cache.py, multi_site.py, group_fit.py) must give
the numbers the per-site path gives: the same logits for the same interventions, the same
trained parameters and IIA, the same probe accuracies. These tests check each piece against
the plain computation, then a whole small sweep both ways.
"""

from __future__ import annotations

import lightning
import pytest
import torch
import transformers
from conftest import random_pair_rows
from torch.utils.data import DataLoader

from das_train.training.das_module import DASModule
from das_train.training.probe import collect_activations, fit_probe, fit_probes
from das_train.training.probe_results import probe_with_control
from das_train.training.sweep import cached_pairs as sweep_pairs
from das_train.training.sweep import group_fit
from das_train.training.sweep.multi_site import (
    CACHED_PREFIX,
    CACHED_SOURCES,
    MultiSiteDASModule,
    row_of,
)
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.probes import probe_waves, sweep_probes
from das_train.training.sweep.site_cache import (
    DistinctInputs,
    batched_sites_supported,
    block_modules,
    collect_base_sites,
    collect_layer,
)
from das_train.training.sweep.sites import SweepSite

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*but have no `val_dataloader`.*"),
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:.*ModelCheckpoint with manual optimization.*"),
]

VOCAB, LENGTH, HIDDEN, LAYERS = 40, 5, 32, 3


def neox():
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0, eos_token_id=0)).eval()


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=LAYERS, n_embd=HIDDEN, n_head=4, vocab_size=VOCAB, n_positions=16,
        bos_token_id=0, eos_token_id=0)).eval()


def llama():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=16, bos_token_id=0,
        eos_token_id=0)).eval()


MAKERS = {"neox": neox, "gpt2": gpt2, "llama": llama}


def pair_rows(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    return random_pair_rows(n, seed, VOCAB, LENGTH, control_classes=3)


def batches(n: int = 24, batch_size: int = 8) -> DataLoader:
    return DataLoader(pair_rows(n), batch_size=batch_size, shuffle=False)


def with_cache(batch, acts, rows: slice):
    return {**batch, CACHED_PREFIX: acts.prefix[rows], CACHED_SOURCES: acts.source[rows]}


# -- the frozen prefix --------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(MAKERS))
@pytest.mark.parametrize("layer", [0, 1, 2])
@pytest.mark.parametrize("component", ["mlp_output", "block_output"])
def test_running_from_a_cached_prefix_gives_the_full_forward_and_skips_the_blocks_below(family, layer, component):
    """An MLP-output site starts at its block's cached input; a block-output site starts above
    its block, on the block's cached output."""
    model = MAKERS[family]()
    batch = next(iter(batches()))
    inputs = {"input_ids": batch["base_input_ids"], "attention_mask": batch["base_attention_mask"]}
    acts = collect_layer(model, layer, component, [1, 3], [batch])
    with torch.no_grad():
        full = model(**inputs).logits
    template = PrefixSkip.output_template(model, inputs)
    assert template is not None
    skip = PrefixSkip(model, layer, component, template)
    assert skip.after_block == (component == "block_output")
    calls = []
    counters = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in
                enumerate(block_modules(model, LAYERS - 1))]
    try:
        with torch.no_grad(), skip.active(acts.prefix):
            skipped = model(**inputs).logits
    finally:
        for handle in counters:
            handle.remove()
    torch.testing.assert_close(skipped, full, atol=1e-5, rtol=1e-5)
    assert calls == list(range(LAYERS))  # the skipped blocks are called, but as pass-throughs
    # After the context every block computes again: a different prefix changes nothing now.
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, full)


@pytest.mark.parametrize("component,computing", [("mlp_output", 1), ("block_output", 2)])
def test_skipped_blocks_do_not_compute(component, computing):
    """Layer 2's MLP output needs block 2 to run; its block output needs no block at all."""
    model = neox()
    batch = next(iter(batches()))
    inputs = {"input_ids": batch["base_input_ids"], "attention_mask": batch["base_attention_mask"]}
    acts = collect_layer(model, 2, component, [0], [batch])
    with torch.no_grad():
        full = model(**inputs).logits
    skip = PrefixSkip(model, 2, component, PrefixSkip.output_template(model, inputs))
    with torch.no_grad():
        for block in block_modules(model, computing):
            for p in block.parameters():
                p.mul_(float("nan"))  # any use of a skipped block's weights would show up
        with skip.active(acts.prefix):
            skipped = model(**inputs).logits
    # Block 2 itself is poisoned only where it is skipped, so this equality is the whole check.
    if computing == 1:
        assert not torch.isnan(skipped).any()
    torch.testing.assert_close(skipped, full, atol=1e-5, rtol=1e-5)


def test_collected_activations_are_what_plain_hooks_see():
    model = neox()
    loader = batches()
    acts = collect_layer(model, 1, "mlp_output", [1, 4], loader)
    seen = {"prefix": [], "base": [], "source": []}
    block, mlp = model.gpt_neox.layers[1], model.gpt_neox.layers[1].mlp
    out: dict[str, torch.Tensor] = {}

    def read_block_input(module, args, kwargs):
        out["prefix"] = (args[0] if args else kwargs["hidden_states"]).clone()

    def read_mlp_output(module, args, output):
        out["site"] = output.clone()

    for batch in loader:
        for side in ("base", "source"):
            h1 = block.register_forward_pre_hook(read_block_input, with_kwargs=True)
            h2 = mlp.register_forward_hook(read_mlp_output)
            with torch.no_grad():
                model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"])
            h1.remove()
            h2.remove()
            seen[side].append(out["site"][:, [1, 4]])
            if side == "base":
                seen["prefix"].append(out["prefix"])
    assert torch.equal(acts.prefix, torch.cat(seen["prefix"]))
    assert torch.equal(acts.base, torch.cat(seen["base"]))
    assert torch.equal(acts.source, torch.cat(seen["source"]))


# -- several sites in one pass ------------------------------------------------------------------

def site_modules(model, layer, component, positions, seed=0, **options):
    sites = []
    for position in positions:
        lightning.seed_everything(seed, verbose=False)
        sites.append(DASModule(model, layer=layer, component=component, position=position, **options))
    return sites


@pytest.mark.parametrize("family", sorted(MAKERS))
@pytest.mark.parametrize("layer,component", [(0, "block_input"), (1, "block_output"), (2, "mlp_output"),
                                             (1, "attention_output")])
def test_batched_sites_give_each_site_its_own_intervened_logits(family, layer, component):
    model = MAKERS[family]()
    positions = [0, 2, -1]  # a position from the end, as a task may name the last token
    sites = site_modules(model, layer, component, positions, intervention="RotatedSpaceIntervention",
                         low_rank_dimension=4)
    with torch.no_grad():  # random rotations, so every site's edit shows in its logits
        for site in sites:
            site.intervention.rotate_layer.weight = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN))[0]
    loader = batches()
    acts = collect_layer(model, layer, component, positions, loader)
    first = next(iter(loader))
    inputs = {"input_ids": first["base_input_ids"], "attention_mask": first["base_attention_mask"]}
    multi = MultiSiteDASModule(model, sites, PrefixSkip(model, layer, component,
                                                        PrefixSkip.output_template(model, inputs)))
    start = 0
    for batch in loader:
        rows = slice(start, start + len(batch["base_input_ids"]))
        start = rows.stop
        with torch.no_grad():
            together = multi(with_cache(batch, acts, rows))  # (sites, batch, vocab)
            for k, site in enumerate(sites):
                alone = site(batch)
                torch.testing.assert_close(together[k], alone, atol=1e-5, rtol=1e-5)
            # The last position's edit always reaches the logits: the comparison is not vacuous.
            clean = model(input_ids=batch["base_input_ids"], attention_mask=batch["base_attention_mask"]).logits
            assert not torch.allclose(together[-1], clean[:, -1], atol=1e-4)


@pytest.mark.parametrize("sites_per_pass", [None, 2, 1])
def test_batched_training_takes_the_per_site_steps(sites_per_pass):
    """Summed per-site losses + Adam = each site trained alone: parameters and IIA agree,
    also when a step's sites are split over several passes (gradients accumulated)."""
    model = neox()
    positions = [1, 2, 3]
    loader = batches(n=32)
    options = dict(intervention="LowRankRotatedSpaceIntervention", low_rank_dimension=2, lr=0.05)

    def trainer():
        return lightning.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False,
                                 enable_model_summary=False, num_sanity_val_steps=0)

    alone = site_modules(model, 1, "block_output", positions, **options)
    for site in alone:
        trainer().fit(site, loader)
    iia_alone = [site.iia(loader) for site in alone]

    together = site_modules(model, 1, "block_output", positions, **options)
    acts = collect_layer(model, 1, "block_output", positions, loader)
    first = next(iter(loader))
    template = PrefixSkip.output_template(model, {"input_ids": first["base_input_ids"]})
    multi = MultiSiteDASModule(model, together, PrefixSkip(model, 1, "block_output", template),
                               sites_per_pass=sites_per_pass)
    assert len(multi.passes) == {None: 1, 2: 2, 1: 3}[sites_per_pass]
    # batch_size=None: the list already holds whole batches.
    cached = DataLoader([with_cache(b, acts, slice(i * 8, i * 8 + 8)) for i, b in enumerate(loader)], batch_size=None)
    trainer().fit(multi, cached)
    for a, t in zip(alone, together):
        torch.testing.assert_close(t.intervention.rotate_layer.weight, a.intervention.rotate_layer.weight,
                                   atol=1e-5, rtol=1e-4)
    tested = trainer().test(multi, cached, verbose=False)[0]
    assert [tested[f"test/iia/{k}"] for k in range(3)] == pytest.approx(iia_alone, abs=1e-9)
    # Training moved the weights away from their start (the comparison is not vacuous).
    fresh = site_modules(model, 1, "block_output", positions, **options)
    assert not torch.allclose(fresh[0].intervention.rotate_layer.weight,
                              together[0].intervention.rotate_layer.weight, atol=1e-3)


def test_untrained_sites_are_tested_but_neither_trained_nor_given_to_the_optimizer():
    """``trained`` leaves the other sites out of the training passes, the optimizer and DDP's
    reducer (no gradient), and a test before training leaves the cached write indices usable
    by a training step (indices made under inference mode cannot be saved for a backward)."""
    model = neox()
    positions = [0, 2, 3]
    sites = site_modules(model, 1, "block_output", positions, intervention="LowRankRotatedSpaceIntervention",
                         low_rank_dimension=2)
    loader = batches(n=16)
    acts = collect_layer(model, 1, "block_output", positions, loader)
    first = next(iter(loader))
    template = PrefixSkip.output_template(model, {"input_ids": first["base_input_ids"]})
    multi = MultiSiteDASModule(model, sites, PrefixSkip(model, 1, "block_output", template), trained=[1, 2])
    assert multi.passes == [[0, 1, 2]] and multi.training_passes == [[1, 2]]
    assert not any(p.requires_grad for p in sites[0].intervention.parameters())
    assert all(p.requires_grad for k in (1, 2) for p in sites[k].intervention.parameters())
    optimized = {id(p) for group in multi.configure_optimizers().param_groups for p in group["params"]}
    assert optimized == {id(p) for k in (1, 2) for p in sites[k].intervention.parameters()}
    batch = with_cache(first, acts, slice(0, 8))
    with torch.inference_mode():
        multi(batch, [1, 2])  # a test first: its indices are inference tensors
    logits = multi(batch, [1, 2])
    multi.site_losses(logits, first["counterfactual_label"]).sum().backward()
    assert sites[1].intervention.rotate_layer.parametrizations.weight.original.grad is not None
    with pytest.raises(ValueError, match="out of range"):
        MultiSiteDASModule(model, sites, None, trained=[3])


def test_unsupported_sites_say_why():
    model = neox()
    assert batched_sites_supported(model, 1, "block_output") is None
    reason = batched_sites_supported(model, 1, "head_attention_value_output")
    assert reason is not None and "slice" in reason


# -- stacked probes -----------------------------------------------------------------------------

def test_stacked_probes_equal_probes_fitted_one_by_one():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (120,), generator=gen)
    # Three sites: informative, weakly informative, noise.
    signal = torch.nn.functional.one_hot(labels, 8).float()
    acts = torch.stack([signal * 3 + torch.randn(120, 8, generator=gen),
                        signal * 0.5 + torch.randn(120, 8, generator=gen),
                        torch.randn(120, 8, generator=gen) * 4 + 1])
    options = {"max_epochs": 5, "batch_size": 32, "lr": 0.05, "seed": 3}
    together = fit_probes(acts, labels, 3, **options)
    alone = [fit_probe(a, labels, 3, **options) for a in acts]
    assert together == pytest.approx(alone, abs=1e-9)
    assert together[0] > 0.9 and together[2] < 0.6


def test_probes_read_through_a_table_of_distinct_rows_equal_probes_on_the_rows_themselves():
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(2, 30, 8, generator=gen)  # 2 sites x 30 distinct inputs
    rows = torch.randint(0, 30, (150,), generator=gen)  # 150 pairs drawing on them
    labels = (table[0, rows, 0] > 0).long()  # site 0 carries the label in feature 0
    options = {"max_epochs": 4, "batch_size": 32, "lr": 0.05, "seed": 5}
    through_table = fit_probes(table, labels, 2, rows=rows, **options)
    copied = fit_probes(table[:, rows], labels, 2, **options)
    assert through_table == pytest.approx(copied, abs=1e-9)
    assert through_table[0] > 0.9


def test_the_probe_collection_reads_every_site_in_one_forward_per_chunk():
    model = neox()
    loader = batches(n=20, batch_size=8)
    sites = [(0, "block_input", 1), (1, "block_output", 3), (2, "mlp_activation", 2), (1, "block_output", 0),
             (2, "mlp_output", 4)]
    forwards = []
    handle = model.gpt_neox.embed_in.register_forward_hook(lambda *a: forwards.append(1))
    bases = DistinctInputs(loader, True, sides=("base",))
    groups = collect_base_sites(model, sites, bases)
    rows = bases.row["base"]
    handle.remove()
    assert len(forwards) == 3  # 20 distinct bases in chunks of 8, each read at every site at once
    # One (S, U, w) table per width: the MLP activation is 64 wide, the rest 32.
    assert [(members, table.shape) for members, table in groups] == [
        ([0, 1, 3, 4], (4, 20, HIDDEN)), ([2], (1, 20, 64))]
    for members, table in groups:
        for k, i in enumerate(members):
            layer, component, position = sites[i]
            alone = collect_layer(model, layer, component, [position], loader)
            torch.testing.assert_close(table[k, rows], alone.base[:, 0], rtol=0, atol=1e-6)


def test_probe_waves_keep_each_wave_within_the_budget_and_the_sites_in_order():
    model = neox()  # hidden 32: a site's table of 100 rows is 12,800 bytes
    sites = [(layer, "block_output", p) for layer in range(3) for p in (0, 1)]
    assert probe_waves(model, sites, 100, 1e9) == [sites]
    assert probe_waves(model, sites, 100, 2 * 12_800) == [sites[0:2], sites[2:4], sites[4:6]]
    assert probe_waves(model, sites, 100, 1.0) == [[site] for site in sites]  # over budget: alone


def test_sweep_probes_in_waves_equal_sweep_probes_at_once(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import small_gender_run

    cfg, model, datamodule, spec = small_gender_run(tmp_path)
    jobs = [(SweepSite(layer, "block_output", p, name), 0)
            for layer in (0, 1) for p, name in ((1, "name"), (3, "last"))]
    forwards = []
    handle = model.get_input_embeddings().register_forward_hook(lambda *a: forwards.append(1))
    at_once = sweep_probes(cfg.sweep.probe, model, spec, jobs, sweep_pairs.SplitReader(datamodule, spec.is_language_model_task))
    chunks = len(forwards)
    cfg.sweep.probe.tables_mib = 1e-6  # every site its own wave
    in_waves = sweep_probes(cfg.sweep.probe, model, spec, jobs, sweep_pairs.SplitReader(datamodule, spec.is_language_model_task))
    handle.remove()
    assert len(forwards) - chunks == 4 * chunks  # one pass over the distinct bases per wave
    assert in_waves.keys() == at_once.keys() and len(at_once) == 4
    for key in at_once:
        assert in_waves[key] == at_once[key], key


def test_sweep_probes_equal_each_probe_fitted_alone_on_activations_collected_pair_by_pair(tmp_path):
    """One way to fit probes for both fits: a site the cache reads (a block output) and one it
    cannot (the query columns of NeoX's fused qkv, collected by an IntervenableModel), each on
    its table of distinct bases, give exactly the probe fitted on that site's activations
    collected from the training loader batch by batch."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import small_gender_run

    cfg, model, datamodule, spec = small_gender_run(tmp_path)
    sites = [SweepSite(1, "block_output", 3, "last"), SweepSite(1, "query_output", 1, "name")]
    assert batched_sites_supported(model, 1, "block_output") is None
    assert batched_sites_supported(model, 1, "query_output") is not None
    jobs = [(site, seed) for site in sites for seed in (0, 1)]
    probes = sweep_probes(cfg.sweep.probe, model, spec, jobs, sweep_pairs.SplitReader(datamodule, spec.is_language_model_task))
    assert len(probes) == 4
    for site, seed in jobs:
        activations, variables, controls = collect_activations(
            model, site.layer, site.component, site.position, datamodule.ordered_dataloader("train"))
        alone = probe_with_control(activations, variables, controls, n_classes=spec.variable_values,
                                   lr=cfg.sweep.probe.lr, weight_decay=cfg.sweep.probe.weight_decay,
                                   max_epochs=cfg.sweep.probe.max_epochs, seed=seed)
        assert probes[(site.layer, site.component, site.position, seed)] == alone, (site, seed)


def test_a_sweeps_splits_are_read_once_and_give_what_their_loaders_give(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import small_gender_run

    cfg, model, datamodule, spec = small_gender_run(tmp_path)
    splits = sweep_pairs.SplitReader(datamodule, spec.is_language_model_task)
    for split in ("train", "test"):
        loader = datamodule.ordered_dataloader(split)
        read = sweep_pairs.split_columns(loader)
        columns = splits.columns(split)
        assert columns.keys() == read.keys() and "source_input_ids" in columns
        assert all(torch.equal(columns[name], read[name]) for name in read)
        assert splits.columns(split) is columns  # read once
        found, direct = splits.inputs(split), DistinctInputs(loader, spec.is_language_model_task)
        assert splits.inputs(split) is found
        assert found.count == direct.count and found.batch_size == direct.batch_size == loader.batch_size
        assert all(torch.equal(found.row[side], direct.row[side]) for side in ("base", "source"))
        for a, b in zip(found.chunks(), direct.chunks(), strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        # A collection from the inputs found once is the collection from the loader.
        once = collect_layer(model, 1, "block_output", [1, 3], found)
        again = collect_layer(model, 1, "block_output", [1, 3], loader)
        assert torch.equal(once.site_table, again.site_table) and torch.equal(once.prefix_table, again.prefix_table)
    bases = splits.inputs("train", sides=("base",))
    assert set(bases.row) == {"base"} and bases.count <= splits.inputs("train").count
    with pytest.raises(ValueError, match="both sides"):
        collect_layer(model, 1, "block_output", [1], bases)
    # Training batches carry no source inputs and no probe labels: the cache stands for them.
    pairs = sweep_pairs.cached_pairs(splits.columns("train"), collect_layer(model, 1, "block_output", [1],
                                                                              splits.inputs("train")))
    assert set(pairs.columns) == {"base_input_ids", "base_attention_mask", "counterfactual_label"}


def test_a_sites_row_counts_positions_from_the_end_and_refuses_one_out_of_range():
    assert row_of(-1, 4) == 3 and row_of(2, 4) == 2 and row_of(None, 1) == 0
    with pytest.raises(IndexError, match="position 4 out of range for a sequence of 4"):
        row_of(4, 4)


# -- a whole sweep both ways --------------------------------------------------------------------

def test_a_small_sweep_batched_equals_the_per_site_sweep(tmp_path):
    """gender_tiny, three layer groups (embedding row, L0, L2) x two positions, batched with
    ``sites_per_pass`` auto (the default: one site per pass low down, both together at L2) and
    all in one pass: the same IIA, probe and control accuracies, and trained rotations equal to
    float rounding."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import small_sweep

    ways = {"auto": ["sweep.batched=true"], "one_pass": ["sweep.batched=true", "sweep.sites_per_pass=null"],
            "per_site": ["sweep.batched=false"]}
    results = {way: small_sweep(tmp_path, way, "sweep.layers=[0,2]", "sweep.positions=[name,last]", *chosen,
                                "trainer.max_steps=30")
               for way, chosen in ways.items()}
    rows_p, weights_p = results["per_site"]
    for way in ("auto", "one_pass"):
        rows_b, weights_b = results[way]
        assert len(rows_b) == len(rows_p) == 6
        for b, p in zip(rows_b, rows_p):
            for key in ("layer", "component", "position", "seed", "iia", "probe_accuracy", "control_accuracy"):
                assert b[key] == p[key], (way, key, b, p)
        assert weights_b.keys() == weights_p.keys() and len(weights_b) == 6
        for name in weights_b:
            for key in weights_b[name]:
                torch.testing.assert_close(weights_b[name][key], weights_p[name][key], atol=1e-5, rtol=1e-4)
    assert len({row["iia"] for row in rows_p}) > 1  # the sites differ: not one result copied around


def test_a_cut_off_group_fit_resumes_from_its_checkpoint(tmp_path, monkeypatch, caplog):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_run import fit_by_hand, small_gender_run

    class Interrupt(Exception):
        pass

    class StopAt(lightning.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step >= 25:
                raise Interrupt

    cfg, model, datamodule, spec = small_gender_run(tmp_path)
    sites = [SweepSite(1, "block_output", 1, "name"), SweepSite(1, "block_output", 3, "last")]
    real_make_trainer = group_fit.make_trainer

    def interrupted(*args, **kwargs):
        trainer = real_make_trainer(*args, **kwargs)
        trainer.callbacks.append(StopAt())
        return trainer

    monkeypatch.setattr(group_fit, "make_trainer", interrupted)
    with pytest.raises(Interrupt):
        fit_by_hand(cfg, model, datamodule, spec, [(site, 0) for site in sites], tmp_path)
    checkpoint = tmp_path / "checkpoints" / "block_output-L1-name+last-s0" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 20
    monkeypatch.setattr(group_fit, "make_trainer", real_make_trainer)
    with caplog.at_level("INFO", logger="das_train"):
        rows = fit_by_hand(cfg, model, datamodule, spec, [(site, 0) for site in sites], tmp_path)
    assert "resuming from" in caplog.text
    assert [row["position_name"] for row in rows] == ["name", "last"]
    assert all(0.0 <= row["iia"] <= 1.0 and row["test_pairs"] == 64 for row in rows)
    assert not checkpoint.exists()  # cleaned once the rows exist
