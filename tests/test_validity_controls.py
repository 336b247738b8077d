"""The validity card's controls: the random-init model (``model.random_init``) and the companion
sweeps (Boundless DAS, random-init DAS) run beside the main sweep in folders of its run directory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from conftest import make_gpt2, make_llama, make_neox
from torch import nn

from das_train import cli
from das_train.core.builtin_models import MLPClassifier, MLPConfig
from das_train.training import config_fingerprint as fingerprints
from das_train.training import model_loading, task_loading
from das_train.training import run as run_module
from das_train.training import run_dir as run_dir_state
from das_train.training.reinit import ReinitError, reinitialize
from das_train.training.schema import ConfigError
from das_train.training.sweep import das_sweep
from das_train.training.validity.companions import (
    COMPANIONS,
    boundless_intervention,
    companion_config,
    companion_configs,
    companion_rows,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)


def _trained_like(model: nn.Module) -> nn.Module:
    """Every weight moved off its initial value, as training moves them (norms' ones too)."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("make", [make_gpt2, make_neox, make_llama], ids=["gpt2", "gpt_neox", "llama"])
def test_every_weight_is_redrawn_in_place(make):
    model = _trained_like(make())
    before = _weights(model)
    places = {name: (p.dtype, p.device, p.shape, p.data_ptr()) for name, p in model.named_parameters()}
    reinitialize(model, seed=5)
    for name, p in model.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} kept its trained values"
        assert (p.dtype, p.device, p.shape, p.data_ptr()) == places[name], name


def test_tied_embeddings_stay_tied():
    model = _trained_like(make_gpt2())
    reinitialize(model, seed=1)
    assert model.lm_head.weight is model.transformer.wte.weight


def _wide_gpt2_config():
    # Wide enough that a norm's sampling spread is ~1%; GPT-2 scales its residual projections'
    # init by 1/sqrt(2 n_layer), which a generic normal(0.02) would miss by a factor of 2.
    return transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=256, n_positions=64)


def _wide_neox_config():
    return transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                                      intermediate_size=256, vocab_size=256, max_position_embeddings=64)


def _norms_agree(model: nn.Module, fresh: nn.Module) -> None:
    """Each tensor's norm within five sampling spreads (about 1/sqrt(2n) of it for n iid values)
    of the fresh model's; constant tensors (norms' ones, zero biases) exactly."""
    fresh_params = dict(fresh.named_parameters())
    for name, p in model.named_parameters():
        got, want = p.norm().item(), fresh_params[name].norm().item()
        tolerance = max(0.03, 5 / (2 * p.numel()) ** 0.5)
        assert got == pytest.approx(want, rel=tolerance, abs=1e-6), f"{name}: norm {got:.4f}, fresh {want:.4f}"


@pytest.mark.parametrize("build", [
    lambda: transformers.GPT2LMHeadModel(_wide_gpt2_config()),
    lambda: transformers.GPTNeoXForCausalLM(_wide_neox_config()),
], ids=["gpt2", "gpt_neox"])
def test_norms_match_a_fresh_model_of_the_config(build):
    torch.manual_seed(0)
    model = _trained_like(build())
    torch.manual_seed(99)
    fresh = build()
    _norms_agree(reinitialize(model, seed=7), fresh)


def test_mlp_is_redrawn_by_its_modules_reset_parameters():
    config = MLPConfig(h_dim=256, n_layer=2, num_classes=2, input_dim=64)
    model = _trained_like(MLPClassifier(config))
    before = _weights(model)
    reinitialize(model, seed=3)
    assert all(not torch.equal(p, before[name]) for name, p in model.named_parameters())
    _norms_agree(model, MLPClassifier(config))


def test_same_seed_same_weights_and_the_callers_rng_untouched():
    first, second, third = (_trained_like(make_neox()) for _ in range(3))
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    reinitialize(first, seed=4)
    assert torch.equal(torch.rand(3), expected)
    reinitialize(second, seed=4)
    reinitialize(third, seed=5)
    a, b, c = _weights(first), _weights(second), _weights(third)
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["gpt_neox.embed_in.weight"], c["gpt_neox.embed_in.weight"])


def test_a_plain_module_without_reset_parameters_is_refused_untouched():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.randn(4))

    model = Scaled()
    before = _weights(model)
    with pytest.raises(ReinitError, match=r"<root> \(Scaled\).*reset_parameters"):
        reinitialize(model, seed=0)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_a_weight_the_architectures_init_leaves_alone_is_named():
    model = _trained_like(make_gpt2())
    model.transformer.extra = nn.Parameter(torch.randn(8))
    with pytest.raises(ReinitError, match="transformer.extra"):
        reinitialize(model, seed=0)


# -- the companion sweeps' configs --------------------------------------------------------------


def _overrides(tmp_path, *extra) -> list[str]:
    return [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none", *extra]


def _config(tmp_path, *extra):
    return run_module.as_run_config(cli.check("gender_tiny", _overrides(tmp_path, *extra)))


def test_companion_configs_are_the_main_one_with_their_changes(tmp_path):
    config = _config(tmp_path, "sweep.random_init_control=true", "sweep.methods=[das,boundless,pca]",
                     "publish.repo_id=me/run", "resume=fresh")
    companions = companion_configs(config)
    assert list(companions) == list(COMPANIONS)
    for name, companion in companions.items():
        assert companion.run_dir == f"{tmp_path}/run/{name}"
        assert companion.sweep.methods == ["das"] and not companion.sweep.random_init_control
        assert companion.publish.repo_id is None and companion.resume == "auto"
        assert companion_configs(companion) == {}
        assert fingerprints.config_fingerprint(companion) != fingerprints.config_fingerprint(config)
        assert (companion.task, companion.sweep.layers, companion.trainer) == (config.task, config.sweep.layers,
                                                                             config.trainer)
    assert companions["random_init"].model == dataclasses.replace(config.model, random_init=True)
    assert companions["random_init"].intervention == config.intervention
    assert companions["boundless"].model == config.model
    # The intervention the command line's intervention=boundless gives, not a second copy of it.
    composed = _config(tmp_path, "intervention=boundless").intervention
    assert companions["boundless"].intervention == composed == boundless_intervention()
    assert composed != config.intervention


def test_random_init_changes_the_fingerprint(tmp_path):
    config = _config(tmp_path)
    redrawn = dataclasses.replace(config, model=dataclasses.replace(config.model, random_init=True))
    assert "model.random_init" in fingerprints.result_settings(config)
    assert fingerprints.config_fingerprint(redrawn) != fingerprints.config_fingerprint(config)


def test_adding_the_random_init_control_or_resamples_keeps_the_main_sweeps_fingerprint(tmp_path):
    """Both only add to what a finished sweep has (a companion of its own, the table's
    intervals), so its sites are resumed rather than trained again."""
    main = fingerprints.config_fingerprint(_config(tmp_path))
    assert fingerprints.config_fingerprint(_config(tmp_path, "sweep.random_init_control=true")) == main
    assert fingerprints.config_fingerprint(_config(tmp_path, "sweep.bootstrap=50")) == main
    assert fingerprints.config_fingerprint(_config(tmp_path, "sweep.methods=[das,pca]")) != main


def test_companions_only_when_asked(tmp_path):
    assert companion_configs(_config(tmp_path, "sweep.methods=[das,pca]")) == {}
    boundless_main = _config(tmp_path, "intervention=boundless", "sweep.methods=[das,boundless]")
    assert companion_configs(boundless_main) == {}
    with pytest.raises(ConfigError, match="'random_init' needs sweep.random_init_control=true"):
        companion_config(boundless_main, "random_init")
    with pytest.raises(ConfigError, match=r"no companion sweep 'vanilla'; allowed: \['boundless', 'random_init'\]"):
        companion_config(boundless_main, "vanilla")


# -- the companions run beside the main sweep -----------------------------------------------------


def _models_seen(monkeypatch) -> list[tuple[bool, dict[str, torch.Tensor]]]:
    """Spies on the sweeps' start: (model.random_init, the weights the probes and fits read)."""
    seen = []
    original = das_sweep.start_sweep

    def spy(config, model, *args, **kwargs):
        seen.append((config.model.random_init, _weights(model)))
        return original(config, model, *args, **kwargs)

    monkeypatch.setattr(das_sweep, "start_sweep", spy)
    return seen


@pytest.mark.slow
def test_companion_sweeps_run_in_their_folders_and_resume(tmp_path, monkeypatch):
    small = ["trainer.max_steps=10", "task.n_train=64", "task.n_val=16", "task.n_test=32", "sweep.probe.max_epochs=2",
             "sweep.layers=[0]", "sweep.positions=[name,last]", "sweep.include_embeddings=false", "sweep.seeds=[0,1]",
             "sweep.random_init_control=true", "sweep.methods=[das,boundless]"]
    config = _config(tmp_path, *small)
    seen = _models_seen(monkeypatch)
    run_dir = run_module.run(cli.check("gender_tiny", _overrides(tmp_path, *small)))
    main = {run_dir_state.site_key(r) for r in run_dir_state.finished_rows(
        run_dir, fingerprints.config_fingerprint(config))}
    assert len(main) == 4
    for name in COMPANIONS:
        rows = companion_rows(config, name)
        assert {run_dir_state.site_key(r) for r in rows} == main, name
        assert (run_dir / name / "config.yaml").is_file() and (run_dir / name / "table.csv").is_file()
    assert [random_init for random_init, _ in seen] == [False, False, True]
    # The random-init sweep's probes and fits read the trained model re-initialised with the seed.
    trained, _ = model_loading.build_model(config, task_loading.load_task("gender", config.task))
    expected = _weights(reinitialize(trained, config.seed))
    assert all(torch.equal(seen[2][1][name], expected[name]) for name in expected)
    assert not torch.equal(seen[0][1]["gpt_neox.embed_in.weight"], expected["gpt_neox.embed_in.weight"])

    retrained = []
    monkeypatch.setattr(das_sweep, "fit_group", lambda *a, **k: retrained.append(a[1]))
    run_module.run(cli.check("gender_tiny", _overrides(tmp_path, *small)))
    assert retrained == []

