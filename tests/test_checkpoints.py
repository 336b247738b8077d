"""Checkpoints: read weights-only, never a dead end when garbage, and a resumed fit equal to the
uninterrupted one (per-site and batched paths)."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import lightning
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_run import fit_by_hand, small_overrides  # noqa: E402

from das_train import cli  # noqa: E402
from das_train.data.pair_datamodule import PairDataModule  # noqa: E402
from das_train.training import checkpoints, model_loading, task_loading  # noqa: E402
from das_train.training import run as run_module  # noqa: E402
from das_train.training.sweep import group_fit  # noqa: E402
from das_train.training.sweep.sites import SweepSite  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

SITE = SweepSite(1, "block_output", 3, "last")
GROUP = [SweepSite(1, "block_output", 1, "name"), SITE]


class Interrupt(Exception):
    pass


class StopAt(lightning.Callback):
    """Cuts a fit off after ``step`` optimizer steps, as a killed job would be."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            raise Interrupt


STEPS, CUT, CHECKPOINTED = 12, 7, 6
"""12 steps of 4 batches an epoch, a checkpoint every 3 steps: cut off at step 7, the fit
resumes from step 6, mid-epoch."""


def gender_run(cache: Path, *extra: str):
    """(cfg, model, datamodule, spec): gender_tiny, 64 training pairs, batches of 16."""
    overrides = small_overrides(cache, f"trainer.max_steps={STEPS}", "trainer.batch_size=16", "task.n_train=64",
                                "task.n_test=32", "sweep.probe.max_epochs=1", *extra)
    cfg = run_module.as_run_config(cli.check("gender_tiny", overrides))
    task = task_loading.load_task("gender")
    model, tokenizer = model_loading.build_model(cfg, task)
    datamodule = PairDataModule(task, tokenizer, n_train=64, n_val=16, n_test=32, batch_size=16, seed=0)
    datamodule.setup()
    return cfg, model, datamodule, datamodule.spec()


@pytest.fixture(scope="module")
def gender(tmp_path_factory):
    return gender_run(tmp_path_factory.mktemp("gender"))


def interrupting(monkeypatch, step: int) -> None:
    real_make_trainer = group_fit.make_trainer

    def make_trainer(*args, **kwargs):
        trainer = real_make_trainer(*args, **kwargs)
        trainer.callbacks.append(StopAt(step))
        return trainer

    monkeypatch.setattr(group_fit, "make_trainer", make_trainer)


def saved_weights(run_dir: Path, site: SweepSite) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "interventions" / f"{site.key}-s0" / "interventions.safetensors"))


def fit_one(gender, run_dir):
    cfg, model, datamodule, spec = gender
    return fit_by_hand(cfg, model, datamodule, spec, [(SITE, 0)], run_dir, batched=False)


def fit_batched(gender, run_dir):
    cfg, model, datamodule, spec = gender
    return fit_by_hand(cfg, model, datamodule, spec, [(site, 0) for site in GROUP], run_dir)


@pytest.mark.parametrize("fit, version", [(fit_one, f"{SITE.key}-s0"), (fit_batched, "block_output-L1-name+last-s0")],
                         ids=["per_site", "batched"])
def test_a_resumed_fit_ends_where_the_uninterrupted_fit_ends(gender, tmp_path, monkeypatch, fit, version):
    steps_per_epoch = len(gender[2].train_dataloader())
    assert CHECKPOINTED > steps_per_epoch and CHECKPOINTED % steps_per_epoch  # mid-epoch, after an epoch
    whole = fit(gender, tmp_path / "whole")

    interrupting(monkeypatch, CUT)
    with pytest.raises(Interrupt):
        fit(gender, tmp_path / "cut")
    checkpoint = tmp_path / "cut" / "checkpoints" / version / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == CHECKPOINTED
    monkeypatch.undo()
    resumed = fit(gender, tmp_path / "cut")

    for a, b in zip(whole, resumed):
        assert a["iia"] == pytest.approx(b["iia"], abs=1e-6)
    for site in (GROUP if len(whole) == 2 else [SITE]):
        expected, got = saved_weights(tmp_path / "whole", site), saved_weights(tmp_path / "cut", site)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)


def test_checkpoints_load_weights_only_also_with_the_boundless_callbacks_state(tmp_path, monkeypatch):
    cfg, model, datamodule, spec = gender_run(tmp_path, "intervention=boundless")
    fits = []
    real_fit = lightning.Trainer.fit

    def spy(trainer, *args, **kwargs):
        fits.append(kwargs)
        return real_fit(trainer, *args, **kwargs)

    interrupting(monkeypatch, CUT)
    with pytest.raises(Interrupt):
        fit_by_hand(cfg, model, datamodule, spec, [(SITE, 0)], tmp_path, batched=False)
    checkpoint = tmp_path / "checkpoints" / f"{SITE.key}-s0" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)  # hparams, loops, optimizer, callbacks
    assert {"hyper_parameters", "loops", "optimizer_states", "callbacks"} <= set(saved)
    assert any("ModelCheckpoint" in name for name in saved["callbacks"])
    assert checkpoints.unusable_reason(checkpoint) is None
    monkeypatch.undo()
    monkeypatch.setattr(lightning.Trainer, "fit", spy)
    fit_by_hand(cfg, model, datamodule, spec, [(SITE, 0)], tmp_path, batched=False)
    # The DAS fit is the last: the probes' fits come before it.
    assert fits[-1]["weights_only"] is True and fits[-1]["ckpt_path"] == str(checkpoint)


RAN = []


def run_code():
    RAN.append("ran")
    return {}


class Payload:
    def __reduce__(self):
        return run_code, ()


def random_bytes(path: Path) -> None:
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())


def truncated(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(100)}, "loops": {}, "optimizer_states": [], "global_step": 7,
                "epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:300])


def zip_without_keys(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a checkpoint")


def torch_file_without_keys(path: Path) -> None:
    torch.save({"state_dict": {}}, path)


def pickled_code(path: Path) -> None:
    torch.save({"state_dict": {}, "loops": Payload(), "optimizer_states": [], "global_step": 1, "epoch": 0},
               path, _use_new_zipfile_serialization=True)


@pytest.mark.parametrize("write", [random_bytes, truncated, zip_without_keys, torch_file_without_keys, pickled_code])
def test_an_unusable_checkpoint_is_named_moved_aside_and_never_run(tmp_path, write):
    last = tmp_path / "last.ckpt"
    write(last)
    with pytest.warns(RuntimeWarning, match=f"checkpoint {last} is unusable.*training from scratch"):
        assert checkpoints.resumable_checkpoint(tmp_path) is None
    assert not last.exists()
    assert [p.name.startswith("last.ckpt.corrupt-") for p in tmp_path.iterdir()] == [True]
    assert RAN == []


def test_a_fit_over_a_garbage_checkpoint_trains_from_scratch(gender, tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints" / f"{SITE.key}-s0"
    ckpt_dir.mkdir(parents=True)
    random_bytes(ckpt_dir / "last.ckpt")
    fits = []
    real_fit = lightning.Trainer.fit
    monkeypatch.setattr(lightning.Trainer, "fit", lambda trainer, *a, **k: fits.append(k) or real_fit(trainer, *a, **k))
    with pytest.warns(RuntimeWarning, match="last.ckpt is unusable"):
        (row,) = fit_one(gender, tmp_path)
    assert fits[-1]["ckpt_path"] is None and fits[-1]["weights_only"] is True  # the probes' fits come first
    assert trained_for(row) and (tmp_path / "interventions" / f"{SITE.key}-s0" / "config.json").is_file()


def trained_for(row) -> bool:
    return 0.0 <= row["iia"] <= 1.0 and row["test_pairs"] > 0
