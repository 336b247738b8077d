"""Per-pair test outcomes of every featurizer of a fitted group (validity/outcomes.py).

Each featurizer's outcomes are checked against a hand interchange done with plain PyTorch
forward hooks (the source's activation captured from a source run, written at the base's
index), the trained intervention's against the Trainer's own ``test/iia``, and the cached way
against the hooked way on the same site and bases. The pairs are left-padded rows whose key
word stands at a different index in every base and source (tests/test_row_positions.py), so
per-row positions and position ids are exercised throughout.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from conftest import VOCAB
from test_row_positions import KEY, KeyWordRows
from test_sequence_answers import (
    bpe_tokenizer,
    hand_log_prob,
    real,
    rows,
    settings,
    unpadded,
    write_jsonl,
)

from das_train import cli
from das_train.data.pair_contract import (
    BASE_IDS,
    BASE_LABEL,
    BASE_MASK,
    BASE_POSITIONS,
    CANDIDATE_ANSWER_IDS,
    COUNTERFACTUAL_ANSWER_IDS,
    COUNTERFACTUAL_LABEL,
    SOURCE_IDS,
    SOURCE_MASK,
    SOURCE_POSITIONS,
)
from das_train.data.pair_datamodule import PairDataModule
from das_train.data.pair_inputs import model_inputs
from das_train.tasks.pairs import PairsTask
from das_train.training import run as run_module
from das_train.training.probe_results import ProbeResult
from das_train.training.sweep import group_fit
from das_train.training.sweep.cached_pairs import SplitReader
from das_train.training.sweep.group_fit import Sweep, build_member
from das_train.training.sweep.sites import SweepSite
from das_train.training.validity import full_vector_basis, group_outcomes, random_subspace
from das_train.training.validity import outcomes as outcomes_module

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*LeafSpec.*", "ignore:.*does not have many workers.*", "ignore:.*val_dataloader.*",
    "ignore:.*ModelCheckpoint with manual optimization.*",
)

RANK = 2


def run_config(tmp_path, *extra, recipe="gender_tiny"):
    return run_module.as_run_config(cli.check(recipe, [
        f"run_dir={tmp_path}", "progress=false", "logger=none", "trainer.max_steps=12", "trainer.batch_size=16",
        f"intervention.low_rank_dimension={RANK}", *extra]))


def make_sweep(tmp_path, model, datamodule, jobs, *extra, recipe="gender_tiny") -> Sweep:
    """A sweep over ``datamodule``'s pairs with no probes fitted (the rows need none here)."""
    datamodule.setup()
    spec = datamodule.spec()
    probes = {(site.layer, site.component, site.position, seed): ProbeResult(0.0, 0.0) for site, seed in jobs}
    return Sweep(run_config(tmp_path, *extra, recipe=recipe), model, datamodule, spec, tmp_path,
                 SplitReader(datamodule, spec.is_language_model_task), probes)


def neox():
    """A tiny GPT-NeoX whose next token varies with the input (weights drawn wider than the
    default 0.02, whose model says one token whatever it reads)."""
    torch.manual_seed(0)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32, vocab_size=VOCAB,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=0, initializer_range=0.2)).eval()


def key_word_sweep(tmp_path, jobs, *extra) -> Sweep:
    """:class:`KeyWordRows` labelled by the tiny NeoX itself (so IIAs differ by site); 40 test
    pairs, batches of 16 (the last one short)."""
    model = neox()
    datamodule = PairDataModule(KeyWordRows(labeller=model), None, n_train=64, n_val=16, n_test=40,
                                batch_size=16, seed=0, filter_pairs=False)
    return make_sweep(tmp_path, model, datamodule, jobs, *extra)


def split_of(sweep: Sweep) -> dict[str, torch.Tensor]:
    return sweep.splits.columns("test")


def bases_for(width: int) -> dict[str, torch.Tensor]:
    return {"random_subspace": random_subspace(width, RANK, seed=3), "full_vector": full_vector_basis(width)}


# -- hand oracles ---------------------------------------------------------------------------------


def _hooked(module, read=None, write=None):
    """A plain forward hook on ``module`` reading its output (first item) or replacing it."""

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if read is not None:
            read(hidden)
            return None
        hidden = write(hidden.clone())
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return module.register_forward_hook(hook)


@torch.no_grad()
def hand_predictions(model, module, columns, position, basis, cols=None) -> torch.Tensor:
    """Each pair's next-token argmax after ``b + (s - b) Q Q^T`` on ``module``'s output at
    ``position`` (each row's own index for a RowPosition), on columns ``cols`` of it (all when
    ``None``): a source run captures ``s``, a base run writes ``b'``."""
    n = len(columns[BASE_IDS])
    rows = torch.arange(n)

    def index(side_positions, mask):
        if isinstance(position, int):
            return torch.full((n,), position % mask.shape[1])
        return side_positions[:, position.column]

    at_source = index(columns.get(SOURCE_POSITIONS), columns[SOURCE_MASK])
    at_base = index(columns.get(BASE_POSITIONS), columns[BASE_MASK])
    cols = slice(None) if cols is None else cols
    seen = {}
    handle = _hooked(module, read=lambda hidden: seen.update(s=hidden[rows, at_source][:, cols].clone()))
    try:
        model(**model_inputs(columns, "source", True))
    finally:
        handle.remove()

    def write(hidden):
        b = hidden[rows, at_base][:, cols]
        edited = hidden[rows, at_base]
        edited[:, cols] = b + (seen["s"] - b) @ basis @ basis.T
        hidden[rows, at_base] = edited
        return hidden

    handle = _hooked(module, write=write)
    try:
        return model(**model_inputs(columns, "base", True)).logits[:, -1].argmax(-1)
    finally:
        handle.remove()


# -- fixed bases against the hand interchange ------------------------------------------------------


@pytest.mark.parametrize("way", ["cached", "hooked"])
def test_fixed_bases_give_the_hand_interchanges_predictions_on_every_pair(tmp_path, monkeypatch, way):
    """Layer 1's block output at the key word (a RowPosition) and at the last token, two seeds;
    the changing pairs are those whose labels differ."""
    if way == "hooked":
        monkeypatch.setattr(outcomes_module, "cached_way", lambda *_: False)
    jobs = [(SweepSite(1, "block_output", p, name), seed) for p, name in ((KEY, "key"), (-1, "last"))
            for seed in (0, 1)]
    sweep = key_word_sweep(tmp_path, jobs)
    model, columns = sweep.model, split_of(sweep)
    members = [build_member(sweep.config.intervention, model, site, seed, True) for site, seed in jobs]
    model.train()  # the outcomes are read in eval mode, and the owner's mode comes back
    state = torch.random.get_rng_state()
    found = group_outcomes(sweep, jobs, members, [bases_for(16)] * len(jobs))
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), state)  # the sweep's later seeding is untouched
    model.eval()
    changing = columns[COUNTERFACTUAL_LABEL] != columns[BASE_LABEL]
    assert 0 < int(changing.sum()) < len(changing)
    target = columns[COUNTERFACTUAL_LABEL]
    for (site, _), outcome in zip(jobs, found):
        assert torch.equal(outcome.changing, changing)
        assert list(outcome.correct) == ["das", "random_subspace", "full_vector"]
        for name, basis in bases_for(16).items():
            hand = hand_predictions(model, model.gpt_neox.layers[1], columns, site.position, basis) == target
            assert torch.equal(outcome.correct[name], hand), (site.key, name)
    # A full interchange at the key word carries the source's answer; the last token's differs.
    assert not torch.equal(found[0].correct["full_vector"], found[2].correct["full_vector"])


def test_the_cached_and_hooked_ways_agree_on_trained_members_too(tmp_path, monkeypatch):
    jobs = [(SweepSite(0, "mlp_output", p, name), 0) for p, name in ((KEY, "key"), (-1, "last"))]
    sweep = key_word_sweep(tmp_path, jobs)
    members = [build_member(sweep.config.intervention, sweep.model, site, seed, True) for site, seed in jobs]
    for member in members:  # any rotation but the initial one
        weight = member.intervention.rotate_layer.weight
        member.intervention.rotate_layer.weight = torch.linalg.qr(weight + 0.5 * torch.randn_like(weight))[0]
    cached = group_outcomes(sweep, jobs, members, [bases_for(16)] * 2)
    monkeypatch.setattr(outcomes_module, "cached_way", lambda *_: False)
    hooked = group_outcomes(sweep, jobs, members, [bases_for(16)] * 2)
    for c, h in zip(cached, hooked):
        assert torch.equal(c.changing, h.changing) and c.correct.keys() == h.correct.keys()
        for name in c.correct:
            assert torch.equal(c.correct[name], h.correct[name]), name


def test_a_fused_query_slice_takes_the_hooked_way_and_interchanges_the_query_columns(tmp_path):
    """NeoX's query is a slice of its fused q/k/v projection, laid out (heads, 3, head_dim): the
    cache cannot read it, so the hook core interchanges it."""
    jobs = [(SweepSite(0, "query_output", KEY, "key"), 0)]
    sweep = key_word_sweep(tmp_path, jobs)
    assert not outcomes_module.cached_way(sweep, jobs)
    member = build_member(sweep.config.intervention, sweep.model, jobs[0][0], 0, True)
    basis = random_subspace(16, 3, seed=5)
    (found,) = group_outcomes(sweep, jobs, [member], [{"random_subspace": basis}])
    heads, head_dim = 4, 4
    query = torch.cat([torch.arange(h * 3 * head_dim, h * 3 * head_dim + head_dim) for h in range(heads)])
    columns = split_of(sweep)
    module = sweep.model.gpt_neox.layers[0].attention.query_key_value
    hand = hand_predictions(sweep.model, module, columns, KEY, basis, cols=query) == columns[COUNTERFACTUAL_LABEL]
    assert torch.equal(found.correct["random_subspace"], hand)
    assert 0 < int(hand.sum()) < len(hand)


# -- the trained intervention against the Trainer's test ---------------------------------------------


def fitted(monkeypatch, sweep, jobs, batched):
    """``fit_group``'s rows and the members it fitted."""
    kept = []
    fit_class = group_fit.BatchedFit if batched else group_fit.OneSiteFit

    class Keeping(fit_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            kept.append(self.members)

    monkeypatch.setattr(group_fit, fit_class.__name__, Keeping)
    rows = group_fit.fit_group(sweep, jobs, batched)
    return rows, kept[0]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "one_site"])
def test_the_trained_members_iia_is_the_trainers_test_iia(tmp_path, monkeypatch, batched):
    sites = [SweepSite(1, "block_output", KEY, "key"), SweepSite(1, "block_output", -1, "last")]
    jobs = [(site, seed) for site in sites for seed in (0, 1)] if batched else [(sites[0], 0)]
    sweep = key_word_sweep(tmp_path, jobs)
    rows, members = fitted(monkeypatch, sweep, jobs, batched)
    found = group_outcomes(sweep, jobs, members, [{}] * len(jobs))
    for row, outcome in zip(rows, found):
        assert list(outcome.correct) == ["das"] and len(outcome.correct["das"]) == row["test_pairs"] == 40
        assert outcome.correct["das"].float().mean().item() == pytest.approx(row["iia"], abs=1e-6)
    assert len({row["iia"] for row in rows}) > 1 or not batched  # the sites differ


# -- whole answers -------------------------------------------------------------------------------


@torch.no_grad()
def hand_sequence_correct(model, batch, row: int, basis: torch.Tensor, layer: int) -> bool:
    """Row ``row``'s best candidate (summed log-probability, plain forwards on the unpadded
    prompt) after the interchange at the verb is the counterfactual answer."""
    source = unpadded(batch[SOURCE_IDS][row], batch[SOURCE_MASK][row])
    at_source = int(batch[SOURCE_POSITIONS][row, 0]) - int((batch[SOURCE_MASK][row] == 0).sum())
    at_base = int(batch[BASE_POSITIONS][row, 0]) - int((batch[BASE_MASK][row] == 0).sum())
    seen = {}
    handle = _hooked(model.transformer.h[layer], read=lambda hidden: seen.update(s=hidden[0, at_source].clone()))
    try:
        model(source[None])
    finally:
        handle.remove()

    def write(_module, _args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        b = hidden[0, at_base]
        hidden[0, at_base] = b + (seen["s"] - b) @ basis @ basis.T
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    prompt = unpadded(batch[BASE_IDS][row], batch[BASE_MASK][row])
    scores = torch.stack([hand_log_prob(model, prompt, real(c), [(layer, write)])
                          for c in batch[CANDIDATE_ANSWER_IDS][row]])
    chosen = real(batch[CANDIDATE_ANSWER_IDS][row][int(scores.argmax())])
    return chosen == real(batch[COUNTERFACTUAL_ANSWER_IDS][row])


def test_sequence_mode_scores_whole_answers_and_changing_compares_the_answers(tmp_path):
    tokenizer = bpe_tokenizer()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=4,
                                       n_positions=64)).eval()
    lines = rows() + [{**r, "counterfactual_label": r["base_label"]} for r in rows()[:4]]  # some unchanged
    path = write_jsonl(tmp_path / "pairs.jsonl", lines)
    task = PairsTask(settings(path))
    datamodule = PairDataModule(task, tokenizer, n_train=6, n_val=2, n_test=8, batch_size=4, seed=0,
                                filter_pairs=False)
    jobs = [(SweepSite(1, "block_output", KEY, "verb"), 0)]
    sweep = make_sweep(tmp_path, model, datamodule, jobs, f"task.path={path}", "task.answer_score=sequence", "task.positions={verb:is,last:last}",
                       recipe="pairs_file")
    assert not outcomes_module.cached_way(sweep, jobs)
    member = build_member(sweep.config.intervention, model, jobs[0][0], 0, True)
    bases = {"random_subspace": random_subspace(32, RANK, seed=1), "full_vector": full_vector_basis(32)}
    (found,) = group_outcomes(sweep, jobs, [member], [bases])
    batch = datamodule.datasets["test"].with_format("torch")[:]
    answers_differ = [real(b) != real(c) for b, c in zip(batch["base_answer_ids"], batch[COUNTERFACTUAL_ANSWER_IDS])]
    assert found.changing.tolist() == answers_differ and not all(answers_differ)
    assert list(found.correct) == ["das", "random_subspace", "full_vector"]
    basis = bases["random_subspace"]
    hand = [hand_sequence_correct(model, batch, i, basis, layer=1) for i in range(len(answers_differ))]
    assert found.correct["random_subspace"].tolist() == hand


# -- bad input -----------------------------------------------------------------------------------


def test_bad_groups_are_refused_naming_what_is_wrong(tmp_path):
    site = SweepSite(1, "block_output", -1, "last")
    jobs = [(site, 0), (SweepSite(0, "block_output", -1, "last"), 0)]
    sweep = key_word_sweep(tmp_path, jobs)
    member = build_member(sweep.config.intervention, sweep.model, site, 0, True)
    with pytest.raises(ValueError, match="one member and one set of bases per job"):
        group_outcomes(sweep, jobs[:1], [member, member], [{}])
    with pytest.raises(ValueError, match=r"share one \(layer, component\)"):
        group_outcomes(sweep, jobs, [member, member], [{}, {}])
    with pytest.raises(ValueError, match="'das' names the trained intervention"):
        group_outcomes(sweep, jobs[:1], [member], [{"das": full_vector_basis(16)}])
    with pytest.raises(ValueError, match="4 rows but the site's activation is 16 wide"):
        group_outcomes(sweep, jobs[:1], [member], [{"pca": torch.eye(4)[:, :2]}])
