"""A fit whose loss or weights go NaN or infinite stops with an error naming the site, the seed
and the step, and leaves no row and no artifact behind (per-site and batched paths)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_checkpoints import GROUP, SITE, gender_run  # noqa: E402
from test_run import fit_by_hand  # noqa: E402

from das_train.training.finite import NonFiniteTrainingError, check_finite  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)


@pytest.fixture(scope="module")
def infinite_lr(tmp_path_factory):
    cfg, model, datamodule, spec = gender_run(tmp_path_factory.mktemp("gender"))
    cfg.intervention.lr = float("inf")  # set after validation: the run-time check is under test
    return cfg, model, datamodule, spec


def test_a_per_site_fit_with_an_infinite_lr_stops_naming_site_seed_and_step(infinite_lr, tmp_path):
    cfg, model, datamodule, spec = infinite_lr
    with pytest.raises(NonFiniteTrainingError, match=r"step 1: block_output-L1-last seed 0: the weights") as err:
        fit_by_hand(cfg, model, datamodule, spec, [(SITE, 0)], tmp_path, batched=False)
    assert err.value.step == 1 and err.value.problems == {0: "weights"}
    assert not (tmp_path / "interventions").exists()


def test_a_batched_fit_with_an_infinite_lr_stops_naming_its_sites(infinite_lr, tmp_path):
    cfg, model, datamodule, spec = infinite_lr
    with pytest.raises(NonFiniteTrainingError, match=r"step 1: block_output-L1-name seed 0: the weights.*"
                                                     r"block_output-L1-last seed 0: the weights"):
        fit_by_hand(cfg, model, datamodule, spec, [(site, 0) for site in GROUP], tmp_path)
    assert not (tmp_path / "interventions").exists()


def test_a_non_finite_loss_is_told_from_non_finite_weights_with_one_check_for_all_sites():
    finite, nan = torch.tensor(0.5), torch.tensor(float("nan"))
    weights = [torch.ones(3)]
    check_finite(4, {0: finite, 1: finite}, {0: weights, 1: weights})  # nothing to report
    with pytest.raises(NonFiniteTrainingError, match="step 4: site 1: the loss is not finite") as err:
        check_finite(4, {0: finite, 1: nan}, {0: weights, 1: weights})
    assert err.value.problems == {1: "loss"}
    with pytest.raises(NonFiniteTrainingError) as err:
        check_finite(4, {2: finite}, {2: [torch.tensor([1.0, float("inf")])]})
    assert err.value.problems == {2: "weights"}
    assert "L3-last seed 1" in str(err.value.naming(["", "", "mlp_output-L3-last seed 1"]))
