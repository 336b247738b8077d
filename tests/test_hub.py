"""Publishing trained interventions: save/load round trips, the model card, and the Hub calls.

The Hub is never contacted: ``huggingface_hub.HfApi`` and ``snapshot_download`` are replaced by
fakes that record their calls and copy folders on disk, and the offline test relies on
``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import huggingface_hub
import pytest
import torch
import yaml
from conftest import make_gpt2
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects

import das_train as pv
from das_train import hub
from das_train.core.loaders import HubUnavailableError
from das_train.training import reports

FINGERPRINT = "3f9a1c0e5b7d2468ace13579bdf02468ace13579bdf02468ace13579bdf02468"
TABLE = (
    "| site | position | IIA | probe acc. | control acc. | selectivity | seeds |\n"
    "|---|---|---|---|---|---|---|\n"
    "| L1 | last (5) | 0.984 | 1.000 | 0.512 | 0.488 | 1 |\n"
)
LOCATIONS = {"sources->base": ([[[1], [2]], None], [[[1], [2]], [[3], [4]]])}


def trained_intervenable(model: torch.nn.Module) -> pv.IntervenableModel:
    """A rank-2 DAS intervention with moved (trained-looking) weights, plus a constant addition."""
    im = pv.IntervenableModel(
        [
            {"layer": 0, "component": "block_output", "intervention_type": pv.LowRankRotatedSpaceIntervention,
             "low_rank_dimension": 2},
            {"layer": 1, "component": "mlp_output", "intervention_type": pv.AdditionIntervention,
             "source_representation": torch.linspace(-1, 1, 16)},
        ],
        model,
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in im.interventions[im.sorted_keys[0]].parameters():
            param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return im


def logits(im: pv.IntervenableModel, base_source) -> torch.Tensor:
    base, source = base_source
    with torch.no_grad():
        _, out = im(base, [source, None], LOCATIONS)
    return out.logits


def small_png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.imshow([[0.0, 1.0], [1.0, 0.0]])
    fig.savefig(path, dpi=20)
    plt.close(fig)
    return path


def front_matter(readme: str) -> dict[str, Any]:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def full_card(heatmap: Path) -> hub.ModelCard:
    return hub.ModelCard(
        recipe="gender_pythia", base_model="EleutherAI/pythia-6.9b", base_model_revision="step143000",
        model_class="GPTNeoXForCausalLM", task="gender", dataset_seed=7, dataset_fingerprint=FINGERPRINT,
        results_table=TABLE, heatmap=heatmap, config_yaml="recipe: gender_pythia\nseed: 7\n",
        license="apache-2.0",
    )


# -- fakes of the Hub ----------------------------------------------------------------------------


@dataclass
class FakeHub:
    """Stands in for the Hub: records calls, keeps uploaded folders under ``root``."""

    root: Path
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)
    fail_with: BaseException | None = None

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    def uploaded(self, repo_id: str) -> set[str]:
        folder = self.repo(repo_id)
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}

    def api_class(self) -> type:
        fake = self

        class FakeHfApi:
            def __init__(self, token: str | None = None) -> None:
                fake.tokens.append(token)

            def create_repo(self, repo_id: str, exist_ok: bool = False, private: bool = False) -> str:
                fake.calls.append(("create_repo", {"repo_id": repo_id, "exist_ok": exist_ok, "private": private}))
                if fake.fail_with is not None:
                    raise fake.fail_with
                return f"https://huggingface.co/{repo_id}"

            def upload_folder(self, *, repo_id: str, folder_path: str, commit_message: str,
                              allow_patterns: list[str] | None, ignore_patterns: list[str] | None):
                fake.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path,
                                                     "commit_message": commit_message}))
                source = Path(folder_path)
                files = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
                for name in filter_repo_objects(files, allow_patterns=allow_patterns,
                                                ignore_patterns=ignore_patterns):
                    target = fake.repo(repo_id) / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / name, target)
                return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abc")

        return FakeHfApi

    def snapshot_download(self, repo_id: str, revision: str | None = None,
                          allow_patterns: list[str] | None = None) -> str:
        self.calls.append(("snapshot_download", {"repo_id": repo_id, "revision": revision,
                                                 "allow_patterns": allow_patterns}))
        source = self.repo(repo_id)
        target = self.root / "snapshots" / repo_id
        files = [str(p.relative_to(source)) for p in source.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
        return str(target)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", fake.api_class())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # push_to_hub's temp folders
    return fake


# -- save_pretrained / from_pretrained ---------------------------------------------------------------


def test_save_pretrained_round_trip_reproduces_outputs_exactly(tmp_path, base_source):
    im = trained_intervenable(make_gpt2())
    before = logits(im, base_source)
    card = hub.ModelCard(recipe="gender_tiny", heatmap=small_png(tmp_path / "figure.png"))

    out = hub.save_pretrained(im, tmp_path / "saved", card)

    assert out == tmp_path / "saved"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "heatmaps.png",
                                                     "interventions.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    loaded = hub.from_pretrained(out, make_gpt2())
    torch.testing.assert_close(logits(loaded, base_source), before, atol=0, rtol=0)
    rotation = loaded.interventions[loaded.sorted_keys[0]]
    assert isinstance(rotation, pv.LowRankRotatedSpaceIntervention)
    for (name, a), (_, b) in zip(im.interventions[im.sorted_keys[0]].state_dict().items(),
                                 rotation.state_dict().items()):
        assert torch.equal(a, b), name
    readme = (out / "README.md").read_text()
    meta = front_matter(readme)
    assert meta["library_name"] == "das_train"
    assert {"interpretability", "das"} <= set(meta["tags"])
    assert "base_model" not in meta  # a model built in code is not a Hub repo
    assert "LowRankRotatedSpaceIntervention" in readme and "AdditionIntervention" in readme
    assert "`block_output-L0 (unit pos)`" in readme
    assert "a GPT2LMHeadModel" in readme
    assert "![IIA and probe accuracy per site](heatmaps.png)" in readme
    assert "pv.IntervenableModel.load(" in readme and "from_pretrained(" in readme


def test_save_pretrained_failure_leaves_nothing_and_existing_files_are_kept(tmp_path):
    model = make_gpt2()
    unsaveable = pv.IntervenableModel({"layer": 0, "intervention": lambda base, source=None, subspaces=None: base},
                                      model)
    with pytest.raises(ValueError, match="functions cannot be saved"):
        hub.save_pretrained(unsaveable, tmp_path / "never")
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    hub.save_pretrained(trained_intervenable(model), existing)
    assert sorted(p.name for p in existing.iterdir()) == ["README.md", "config.json",
                                                          "interventions.safetensors", "notes.txt"]


def test_card_renders_every_field(tmp_path):
    readme = full_card(small_png(tmp_path / "h.png")).render("someone/das-gender")
    meta = front_matter(readme)
    assert meta["base_model"] == "EleutherAI/pythia-6.9b" and meta["license"] == "apache-2.0"
    for section in ("## What it is", "## Provenance", "## How to load", "## Results", "## Heatmap", "## Config"):
        assert section in readme
    assert "from transformers import GPTNeoXForCausalLM" in readme
    assert "GPTNeoXForCausalLM.from_pretrained('EleutherAI/pythia-6.9b', revision='step143000')" in readme
    assert "from_pretrained('someone/das-gender', model)" in readme
    assert "| dataset seed | 7 |" in readme and FINGERPRINT in readme
    assert "```yaml\nrecipe: gender_pythia\nseed: 7\n```" in readme


# -- push_to_hub ----------------------------------------------------------------------------------


def test_push_to_hub_uploads_files_and_card(tmp_path, fake_hub):
    im = trained_intervenable(make_gpt2())
    url = hub.push_to_hub(im, "someone/das-gender", card=full_card(small_png(tmp_path / "h.png")), private=True)

    assert url == "https://huggingface.co/someone/das-gender/commit/0123abc"
    assert fake_hub.tokens == [None]  # huggingface_hub's own lookup finds HF_TOKEN
    (create, create_args), (upload, upload_args) = fake_hub.calls
    assert create == "create_repo" and create_args == {"repo_id": "someone/das-gender", "exist_ok": True,
                                                       "private": True}
    assert upload == "upload_folder" and upload_args["repo_id"] == "someone/das-gender"
    assert not Path(upload_args["folder_path"]).exists()  # the temporary copy is gone after success
    assert fake_hub.uploaded("someone/das-gender") == {"config.json", "interventions.safetensors",
                                                       "README.md", "heatmaps.png"}
    readme = (fake_hub.repo("someone/das-gender") / "README.md").read_text()
    for expected in ("gender_pythia", "EleutherAI/pythia-6.9b", "step143000", "| dataset seed | 7 |",
                     FINGERPRINT, "| L1 | last (5) | 0.984 | 1.000 |", "from_pretrained('someone/das-gender', model)"):
        assert expected in readme, expected
    assert front_matter(readme)["base_model"] == "EleutherAI/pythia-6.9b"


def test_push_to_hub_a_saved_folder_with_an_explicit_token(tmp_path, fake_hub, base_source):
    im = trained_intervenable(make_gpt2())
    im.save(str(tmp_path / "plain"))  # no README yet: one is written from config.json
    hub.push_to_hub(tmp_path / "plain", "someone/plain", token="hf_explicit")

    assert fake_hub.tokens == ["hf_explicit"]
    assert fake_hub.uploaded("someone/plain") == {"config.json", "interventions.safetensors", "README.md"}
    assert "LowRankRotatedSpaceIntervention" in (tmp_path / "plain" / "README.md").read_text()
    loaded = hub.from_pretrained("someone/plain", make_gpt2(), revision="0123abc")
    assert fake_hub.calls[-1] == ("snapshot_download", {"repo_id": "someone/plain", "revision": "0123abc",
                                                        "allow_patterns": None})
    torch.testing.assert_close(logits(loaded, base_source), logits(im, base_source), atol=0, rtol=0)


def test_push_without_a_token_fails_before_any_request_and_keeps_the_files(fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(hub.HubPublishError) as caught:
        hub.push_to_hub(trained_intervenable(make_gpt2()), "someone/das")
    err = caught.value
    assert isinstance(err, OSError) and err.reason == "no token"
    assert "no Hugging Face token" in str(err) and "HF_TOKEN" in str(err)
    assert str(err.local_directory) in str(err)
    assert (err.local_directory / "interventions.safetensors").is_file()
    assert fake_hub.calls == []


@pytest.mark.parametrize(
    ("error", "reason", "words"),
    [
        (LocalTokenNotFoundError("Token is required"), "no token", "HF_TOKEN"),
        (OfflineModeIsEnabled("offline mode is enabled"), "offline", "HF_HUB_OFFLINE"),
        (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "offline", "cannot be reached"),
        (HfHubHTTPError("401 Unauthorized", response=httpx.Response(
            401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))),
         "not authorized", "HTTP 401"),
        (RuntimeError("disk on fire"), "other", "RuntimeError: disk on fire"),
    ],
)
def test_push_failures_say_why_and_where_the_files_are(fake_hub, error, reason, words):
    fake_hub.fail_with = error
    with pytest.raises(hub.HubPublishError) as caught:
        hub.push_to_hub(trained_intervenable(make_gpt2()), "someone/das")
    err = caught.value
    assert err.reason == reason and err.__cause__ is error
    assert words in str(err) and "someone/das" in str(err)
    assert f"the files are kept in {err.local_directory}" in str(err)
    assert sorted(p.name for p in err.local_directory.iterdir()) == ["README.md", "config.json",
                                                                    "interventions.safetensors"]


# -- from_pretrained --------------------------------------------------------------------------------


def test_from_pretrained_of_a_missing_repo_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so "nobody/no-such-repo" is not a local folder
    with pytest.raises(hub.HubDownloadError) as caught:
        hub.from_pretrained("nobody/no-such-repo", make_gpt2())
    err = caught.value
    assert isinstance(err, HubUnavailableError) and isinstance(err, OSError)
    assert err.reason == "offline"
    assert "'nobody/no-such-repo'" in str(err) and "HF_HUB_OFFLINE is set" in str(err)
    assert "not in the local cache" in str(err)


def test_from_pretrained_of_a_path_that_is_no_repo_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a Hub repo id"):
        hub.from_pretrained(tmp_path / "no" / "such" / "folder", make_gpt2())


# -- publish_run ------------------------------------------------------------------------------------

RUN_CONFIG = {
    "recipe": "gender_pythia", "run_dir": "runs/gender_pythia", "cache_dir": ".cache/das_train", "seed": 0,
    "progress": False,
    "model": {"kind": "hub", "name": "EleutherAI/pythia-6.9b", "revision": "step143000", "dtype": "bfloat16"},
    "task": {"name": "gender", "n_train": 2000, "n_val": 256, "n_test": 512, "filter_pairs": True},
    "intervention": {"type": "LowRankRotatedSpaceIntervention", "low_rank_dimension": 1, "lr": 0.01},
    "sweep": {"component": "block_output", "seeds": [0]},
}


def fake_run_dir(root: Path, model: torch.nn.Module) -> tuple[Path, pv.IntervenableModel]:
    """What ``run(cfg)`` leaves behind, plus clutter that must stay local."""
    run_dir = root / "runs" / "gender_pythia"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(RUN_CONFIG, sort_keys=False))
    rows = [{"layer": 1, "component": "block_output", "position": 5, "position_name": "last", "seed": 0,
             "iia": 0.984, "probe_accuracy": 1.0, "control_accuracy": 0.512, "selectivity": 0.488}]
    reports.write_rows(run_dir / "results.csv", rows)
    sites = reports.write_tables(run_dir, rows)
    small_png(run_dir / "heatmaps.png")
    small_png(run_dir / "validity_heatmaps.png")
    (run_dir / "run_info.json").write_text(
        f'{{"das_train_version": "0.1.0", "dataset": {{"task": "gender", "seed": 0, "fingerprint": "{FINGERPRINT}"}}}}'
    )
    im = pv.IntervenableModel({"layer": 1, "component": "block_output", "low_rank_dimension": 1,
                               "intervention_type": pv.LowRankRotatedSpaceIntervention}, model)
    im.save(str(run_dir / "interventions" / "block_output-L1-last-s0"))
    (run_dir / "interventions" / "block_output-L1-last-s0" / ".config.json.x.tmp").write_text("half")
    (run_dir / "checkpoints" / "x").mkdir(parents=True)
    (run_dir / "checkpoints" / "x" / "last.ckpt").write_text("big")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "metrics.csv").write_text("step,loss\n")
    assert sites
    return run_dir, im


def test_publish_run_uploads_the_sweep_and_loads_back(tmp_path, fake_hub, base_source):
    run_dir, im = fake_run_dir(tmp_path, make_gpt2())
    url = hub.publish_run(run_dir, "someone/gender-sweep")

    assert url.startswith("https://huggingface.co/someone/gender-sweep")
    assert fake_hub.uploaded("someone/gender-sweep") == {
        "README.md", "config.yaml", "table.md", "table.csv", "results.csv", "heatmaps.png", "validity_heatmaps.png",
        "run_info.json", "interventions/block_output-L1-last-s0/config.json",
        "interventions/block_output-L1-last-s0/interventions.safetensors",
    }
    readme = (run_dir / "README.md").read_text()
    assert readme == (fake_hub.repo("someone/gender-sweep") / "README.md").read_text()
    assert front_matter(readme)["base_model"] == "EleutherAI/pythia-6.9b"
    for expected in ("`gender_pythia`", "at revision `step143000`", "| task | `gender` |", "| dataset seed | 0 |",
                     FINGERPRINT, "`block_output-L1-last`", (run_dir / "table.md").read_text().strip(),
                     "](heatmaps.png)", "](validity_heatmaps.png)", "AutoModelForCausalLM.from_pretrained('EleutherAI/pythia-6.9b'",
                     "subfolder='interventions/block_output-L1-last-s0'", "low_rank_dimension: 1"):
        assert expected in readme, expected

    loaded = hub.from_pretrained("someone/gender-sweep", make_gpt2(),
                                 subfolder="interventions/block_output-L1-last-s0")
    assert fake_hub.calls[-1][1]["allow_patterns"] == ["interventions/block_output-L1-last-s0/*", "README.md"]
    base, source = base_source
    locations = {"sources->base": ([[[1], [2]]], [[[1], [2]]])}
    with torch.no_grad():
        expected = im(base, [source], locations)[1].logits
        got = loaded(base, [source], locations)[1].logits
    torch.testing.assert_close(got, expected, atol=0, rtol=0)

    with pytest.raises(FileNotFoundError, match="interventions/block_output-L1-last-s0"):
        hub.from_pretrained(run_dir, make_gpt2())  # a sweep needs subfolder=


def test_publish_run_of_an_unfinished_sweep_is_refused(tmp_path, fake_hub):
    run_dir, _ = fake_run_dir(tmp_path, make_gpt2())
    (run_dir / "table.md").unlink()
    with pytest.raises(FileNotFoundError, match="no table.md"):
        hub.publish_run(run_dir, "someone/gender-sweep")
    assert fake_hub.calls == []


def test_a_card_for_a_checkpoint_folder_does_not_name_it_as_a_hub_model(tmp_path):
    folder = tmp_path / "my-llama"
    folder.mkdir()
    config = {"recipe": "gender_tiny", "model": {"kind": "hub", "name": str(folder), "revision": "main"},
              "task": {"name": "gender"}, "intervention": {"type": "LowRankRotatedSpaceIntervention"}}
    card = hub.ModelCard.from_run(config, None, None, [])
    assert card.base_model is None and card.base_model_revision is None
    assert str(folder) in card.base_model_description and "not on the Hub" in card.base_model_description
    on_hub = hub.ModelCard.from_run({**config, "model": {"kind": "hub", "name": "EleutherAI/pythia-70m"}}, None, None, [])
    assert on_hub.base_model == "EleutherAI/pythia-70m"
