"""Bad run configs are refused before any work: before the tiny model is trained, before the
pairs are generated, with one ConfigError that names every problem, its key, its value and
what is allowed. A pair filter that empties a split says so, and what to try."""

from __future__ import annotations

import pytest

import das_train as pv
from das_train import cli
from das_train.training import model_loading
from das_train.training import run as run_module
from das_train.training.schema import ConfigError, RunConfig


def _refuse(*_args, **_kwargs):
    raise AssertionError("work started before the config was checked")


@pytest.fixture
def no_work(monkeypatch):
    """Makes training a model on the spot or generating pairs fail the test."""
    import das_train.data.tiny_lm as tiny_lm
    import das_train.tasks.hierarchical_equality as equality
    from das_train.data.pair_datamodule import PairDataModule

    monkeypatch.setattr(tiny_lm, "train_tiny_lm", _refuse)
    monkeypatch.setattr(equality, "train_model", _refuse)
    monkeypatch.setattr(PairDataModule, "generate", _refuse)


def overrides(tmp_path, *extra):
    return [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none", *extra]


def problems_of(tmp_path, recipe, *extra) -> list[str]:
    """The problems ``run`` reports for ``recipe`` with ``extra`` overrides (composed without
    the CLI's own check, so that run's checks are the ones tested)."""
    cfg = cli.compose(recipe, overrides(tmp_path, *extra))
    with pytest.raises(ConfigError) as err:
        run_module.run(cfg)
    return err.value.problems


def test_every_late_problem_is_reported_at_once_before_training(tmp_path, no_work):
    found = problems_of(
        tmp_path, "gender_tiny", "intervention.type=NoSuchIntervention", "sweep.component=nope",
        "sweep.seeds=[0,0]", "sweep.layers=[2,2]",
    )
    text = "\n".join(found)
    assert "'intervention.type' = 'NoSuchIntervention'" in text and "LowRankRotatedSpaceIntervention" in text
    assert "'sweep.component' = 'nope'" in text and "block_output" in text and "mlp_activation" in text
    assert "'sweep.seeds' = [0, 0]" in text and "repeats 0" in text
    assert "'sweep.layers' = [2, 2]" in text and "repeats 2" in text
    assert len(found) == 4


def test_rank_above_the_site_width_is_refused_with_the_width(tmp_path, no_work):
    found = problems_of(tmp_path, "gender_tiny", "intervention.low_rank_dimension=65", "model.hidden=64")
    assert any("'intervention.low_rank_dimension' = 65" in p and "64" in p for p in found), found


def test_mlp_width_bounds_the_rank(tmp_path, no_work):
    found = problems_of(tmp_path, "hierarchical_equality", "intervention.low_rank_dimension=65", "model.hidden=64")
    assert any("'intervention.low_rank_dimension' = 65" in p for p in found), found


@pytest.mark.parametrize("key", ["sweep.seeds", "sweep.positions", "sweep.layers"])
def test_empty_sweep_lists_are_refused(tmp_path, no_work, key):
    found = problems_of(tmp_path, "gender_tiny", f"{key}=[]")
    assert any(f"'{key}' = []" in p and "empty" in p for p in found), found


def test_out_of_range_layers_and_unknown_positions_before_training(tmp_path, no_work):
    found = problems_of(tmp_path, "gender_tiny", "sweep.layers=[0,9]", "sweep.positions=[nowhere]")
    text = "\n".join(found)
    assert "'sweep.layers'" in text and "[9]" in text and "0..3" in text
    assert "'sweep.positions'" in text and "nowhere" in text


def test_heads_must_divide_the_tiny_model_width(tmp_path, no_work):
    found = problems_of(tmp_path, "gender_tiny", "model.hidden=30", "model.heads=4")
    assert any("'model.hidden' = 30" in p and "model.heads" in p for p in found), found


@pytest.mark.parametrize(("recipe", "key", "extra"), [
    ("gender_tiny", "intervention.lr", []),
    ("gender_tiny", "intervention.temperature_start", ["intervention=boundless"]),
    ("gender_tiny", "intervention.boundary_penalty", []),
    ("gender_tiny", "sweep.probe.lr", []),
    ("gender_tiny", "sweep.probe.weight_decay", []),
    ("causal_tracing", "tracing.noise_scale", []),
    ("steering_tiny", "steering.coefficient", []),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_must_be_finite(recipe, key, extra, value):
    with pytest.raises(ConfigError) as err:
        cli.check(recipe, [*extra, f"{key}={value}"])
    assert any(f"'{key}'" in p and "finite" in p for p in err.value.problems), err.value.problems


def test_steering_coefficient_lists_are_checked_entry_by_entry():
    with pytest.raises(ConfigError, match="finite"):
        cli.check("steering_tiny", ["steering.coefficient=[0.3,nan]"])


def test_cli_check_reports_the_sweep_problems_too(no_work):
    with pytest.raises(ConfigError) as err:
        cli.check("gender_tiny", ["intervention.type=Nope", "sweep.seeds=[]"])
    text = "\n".join(err.value.problems)
    assert "'intervention.type' = 'Nope'" in text and "'sweep.seeds' = []" in text


def test_untrainable_intervention_is_refused(tmp_path, no_work):
    found = problems_of(tmp_path, "gender_tiny", "intervention.type=ZeroIntervention")
    assert any("'intervention.type' = 'ZeroIntervention'" in p and "LowRankRotatedSpaceIntervention" in p
               for p in found), found


def test_problems_of_other_keys_do_not_hide_the_sweep_problems():
    with pytest.raises(ConfigError) as err:
        cli.check("gender_tiny", ["model.hidden=abc", "sweep.seeds=[]", "intervention.type=Nope"])
    text = "\n".join(err.value.problems)
    assert "'model.hidden' = 'abc'" in text and "'sweep.seeds' = []" in text and "'Nope'" in text


def test_a_hub_model_is_checked_right_after_it_loads(tmp_path, monkeypatch, no_work):
    from transformers import GPT2Config, GPT2LMHeadModel

    from das_train.tasks.gender import GenderTask

    tokenizer = GenderTask().build_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    monkeypatch.setattr(model_loading, "load_hub_model", lambda cfg: (model, tokenizer))
    found = problems_of(tmp_path, "gender_tiny", "model.kind=hub", "+model.name=tiny/gpt2",
                        "sweep.component=attention_weights", "sweep.layers=[1,2]",
                        "intervention.low_rank_dimension=40")
    text = "\n".join(found)
    assert "'sweep.component' = 'attention_weights'" in text and "gpt2 models" in text
    assert "[2] out of range" in text and "0..1" in text
    assert len(found) == 2  # the rank is checked once the sites exist


def test_a_hub_model_rank_above_its_width(tmp_path, monkeypatch, no_work):
    from transformers import GPT2Config, GPT2LMHeadModel

    from das_train.tasks.gender import GenderTask

    tokenizer = GenderTask().build_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer)))
    monkeypatch.setattr(model_loading, "load_hub_model", lambda cfg: (model, tokenizer))
    found = problems_of(tmp_path, "gender_tiny", "model.kind=hub", "+model.name=tiny/gpt2",
                        "intervention.low_rank_dimension=40")
    assert found == [p for p in found if "'intervention.low_rank_dimension' = 40" in p and "1..32" in p], found


def test_a_filter_that_empties_a_split_says_what_to_try(tmp_path, monkeypatch):
    from das_train.data.pair_datamodule import PairDataModule

    def wrong_on_every_pair(model, batch, device):
        return batch["base_label"] < 0  # all False: the model is never right

    monkeypatch.setattr(PairDataModule, "_right_on_both", staticmethod(wrong_on_every_pair))
    cfg = cli.compose("gender_tiny", overrides(tmp_path, "model.n_layer=1", "model.max_steps=1",
                                               "task.n_train=16", "task.n_val=8", "task.n_test=8"))
    with pytest.raises(ConfigError) as err:
        run_module.run(cfg)
    text = "\n".join(err.value.problems)
    assert "no train pairs left: 16 generated, 16 dropped" in text
    assert "no test pairs left: 8 generated, 8 dropped" in text
    assert "task.filter_pairs=false" in text and "model.max_steps" in text


@pytest.mark.parametrize("component", ["cell_output", "reset_gate_output", "block_output"])
def test_a_recurrent_model_has_no_sweepable_component(tmp_path, component):
    """Every GRU component needs unit 't', which a sweep cannot give: each is refused, by name,
    with what to use instead (before, the non-cell ones were offered as sweepable)."""
    from das_train.tasks.gender import GenderTask
    from das_train.training.preflight import check_loaded_model

    task = GenderTask()
    tokenizer = task.build_tokenizer()
    _, _, gru = pv.create_gru_lm(pv.GRUConfig(n_layer=1, h_dim=8, vocab_size=len(tokenizer)))
    cfg = cli.compose("gender_tiny", overrides(tmp_path, f"sweep.component={component}"))
    with pytest.raises(ConfigError) as err:
        check_loaded_model(RunConfig.from_data(cfg), gru, task.spec(tokenizer))
    (problem,) = err.value.problems
    assert f"'sweep.component' = {component!r}" in problem and "recurrent" in problem
    assert "unit 't'" in problem and "gpt2" in problem
