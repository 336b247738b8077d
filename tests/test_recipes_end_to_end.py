"""Every offline recipe runs end to end as shipped, shortened only in its step counts.

Model sizes, data sizes, sites, interventions and learning rates stay the recipe's own, so a
recipe whose settings break a path (hierarchical_equality's widening MLP under the batched
sweep did) fails here; only the optimizer steps, probe epochs and sample counts are cut.
"""

from __future__ import annotations

import pytest

from das_train import cli
from das_train.training import model_loading
from das_train.training import run as run_module

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

SHORTER_STEPS = {
    "gender_tiny": ["model.max_steps=200", "trainer.max_steps=5", "sweep.probe.max_epochs=1"],
    "pairs_file": ["model.max_steps=200", "trainer.max_steps=5", "sweep.probe.max_epochs=1"],
    "causal_tracing": ["model.max_steps=200", "tracing.samples=2"],
    "steering_tiny": ["model.max_steps=50", "steering.samples=1"],
    # The MLP trains its fixed epochs (model.max_steps is not read for kind=mlp).
    "hierarchical_equality": ["trainer.max_steps=5", "sweep.probe.max_epochs=1"],
    "iit_hierarchical_equality": ["iit.steps=20", "iit.eval_every=10", "iit.train_pairs=2000", "iit.eval_pairs=200",
                                  "trainer.max_steps=5"],
    "iit_gender_tiny": ["iit.steps=10", "iit.eval_every=5", "iit.train_pairs=512", "iit.eval_pairs=100",
                        "trainer.max_steps=5"],
}
WRITES = {"gender_tiny": "table.csv", "pairs_file": "table.csv", "hierarchical_equality": "table.csv", "causal_tracing": "tracing.csv",
          "steering_tiny": "steering.csv",
          "iit_hierarchical_equality": "iit.csv", "iit_gender_tiny": "iit.csv"}


def test_every_offline_recipe_is_covered():
    assert set(SHORTER_STEPS) == set(model_loading.OFFLINE_RECIPES)


@pytest.mark.parametrize("recipe", sorted(SHORTER_STEPS))
def test_an_offline_recipe_runs_with_its_own_settings(recipe, tmp_path):
    quiet = [] if recipe == "steering_tiny" else ["logger=none"]  # steering logs nothing
    overrides = [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", *quiet,
                 *SHORTER_STEPS[recipe]]
    run_dir = run_module.run(cli.check(recipe, overrides))
    with (run_dir / WRITES[recipe]).open() as handle:
        assert len(handle.readlines()) > 1, f"{WRITES[recipe]} holds no rows"
