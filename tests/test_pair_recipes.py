"""The recipes over the field's published pair datasets (CausalGym, MIB) compose, and offline
they stop before any model is loaded or trained, naming the dataset and the way out."""

from __future__ import annotations

import pytest

from das_train import cli
from das_train.training import model_loading
from das_train.training.schema import ConfigError

HUB_PAIR_RECIPES = {
    "causalgym_pythia": ("aryaman/causalgym", "causalgym", "EleutherAI/pythia-70m"),
    "mib_mcqa_qwen": ("mib-bench/copycolors_mcqa:4_answer_choices", "mib", "Qwen/Qwen2.5-0.5B"),
}


@pytest.mark.parametrize("recipe", sorted(HUB_PAIR_RECIPES))
def test_a_hub_pair_recipe_names_its_dataset_and_model(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(model_loading, "load_hub_model", lambda *a, **k: pytest.fail("the model was loaded"))
    dataset, data_format, model = HUB_PAIR_RECIPES[recipe]
    overrides = [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache"]
    cfg = cli.compose(recipe, overrides)
    assert (cfg.task.name, cfg.task.path, cfg.task.format, cfg.model.name) == ("pairs", dataset, data_format, model)
    with pytest.raises(ConfigError) as caught:  # the command line's checks read the pairs first
        cli.check(recipe, overrides)
    message = str(caught.value)
    assert dataset in message and "HF_HUB_OFFLINE" in message and "save_to_disk" in message
    assert not (tmp_path / "run" / "table.csv").exists()
