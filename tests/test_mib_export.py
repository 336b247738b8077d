"""``job=export_mib``: a finished sweep's trained sites as MIB's causal-variable track reads them.

The files are loaded here as MIB's loader does (CausalAbstraction's ``Featurizer.load_modules``,
reimplemented in a few lines: a ``(d, k)`` weight under torch's orthogonal parametrization,
rebuilt from ``model_info`` and then given the saved state dict), and an interchange through
featurizer -> swap the indexed features -> inverse must equal das_train's own intervention on
the same vectors. The layout checks follow MIB's ``verify_submission.py`` and the file-name
parsing of its ``evaluate_submission.py``.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from das_train import cli
from das_train.core.serialization import read_saved_document
from das_train.interventions.masks import BoundlessRotatedSpaceIntervention, SigmoidMaskIntervention
from das_train.interventions.rotated import (
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
)
from das_train.training import run as run_module
from das_train.training.mib_export import MIB_FORMAT, TrainedSite, position_map, unit_id
from das_train.training.mib_featurizer import features_of, write_unit
from das_train.training.schema import ConfigError

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

SWEEP = ["model.max_steps=200", "trainer.max_steps=5", "sweep.probe.max_epochs=1", "sweep.layers=[1]",
         "sweep.positions=[name]", "sweep.seeds=[0,1]", "task.n_train=64", "task.n_val=16", "task.n_test=32",
         "progress=false", "logger=none"]
FOLDER = "gender_GPTNeoXForCausalLM_gender"
UNITS = ("ResidualStream(Layer--1,Token-name)", "ResidualStream(Layer-1,Token-name)")
MIB_MODULE_NAMES = {"SubspaceFeaturizerModule", "SubspaceInverseFeaturizerModule", "SAEFeaturizerModule",
                    "SAEInverseFeaturizerModule", "IdentityFeaturizerModule", "IdentityInverseFeaturizerModule"}


# -- MIB's side, reimplemented ---------------------------------------------------------------------


class _Weight(nn.Module):
    """pyvene's LowRankRotateLayer as MIB builds it: a ``(d, k)`` weight read as ``x @ weight``."""

    def __init__(self, rotation: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(rotation.clone())


class _Featurizer(nn.Module):
    def __init__(self, rotate: nn.Module) -> None:
        super().__init__()
        self.rotate = rotate

    def forward(self, x):
        features = x @ self.rotate.weight
        return features, x - features @ self.rotate.weight.T


class _Inverse(_Featurizer):
    def forward(self, features, error):
        return features @ self.rotate.weight.T + error


def mib_load(stem: Path):
    """Featurizer, inverse and indices of ``<stem>_*`` as MIB's loader rebuilds them."""
    featurizer_data = torch.load(f"{stem}_featurizer")  # weights_only, as torch loads by default
    inverse_data = torch.load(f"{stem}_inverse_featurizer")
    info = featurizer_data["model_info"]
    assert info["featurizer_class"] == "SubspaceFeaturizerModule"
    assert info["inverse_featurizer_class"] == "SubspaceInverseFeaturizerModule"
    rotate = parametrizations.orthogonal(_Weight(info["additional_config"]["rotation_matrix"]))
    featurizer, inverse = _Featurizer(rotate), _Inverse(rotate)
    featurizer.load_state_dict(featurizer_data["state_dict"])
    inverse.load_state_dict(inverse_data["state_dict"])
    indices = ast.literal_eval(Path(f"{stem}_indices").read_text())
    assert info["n_features"] == rotate.weight.shape[1]
    return featurizer, inverse, indices


def mib_interchange(stem: Path, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    featurizer, inverse, indices = mib_load(stem)
    with torch.no_grad():
        f_base, error = featurizer(base)
        f_source, _ = featurizer(source)
        mixed = f_base.clone()
        mixed[..., indices] = f_source[..., indices]
        return inverse(mixed, error)


def mib_verifies(folder: Path) -> bool:
    """MIB's verify_submission.py check of one task folder: some unit has indices that read as a
    list and a featurizer and inverse whose saved model_info names a known module class."""
    for path in folder.iterdir():
        stem = str(path)[: -len("_indices")] if path.name.endswith("_indices") else None
        if stem is None:
            continue
        indices_ok = isinstance(ast.literal_eval(path.read_text().splitlines()[0]), list)
        featurizer = torch.load(f"{stem}_featurizer", map_location="cpu")
        inverse = torch.load(f"{stem}_inverse_featurizer", map_location="cpu")
        if (indices_ok and featurizer["model_info"]["featurizer_class"] in MIB_MODULE_NAMES
                and inverse["model_info"]["inverse_featurizer_class"] in MIB_MODULE_NAMES
                and "state_dict" in featurizer and "state_dict" in inverse):
            return True
    return False


def evaluate_submission_parse(name: str) -> tuple[int, str]:
    """How MIB's ResidualStream.load_modules reads a unit's layer and token id from its name."""
    start = name.find("Layer") + 6
    layer = int(name[start:name.find(",", start)])
    start = name.find("Token") + 6
    return layer, name[start:name.find(")", start)]


# -- each family, without a run -------------------------------------------------------------------


def _trained_like(intervention: nn.Module) -> nn.Module:
    """Moves the parameters off their initial values, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in intervention.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return intervention


@pytest.mark.parametrize("make", [
    lambda: LowRankRotatedSpaceIntervention(embed_dim=16, low_rank_dimension=3),
    lambda: RotatedSpaceIntervention(embed_dim=12, interchange_dim=5),
    lambda: RotatedSpaceIntervention(embed_dim=12),
    # A trained boundless mask is near hard once annealed: 1e-4 leaves no coordinate in between.
    lambda: BoundlessRotatedSpaceIntervention(embed_dim=12, initial_boundary=0.4, temperature=1e-4),
], ids=["low_rank", "rotated_5_of_12", "rotated_all", "boundless"])
def test_featurizer_swap_inverse_equals_das_trains_own_intervention(make, tmp_path):
    intervention = _trained_like(make())
    features = features_of(intervention)
    write_unit(tmp_path, "ResidualStream(Layer-0,Token-last)", features)
    torch.manual_seed(0)
    base, source = torch.randn(6, 2, intervention.embed_dim), torch.randn(6, 2, intervention.embed_dim)
    with torch.no_grad():
        expected = intervention(base, source)
    got = mib_interchange(tmp_path / "ResidualStream(Layer-0,Token-last)", base, source)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, base, atol=1e-3), "the interchange must change the base"


def test_boundless_indices_are_the_masks_hard_part_and_its_softness_is_reported():
    intervention = BoundlessRotatedSpaceIntervention(embed_dim=10, initial_boundary=0.33, temperature=0.1)
    features = features_of(intervention)
    assert features.indices == [0, 1, 2]  # 3.3 coordinates: the mask is above 1/2 on the first three
    assert 0 < features.hardened_from < 0.5
    assert features_of(LowRankRotatedSpaceIntervention(embed_dim=8, low_rank_dimension=2)).hardened_from is None


def test_an_intervention_with_no_subspace_featurizer_is_refused_by_name():
    with pytest.raises(ValueError, match="SigmoidMaskIntervention has no MIB subspace featurizer; exportable: "
                                         r"\['LowRankRotatedSpaceIntervention'"):
        features_of(SigmoidMaskIntervention(embed_dim=8))


def test_unit_ids_follow_mibs_layer_numbering_and_refuse_what_it_cannot_parse():
    def site(component, layer, position="last"):
        return TrainedSite(layer, component, position, 0, 1.0, Path("."))

    assert unit_id(site("block_output", 3), {}) == "ResidualStream(Layer-3,Token-last)"
    assert unit_id(site("block_input", 3), {}) == "ResidualStream(Layer-2,Token-last)"
    assert unit_id(site("block_input", 0), position_map(["last:last_token"])) == "ResidualStream(Layer--1,Token-last_token)"
    assert evaluate_submission_parse("ResidualStream(Layer--1,Token-last_token)") == (-1, "last_token")
    with pytest.raises(ConfigError, match="component 'mlp_output' is not a residual-stream unit"):
        unit_id(site("mlp_output", 1), {})
    with pytest.raises(ConfigError, match="cannot read 'last'; give each das_train position once, as name:id"):
        position_map(["last"])
    with pytest.raises(ConfigError, match="token id 'a,b' of position 'last' must not hold"):
        unit_id(site("block_output", 1), {"last": "a,b"})


# -- a real run, exported ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A gender_tiny sweep cut to two sites (embeddings and layer 1 at the name), two seeds."""
    root = tmp_path_factory.mktemp("mib")
    return run_module.run(cli.check("gender_tiny", [f"run_dir={root}/run", f"cache_dir={root}/cache", *SWEEP]))


def export(run_dir: Path, *overrides: str) -> Path:
    run_module.run(cli.check("gender_tiny", ["job=export_mib", f"run_dir={run_dir}", *overrides]))
    return run_dir


def test_a_finished_run_exports_mibs_layout_and_changes_nothing_of_the_run(finished_run, tmp_path, capsys):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    export(finished_run, f"mib.out={tmp_path}/sub")
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before
    out = tmp_path / "sub"
    assert sorted(p.name for p in out.iterdir()) == sorted([FOLDER, "README.md"])
    assert sorted(p.name for p in (out / FOLDER).iterdir()) == sorted(
        f"{u}{suffix}" for u in UNITS for suffix in ("_featurizer", "_indices", "_inverse_featurizer"))
    assert mib_verifies(out / FOLDER)
    assert (out / FOLDER / f"{UNITS[1]}_indices").read_text() == "[0]"  # low_rank_dimension 1
    readme = (out / "README.md").read_text()
    assert "cc2a160" in readme and "| `ResidualStream(Layer-1,Token-name)` | block_output-L1-name |" in readme
    printed = capsys.readouterr().out
    assert MIB_FORMAT in printed and "will skip gender_GPTNeoXForCausalLM_gender: task 'gender'" in printed
    assert not [p for p in tmp_path.iterdir() if p.name != "sub"], "a temporary folder was left behind"


def test_the_exported_files_interchange_as_the_runs_intervention_does(finished_run, tmp_path):
    export(finished_run, f"mib.out={tmp_path}/sub", "mib.seed=1")
    for unit, site in zip(UNITS, ("block_input-L0-name", "block_output-L1-name")):
        _, config = read_saved_document(finished_run / "interventions" / f"{site}-s1")
        intervention = config.representations[0].intervention
        torch.manual_seed(1)
        base, source = torch.randn(8, 1, 64), torch.randn(8, 1, 64)
        with torch.no_grad():
            expected = intervention(base, source)
        got = mib_interchange(tmp_path / "sub" / FOLDER / unit, base, source)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_names_positions_and_the_best_seed_per_site(finished_run, tmp_path):
    export(finished_run, f"mib.out={tmp_path}/sub", "mib.task=4_answer_MCQA", "mib.model=Qwen2ForCausalLM",
           "mib.variable=answer_pointer", "mib.positions=[name:correct_symbol]", "mib.sites=[block_output-L1-name]")
    folder = tmp_path / "sub" / "4_answer_MCQA_Qwen2ForCausalLM_answer_pointer"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"ResidualStream(Layer-1,Token-correct_symbol){s}" for s in ("_featurizer", "_indices", "_inverse_featurizer")]
    readme = (tmp_path / "sub" / "README.md").read_text()
    assert "will skip" not in readme
    rows = [line.split(",") for line in (finished_run / "results.csv").read_text().splitlines()[1:]]
    best = max((float(r[5]), -int(r[4])) for r in rows if r[:2] == ["1", "block_output"])
    assert f"| block_output-L1-name | {-best[1]} | {best[0]:.3f} |" in readme


def test_an_existing_output_is_refused_unless_overwrite(finished_run, tmp_path):
    out = tmp_path / "sub"
    out.mkdir()
    (out / "old.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"mib.out=.* exists; pass mib.overwrite=true"):
        export(finished_run, f"mib.out={out}")
    assert (out / "old.txt").read_text() == "mine"
    export(finished_run, f"mib.out={out}", "mib.overwrite=true")
    assert sorted(p.name for p in out.iterdir()) == sorted([FOLDER, "README.md"])


def test_unknown_sites_and_seeds_name_what_the_run_has(finished_run, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown site\(s\) \['block_output-L7-name'\]; trained sites of this "
                                          r"run: \['block_input-L0-name', 'block_output-L1-name'\]"):
        export(finished_run, f"mib.out={tmp_path}/a", "mib.sites=[block_output-L7-name]")
    with pytest.raises(ConfigError, match=r"mib.seed=5: site block_input-L0-name has no trained seed 5; it has \[0, 1\]"):
        export(finished_run, f"mib.out={tmp_path}/b", "mib.seed=5")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_folder_with_no_run_or_no_trained_site_is_refused(finished_run, tmp_path):
    with pytest.raises(ConfigError, match="holds no config.yaml: it is not a das_sweep run directory"):
        export(tmp_path / "nothing")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(finished_run / "config.yaml", bare / "config.yaml")
    with pytest.raises(ConfigError, match="has no trained site"):
        export(bare)
    assert sorted(p.name for p in bare.iterdir()) == ["config.yaml"]


def test_the_command_line_writes_nothing_into_the_run(finished_run, tmp_path, capsys):
    """Hydra would create run_dir and write its record and log of the export there: the command
    line runs a read-only job without it."""
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    cli.main(["job=export_mib", f"run_dir={finished_run}", f"mib.out={tmp_path}/sub"])
    assert {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()} == before
    assert mib_verifies(tmp_path / "sub" / FOLDER)
    for argv in (["job=export_mib", f"run_dir={tmp_path}/typo"], ["-m", "job=export_mib", f"run_dir={finished_run}"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "holds no config.yaml" in err and "job=export_mib reads one run directory; it takes no -m" in err
    assert not (tmp_path / "typo").exists()
