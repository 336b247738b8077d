"""Bad input is reported before any forward pass, all problems at once, naming key and range."""

from __future__ import annotations

import pytest
import torch
from conftest import ForwardCounter

import das_train as pv


@pytest.fixture
def counted_gpt2(gpt2):
    counter = ForwardCounter(gpt2)
    yield gpt2, counter
    counter.remove()


def test_bad_config_lists_every_problem(gpt2):
    with pytest.raises(ValueError) as err:
        pv.IntervenableModel(
            [
                {"layer": 7, "component": "block_output"},
                {"layer": 0, "component": "mlp"},
                {"layer": 0, "component": "head_key_output", "unit": "pos"},
                {"layer": 0, "component": "block_output", "unit": "heads"},
            ],
            gpt2,
        )
    message = str(err.value)
    assert "layer 7 is out of range for gpt2: allowed 0..1" in message
    assert "component 'mlp' is not in the gpt2 table; allowed:" in message and "'mlp_output'" in message
    assert "unit must be 'h' or 'h.pos', not 'pos'" in message
    assert "unit 'heads' is not allowed; allowed: pos, h, h.pos, t" in message


def test_unknown_representation_key_is_named(gpt2):
    with pytest.raises(ValueError, match=r"unknown RepresentationConfig key\(s\) \['layr'\]"):
        pv.IntervenableModel({"layr": 0}, gpt2)


def test_bad_mode_and_type_count():
    with pytest.raises(ValueError, match="mode='sequential' is not allowed; allowed: \\['parallel', 'serial'\\]"):
        pv.IntervenableConfig([{"layer": 0}], mode="sequential")
    with pytest.raises(ValueError, match="intervention_types has 2 entries for 1 representations"):
        pv.IntervenableConfig([{"layer": 0}], [pv.VanillaIntervention, pv.ZeroIntervention])


def test_bad_call_reports_all_problems_before_any_forward(counted_gpt2, base_source):
    model, counter = counted_gpt2
    base, source = base_source
    im = pv.IntervenableModel(
        [
            {"layer": 0, "component": "block_output"},
            {"layer": 1, "component": "head_value_output", "unit": "h.pos"},
        ],
        model,
    )
    side = [[[9]], ([[7]], [[1]])]  # position 9 of 6; head 7 of 4
    with pytest.raises(pv.LocationError) as err:
        im(base, [source, source], {"sources->base": (side, side)}, subspaces=[[[40]], None])
    message = str(err.value)
    assert "positions [9] out of range; allowed 0..5" in message
    assert "heads [7] out of range; allowed 0..3" in message
    assert "dimension(s) [40] out of range; allowed 0..15" in message
    assert counter.calls == 0


def test_location_shapes_are_checked(counted_gpt2, base_source):
    model, counter = counted_gpt2
    base, source = base_source
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, model)
    with pytest.raises(pv.LocationError, match="every example needs the same, non-zero number of units"):
        im(base, [source], {"sources->base": [[0, 1], [2]]})
    with pytest.raises(pv.LocationError, match="3 per-example lists for a batch of 2"):
        im(base, [source], {"sources->base": [[0], [1], [2]]})
    with pytest.raises(pv.LocationError, match="key 'source_0->base' is not allowed in parallel mode"):
        im(base, [source], {"source_0->base": 1})
    with pytest.raises(pv.LocationError, match="got 3 sources for 1 source groups"):
        im(base, [source, source, source], {"sources->base": 1})
    assert counter.calls == 0


def test_source_batch_and_length_mismatch(counted_gpt2):
    model, counter = counted_gpt2
    im = pv.IntervenableModel({"layer": 0, "component": "block_output"}, model)
    base = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    with pytest.raises(pv.LocationError, match="source batch size 3 differs from the base's 2"):
        im(base, [{"input_ids": torch.ones(3, 5, dtype=torch.long)}], {"sources->base": 1})
    with pytest.raises(pv.LocationError, match="source length 4 differs from base length 5"):
        im(base, [{"input_ids": torch.ones(2, 4, dtype=torch.long)}])
    assert counter.calls == 0


def test_constant_width_and_subspace_partition_errors(counted_gpt2, base_source):
    model, counter = counted_gpt2
    base, _ = base_source
    im = pv.IntervenableModel(
        {"layer": 0, "component": "mlp_output", "intervention_type": pv.AdditionIntervention,
         "subspace_partition": [[0, 8], [8, 16]]},
        model,
    )
    with pytest.raises(pv.LocationError, match="has last dim 5, the site is 16 wide"):
        im(base, unit_locations={"base": 1}, source_representations=torch.zeros(5))
    with pytest.raises(pv.LocationError, match="subspace 2 is not a partition"):
        im(base, unit_locations={"base": 1}, source_representations=torch.zeros(16), subspaces=[2])
    assert counter.calls == 0


def test_gqa_key_heads_are_bounded_by_kv_heads(llama, base_source):
    base, source = base_source
    im = pv.IntervenableModel({"layer": 0, "component": "head_key_output", "unit": "h"}, llama)
    with pytest.raises(pv.LocationError, match=r"heads \[2\] out of range; allowed 0..1"):
        im(base, [source], {"sources->base": 2})
    im(base, [source], {"sources->base": 1})  # the second key/value head is fine


def test_module_path_errors_name_the_path(gpt2):
    with pytest.raises(ValueError, match="has no module 'transformer.h\\[9\\].mlp'"):
        pv.IntervenableModel({"component": "transformer.h[9].mlp.output"}, gpt2)
