"""``recipe=pairs_file`` on a local checkpoint: GPT-NeoX, Llama and GPT-2 folders with a real BPE.

The shipped example (``recipes/data/animal_sounds.jsonl``) is read with a byte-level BPE
trained here on its sentences, small enough that the animals and their sounds are split into
word pieces as a real model's tokenizer splits rare words. Each tiny model is built from a
config, saved with ``save_pretrained`` next to that tokenizer, and the recipe runs on the
folder (``model.kind=hub model.name=<folder>``) with no network. The models are untrained,
hence wrong on most pairs, so ``task.filter_pairs=false`` keeps every pair: these tests check
the path (sites, per-row positions, the run's record of the folder), not the figures.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import EOS, byte_level_bpe, tiny_causal_lm

from das_train import cli
from das_train.data.pair_contract import BASE_IDS, BASE_POSITIONS, SOURCE_IDS, SOURCE_POSITIONS
from das_train.data.pair_files.reading import resolve_local
from das_train.training import run as run_module
from das_train.training import task_loading

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

HIDDEN, LAYERS = 16, 2
EXAMPLE = "pkg://das_train.recipes/data/animal_sounds.jsonl"
ANIMALS = ("cat", "cow", "dog", "duck")
SOUNDS = ("meow", "moo", "quack", "woof")
# The metric reads an answer's first token, and answers that share it are refused
# (pair_files/answers.py); these stems, made frequent in the training text, give each sound a
# first piece of its own while the small vocabulary still leaves the sounds in several pieces.
ANSWER_STEMS = " qu me mo wo"
VOCABULARY = 300  # 256 bytes, end-of-text and 43 merges


def example_rows() -> list[dict]:
    return [json.loads(line) for line in resolve_local(EXAMPLE).read_text().splitlines()]


@pytest.fixture(scope="module")
def bpe():
    """A GPT-2-style byte-level BPE (no prefix space; end-of-text as bos, eos and pad) trained
    on every prompt of the example with its answer."""
    texts = sorted({row[side] + row[f"{side}_label"] for row in example_rows() for side in ("base", "source")})
    return byte_level_bpe([*texts, *[ANSWER_STEMS] * 100], VOCABULARY, bos_token=EOS, eos_token=EOS, pad_token=EOS)


FAMILIES = ("gpt2", "gpt_neox", "llama")


def saved_checkpoint(folder, arch, tokenizer):
    tiny_causal_lm(arch, tokenizer, max_positions=32, hidden=HIDDEN, layers=LAYERS).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def overrides(tmp_path, folder, *extra):
    return [f"run_dir={tmp_path}/run", f"cache_dir={tmp_path}/cache", "progress=false", "logger=none",
            "trainer.max_steps=3", "task.n_train=32", "task.n_val=16", "task.n_test=32",
            "sweep.probe.max_epochs=2", "task.filter_pairs=false", "model.kind=hub", f"model.name='{folder}'",
            *extra]


def test_the_bpe_splits_the_animals_and_their_sounds_into_pieces(bpe):
    pieces = {word: bpe.tokenize(" " + word) for word in (*ANIMALS, *SOUNDS)}
    assert all(len(p) >= 2 for p in pieces.values()), pieces
    assert pieces["quack"][0] == "Ġqu" and pieces["cat"] == ["Ġc", "a", "t"]
    assert len({pieces[sound][0] for sound in SOUNDS}) == len(SOUNDS)  # each sound's first piece is its own


def _run_on_folder(arch, bpe, tmp_path):
    folder = saved_checkpoint(tmp_path / "ckpt", arch, bpe)
    run_dir = run_module.run(cli.check("pairs_file", overrides(tmp_path, folder)))
    with (run_dir / "table.csv").open() as handle:
        table = list(csv.DictReader(handle))
    # the embedding row and both layers, each at the recipe's three positions
    sites = sorted((row["layer"], row["component"], row["position_name"]) for row in table)
    assert sites == sorted((layer, component, name) for layer, component in
                           (("0", "block_input"), ("0", "block_output"), ("1", "block_output"))
                           for name in ("animal", "place", "last"))
    assert all(0.0 <= float(row["iia"]) <= 1.0 and 0.0 <= float(row["probe_accuracy"]) <= 1.0 for row in table)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["model"]["folder"] == str(folder.resolve())
    assert info["dataset"]["task"] == "pairs" and info["dataset"]["dropped"] == {"train": 0, "val": 0, "test": 0}


def test_a_gpt_neox_folder_runs_the_pairs_file_recipe(bpe, tmp_path):
    _run_on_folder("gpt_neox", bpe, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_a_llama_or_gpt2_folder_runs_the_pairs_file_recipe(arch, bpe, tmp_path):
    _run_on_folder(arch, bpe, tmp_path)


def _built_rows(bpe, tmp_path, *extra):
    cfg = run_module.as_run_config(cli.check("pairs_file", overrides(tmp_path, tmp_path / "unused", *extra)))
    return task_loading.load_task("pairs", cfg.task).built(bpe).dataset.select(range(12))


@pytest.mark.parametrize("span_token", ["last", "first"])
def test_the_animal_position_is_the_chosen_piece_of_the_animal_word(span_token, bpe, tmp_path):
    """``{animal}`` names a word of several pieces: its last piece by default, its first with
    ``task.span_token=first``, in the left-padded base and source alike."""
    extra = () if span_token == "last" else ("task.span_token=first",)
    rows = _built_rows(bpe, tmp_path, *extra)
    animals = {row["base"]: row["base_animal"] for row in example_rows()}
    animals.update({row["source"]: row["source_animal"] for row in example_rows()})
    sides = 0
    for row in rows:
        for ids_column, positions_column in ((BASE_IDS, BASE_POSITIONS), (SOURCE_IDS, SOURCE_POSITIONS)):
            ids, at = row[ids_column], row[positions_column][0]  # column 0: the animal
            animal = animals[bpe.decode(ids, skip_special_tokens=True)]
            pieces = bpe(" " + animal, add_special_tokens=False)["input_ids"]
            start = at - len(pieces) + 1 if span_token == "last" else at
            assert ids[start : start + len(pieces)] == pieces, (span_token, animal, ids, at)
            piece = bpe.decode([ids[at]])  # e.g. "t" of " cat" (last), " c" (first)
            if span_token == "last":
                assert animal.endswith(piece) and piece != animal, (animal, piece)
            else:
                assert piece.startswith(" ") and animal.startswith(piece[1:]) and piece[1:] != animal, (animal, piece)
            sides += 1
    assert sides == 2 * len(rows)
