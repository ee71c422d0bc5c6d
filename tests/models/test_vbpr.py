"""VBPR against MMRec's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sea_dist.losses.ranking import norm_reg
from sea_dist.models.vbpr import VBPR

from tests.models.toy_graph import ToyGraph


def make_vbpr(toy: ToyGraph, reg_weight: float = 1e-4) -> VBPR:
    torch.manual_seed(0)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    return VBPR(toy.num_users, toy.num_items, dims, embedding_dim=8, reg_weight=reg_weight)


def test_items_are_id_vector_plus_a_linear_map_of_the_concatenated_features(
    toy: ToyGraph,
) -> None:
    model = make_vbpr(toy)
    with torch.no_grad():
        emb = model.node_embeddings(toy.full_batch(0, toy.triples(4)))
        # MMRec: one Linear over the concatenated features = the per-modality blocks summed.
        weight = torch.cat([model.projections[m].weight for m in model.modalities], dim=1)
        bias = sum(model.projections[m].bias for m in model.modalities)
        raw = torch.cat([toy.features[m] for m in model.modalities], dim=1)
        items = torch.cat([model.item_embedding.weight, F.linear(raw, weight, bias)], dim=1)
    assert emb.shape == (toy.num_nodes, 16)
    torch.testing.assert_close(emb[: toy.num_users], model.user_embedding.weight.detach())
    torch.testing.assert_close(emb[toy.num_users :], items, rtol=1e-5, atol=1e-6)


def test_item_graph_is_ignored(toy: ToyGraph) -> None:
    model = make_vbpr(toy)
    triples = toy.triples(4)
    with torch.no_grad():
        with_hop = model.node_embeddings(toy.full_batch(0, triples))
        without = model.node_embeddings(toy.full_batch(0, triples, item_graph=False))
    torch.testing.assert_close(with_hop, without)


def test_projection_init_matches_one_concatenated_xavier_normal(toy: ToyGraph) -> None:
    model = make_vbpr(toy)
    fan_in = sum(f.shape[1] for f in toy.features.values())
    weight = torch.cat([model.projections[m].weight for m in model.modalities], dim=1)
    expected_std = math.sqrt(2.0 / (fan_in + 8))
    assert float(weight.std()) == pytest.approx(expected_std, rel=0.25)
    for m in model.modalities:
        assert torch.count_nonzero(model.projections[m].bias) == 0


def test_loss_is_natural_log_bpr_plus_unsquared_norm_reg(toy: ToyGraph) -> None:
    model = make_vbpr(toy, reg_weight=0.5)
    batch = toy.full_batch(0, toy.triples(6, num_negatives=1))
    out = model(batch)
    emb = model.node_embeddings(batch).detach()
    u, p, n = emb[batch.users], emb[batch.pos_items], emb[batch.neg_items[:, 0]]
    bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    reg = (u.norm() + p.norm() + n.norm()) / len(u)
    assert float(out["bpr"]) == pytest.approx(float(bpr), rel=1e-5)
    assert float(out["reg"]) == pytest.approx(float(reg), rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(bpr + 0.5 * reg), rel=1e-5)


def test_norm_reg_divides_by_the_last_tensors_rows() -> None:
    a, b = torch.ones(4, 3), torch.ones(2, 3)
    assert float(norm_reg(a, b)) == pytest.approx((math.sqrt(12) + math.sqrt(6)) / 2)


def test_refuses_propagation_blocks(toy: ToyGraph) -> None:
    model = make_vbpr(toy)
    with pytest.raises(ValueError, match="blocks"):
        model.node_embeddings(toy.full_batch(1, toy.triples(4)))


def test_id_tables_are_the_free_vectors(toy: ToyGraph) -> None:
    model = make_vbpr(toy)
    expected = {id(model.user_embedding.weight), id(model.item_embedding.weight)}
    assert {id(p) for p in model.id_tables()} == expected
