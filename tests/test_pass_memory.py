"""``sweep.sites_per_pass=auto``: the autograd memory of a pass, measured, bounds the sites per pass.

The measure (das_train/training/pass_memory.py) is checked against what a real batched pass
keeps for its backward, counted independently with saved-tensor hooks around
MultiSiteDASModule's forward; then the choice it drives, the collection buffers, and the
config's refusals.
"""

from __future__ import annotations

import pytest
import torch
from test_batched_sweep import HIDDEN, LENGTH, batches, neox, pair_rows, site_modules, with_cache
from torch.utils.data import DataLoader

from das_train.training.sweep.multi_site import MultiSiteDASModule
from das_train.training.sweep.pass_memory import (
    saved_bytes_of_forward,
    sites_per_pass_within,
    step_costs,
)
from das_train.training.sweep.prefix_skip import PrefixSkip
from das_train.training.sweep.site_cache import RowBuffer, block_modules, collect_layer

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers.*")]


def kept_for_backward(run, model) -> int:
    """Bytes of distinct storages autograd holds once ``run()`` has returned its output, less
    the ``model``'s own weights and buffers (held anyway)."""
    import weakref

    saved = []

    def pack(tensor):
        alias = tensor.detach()  # no grad_fn: no reference cycle through the graph
        saved.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = run()
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    storages = {}
    for ref in saved:
        tensor = ref()
        if tensor is not None and tensor.untyped_storage().data_ptr() not in weights:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    del output
    return sum(storages.values())


def base_inputs(batch):
    return {"input_ids": batch["base_input_ids"], "attention_mask": batch["base_attention_mask"]}


@pytest.mark.parametrize("layer,component", [(0, "block_input"), (1, "block_output"), (2, "mlp_output")])
def test_the_measure_predicts_what_a_batched_pass_keeps_for_k_sites(layer, component):
    model = neox()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    positions = [1, 2, 3, 4]
    sites = site_modules(model, layer, component, positions, intervention="LowRankRotatedSpaceIntervention",
                         low_rank_dimension=1)
    loader = batches(n=16, batch_size=16)
    acts = collect_layer(model, layer, component, positions, loader)
    batch = with_cache(next(iter(loader)), acts, slice(0, 16))
    multi = MultiSiteDASModule(model, sites, PrefixSkip(model, layer, component, PrefixSkip.output_template(
        model, base_inputs(batch))))
    one_site = saved_bytes_of_forward(model, layer, component, base_inputs(batch))
    real = {k: kept_for_backward(lambda k=k: multi(batch, range(k)), model) for k in (1, 2, 4)}
    # One site: the model's share is measured exactly; the intervention adds its own few
    # (batch, width) tensors, which the measure leaves out (small next to a block's).
    intervention_bound = 6 * 16 * HIDDEN * 4
    assert one_site > 0
    assert one_site <= real[1] <= one_site + intervention_bound, (real, one_site)
    # k sites keep more than one, and never more than k one-site steps (the budget is safe).
    assert real[1] < real[2] < real[4]
    assert real[2] <= 2 * real[1] and real[4] <= 4 * real[1], real


def test_a_site_deeper_in_the_model_keeps_more_and_the_model_stays_as_it_was():
    model = neox()  # freshly built: its weights want gradients
    inputs = base_inputs(next(iter(batches(n=8, batch_size=8))))
    kept = [saved_bytes_of_forward(model, 0, "block_input", inputs)] + [
        saved_bytes_of_forward(model, layer, "block_output", inputs) for layer in range(3)]
    assert kept == sorted(kept, reverse=True) and len(set(kept)) == 4
    assert all(p.requires_grad for p in model.parameters())  # restored after the measure
    costs = step_costs(model, [(2, "block_output"), (0, "block_input"), (2, "block_output")], inputs)
    assert costs == {(2, "block_output"): kept[3], (0, "block_input"): kept[0]}
    # The weights a backward saves are not counted: with one row, every block's weights (which
    # a linear layer's backward keeps) outweigh its activations, yet the measure stays below.
    one_row = base_inputs(next(iter(batches(n=1, batch_size=1))))
    block_weights = sum(p.nbytes for block in block_modules(model, 2) for p in block.parameters())
    assert 0 < saved_bytes_of_forward(model, 0, "block_input", one_row) < block_weights / 2
    # Twice the rows keep more, but at most twice as much (masks and rotary tables are shared).
    bigger = base_inputs(next(iter(batches(n=16, batch_size=16))))
    assert kept[2] < saved_bytes_of_forward(model, 1, "block_output", bigger) <= 2 * kept[2]


def test_sites_per_pass_within_a_budget():
    assert sites_per_pass_within(budget=100, one_site_bytes=30, n_sites=4) == 3
    assert sites_per_pass_within(budget=100, one_site_bytes=10, n_sites=4) == 4  # never more than there are
    assert sites_per_pass_within(budget=10, one_site_bytes=30, n_sites=4) == 1  # never fewer than one
    assert sites_per_pass_within(budget=10, one_site_bytes=0, n_sites=4) == 4  # nothing kept: all at once


def test_row_buffer_fills_one_preallocated_tensor():
    pieces = [torch.arange(6.0).view(3, 2), torch.arange(6.0, 10.0).view(2, 2)]
    buffer = RowBuffer(5)
    for piece in pieces:
        buffer.add(piece)
    assert torch.equal(buffer.result(), torch.cat(pieces))
    short = RowBuffer(6)
    short.add(pieces[0])
    with pytest.raises(ValueError, match="3 rows gathered, 6 announced"):
        short.result()
    with pytest.raises(ValueError, match="more than the 2 rows announced"):
        RowBuffer(2).add(pieces[0])


def test_collect_layer_stores_each_distinct_input_once():
    model = neox()
    rows = pair_rows(6)
    # 20 pairs drawing on 6 sentences: bases cycle through them, sources run the other way.
    pairs = [{**rows[i % 6], "source_input_ids": rows[5 - i % 6]["base_input_ids"],
              "source_attention_mask": rows[5 - i % 6]["base_attention_mask"]} for i in range(20)]
    loader = DataLoader(pairs, batch_size=8, shuffle=False)  # 8 + 8 + 4 pairs
    acts = collect_layer(model, 1, "block_output", [1, 3], loader)
    assert acts.site_table.shape == (6, 2, HIDDEN) and acts.prefix_table.shape == (6, LENGTH, HIDDEN)
    assert acts.base_row.tolist() == [i % 6 for i in range(20)]
    assert acts.source_row.tolist() == [5 - i % 6 for i in range(20)]
    # Per pair, the tables give what running every pair's base and source gives.
    every = {"base": [], "source": [], "prefix": []}
    block = model.gpt_neox.layers[1]
    for batch in loader:
        for side in ("base", "source"):
            seen = {}

            def read_output(module, args, output, seen=seen):
                seen["site"] = output[0] if isinstance(output, tuple) else output

            handle = block.register_forward_hook(read_output)
            with torch.no_grad():
                model(input_ids=batch[f"{side}_input_ids"], attention_mask=batch[f"{side}_attention_mask"])
            handle.remove()
            every[side].append(seen["site"][:, [1, 3]])
            if side == "base":  # a block-output site's prefix is the block's whole output
                every["prefix"].append(seen["site"])
    torch.testing.assert_close(acts.base, torch.cat(every["base"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(acts.source, torch.cat(every["source"]), rtol=0, atol=1e-6)
    torch.testing.assert_close(acts.prefix, torch.cat(every["prefix"]), rtol=0, atol=1e-6)
    lean = collect_layer(model, 1, "block_output", [1, 3], loader, keep_prefix=False)
    assert lean.prefix_table is None and lean.prefix is None
    assert torch.equal(lean.site_table, acts.site_table)


def test_sites_per_pass_is_checked_before_any_work():
    from das_train import cli
    from das_train.training.schema import ConfigError

    for bad in ("sweep.sites_per_pass=some", "sweep.sites_per_pass=0"):
        with pytest.raises(ConfigError, match="'sweep.sites_per_pass' = .* must be a positive number, auto or null"):
            cli.check("gender_tiny", [bad])
    for good in ("sweep.sites_per_pass=auto", "sweep.sites_per_pass=null", "sweep.sites_per_pass=2"):
        cli.check("gender_tiny", [good])
