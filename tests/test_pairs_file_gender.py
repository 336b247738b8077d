"""The gender task written as a pair file gives ``task=gender``'s IIA table.

The exact pairs a ``task=gender`` run draws (every split, before the frozen-model filter) are
written as text to a JSON-lines file with their split, the name and verb of each side and the
pronoun answers; the same tiny model, saved as a folder with its tokenizer, runs both the
shipped task and ``task=pairs`` on that file. The file's positions are found in the text
(``{name}``, ``{verb}``), by index (``bos``) and as ``last``, so the pair-file path (reading,
tokenizing, per-row positions, the sweep's RowPosition sites) is checked against the path the
shipped task takes, site by site. Probe accuracy must agree too (the probe's target is the
gender column); the control task is a different random labelling in the two, so it is not
compared.
"""

from __future__ import annotations

import csv
import json

import pytest

from das_train import cli
from das_train.data.pair_contract import (
    BASE_IDS,
    BASE_LABEL,
    BASE_VARIABLE,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_LABEL,
    SOURCE_VARIABLE,
)
from das_train.data.pair_datamodule import PairDataModule
from das_train.data.tiny_lm import train_tiny_lm
from das_train.tasks.gender import GenderTask
from das_train.training import run as run_module

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*"
)

SIZES = {"train": 96, "val": 32, "test": 64}
SEED = 0


def _words(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)[1:]  # drop <bos>: the tokenizer adds it back


def write_gender_pairs(path, tokenizer) -> None:
    """Every pair of a gender run's splits as one JSON line each."""
    datamodule = PairDataModule(GenderTask(), tokenizer, n_train=SIZES["train"], n_val=SIZES["val"],
                                n_test=SIZES["test"], seed=SEED, filter_pairs=False)
    datamodule.prepare_data()
    datamodule.setup()
    lines = []
    for split, dataset in datamodule.datasets.items():
        for row in dataset:
            base, source = _words(tokenizer, row[BASE_IDS]), _words(tokenizer, row[SOURCE_IDS])
            answer = {i: " " + tokenizer.convert_ids_to_tokens(int(i)) for i in
                      (row[BASE_LABEL], row[SOURCE_LABEL], row[COUNTERFACTUAL_LABEL])}
            lines.append(json.dumps({
                "split": split, "base": " ".join(base), "source": " ".join(source),
                "base_name": base[0], "source_name": source[0], "base_verb": base[1], "source_verb": source[1],
                "base_label": answer[row[BASE_LABEL]], "source_label": answer[row[SOURCE_LABEL]],
                "counterfactual_label": answer[row[COUNTERFACTUAL_LABEL]],
                "base_gender": int(row[BASE_VARIABLE]), "source_gender": int(row[SOURCE_VARIABLE]),
            }))
    path.write_text("\n".join(lines) + "\n")


def _table(run_dir) -> dict[tuple[str, str, str], dict[str, str]]:
    with (run_dir / "table.csv").open() as handle:
        return {(r["layer"], r["component"], r["position_name"]): r for r in csv.DictReader(handle)}


def test_the_gender_task_as_a_pair_file_gives_the_same_iia_table(tmp_path):
    task = GenderTask()
    tokenizer = task.build_tokenizer()
    model = train_tiny_lm(task, tokenizer, n_layer=2, hidden=32, heads=4, max_steps=800, seed=SEED)
    folder = tmp_path / "gender_model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_gender_pairs(tmp_path / "gender.jsonl", tokenizer)

    common = [f"cache_dir={tmp_path}/cache", "progress=false", "logger=none", f"seed={SEED}",
              "model.kind=hub", f"model.name='{folder}'", "trainer.max_steps=40", "trainer.batch_size=32",
              f"task.n_train={SIZES['train']}", f"task.n_val={SIZES['val']}", f"task.n_test={SIZES['test']}",
              "sweep.probe.max_epochs=5"]
    shipped = run_module.run(cli.check("gender_tiny", [f"run_dir={tmp_path}/shipped", *common]))
    from_file = run_module.run(cli.check("gender_tiny", [
        f"run_dir={tmp_path}/file", *common, "task=pairs", f"task.path={tmp_path}/gender.jsonl",
        "task.base_value=base_gender", "task.source_value=source_gender", "task.variable=gender",
        "task.positions={bos:0,name:'{name}',verb:'{verb}',last:last}",
    ]))
    expected, got = _table(shipped), _table(from_file)
    assert sorted(got) == sorted(expected)  # every (layer, component, position) site
    for site, row in expected.items():
        assert got[site]["iia"] == row["iia"], site
        assert got[site]["probe_accuracy"] == row["probe_accuracy"], site
    assert len({row["iia"] for row in expected.values()}) > 1  # a table that can tell sites apart
