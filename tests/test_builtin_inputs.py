"""How pyvene's built-in MLP and GRU read their input: one helper, the same rules for both.

``inputs_embeds`` or ``wte(input_ids)``, plus ``wpe(position_ids)`` when given; token ids or
position ids without the embeddings (``include_emb=False``) are refused by name.
"""

from __future__ import annotations

import pytest
import torch

from das_train.core.builtin_gru import GRUConfig, GRUModel
from das_train.core.builtin_models import MLPConfig, MLPModel


def _mlp(include_emb: bool) -> MLPModel:
    config = MLPConfig(
        include_emb=include_emb,
        vocab_size=11,
        max_position_embeddings=5,
        n_layer=1,
        h_dim=4,
        pdrop=0.0,
    )
    return MLPModel(config).eval()


def _gru(include_emb: bool) -> GRUModel:
    return GRUModel(
        GRUConfig(
            include_emb=include_emb, vocab_size=11, max_position_embeddings=5, n_layer=1, h_dim=4
        )
    ).eval()


@pytest.mark.parametrize("build", [_mlp, _gru])
def test_token_ids_without_embeddings_are_refused_by_name(build):
    model = build(False)
    with pytest.raises(
        ValueError, match=f"{type(model).__name__} needs inputs_embeds, or input_ids"
    ):
        model(input_ids=torch.tensor([[1, 2]]))


@pytest.mark.parametrize("build", [_mlp, _gru])
def test_position_ids_without_embeddings_are_refused_by_name(build):
    model = build(False)
    with pytest.raises(
        ValueError, match=f"{type(model).__name__}: position_ids need include_emb=True"
    ):
        model(inputs_embeds=torch.zeros(1, 2, 4), position_ids=torch.tensor([[0, 1]]))


def test_mlp_input_is_token_plus_position_embedding():
    torch.manual_seed(0)
    model = _mlp(True)
    ids, positions = torch.tensor([[3, 7]]), torch.tensor([[0, 1]])
    states = model(input_ids=ids, position_ids=positions, output_hidden_states=True)
    expected = model.wte.weight[ids] + model.wpe.weight[positions]  # (1, 2, 4); dropout is 0
    torch.testing.assert_close(states[0], expected)


def test_gru_with_ids_equals_gru_with_their_embeddings():
    torch.manual_seed(0)
    model = _gru(True)
    ids, positions = torch.tensor([[3, 7, 1]]), torch.tensor([[0, 1, 2]])
    by_ids = model(input_ids=ids, position_ids=positions).hidden_states
    embeds = model.wte.weight[ids] + model.wpe.weight[positions]  # (1, 3, 4)
    torch.testing.assert_close(by_ids, model(inputs_embeds=embeds).hidden_states)
