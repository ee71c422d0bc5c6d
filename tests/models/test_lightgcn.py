import pytest
import torch

from sea_dist.models.lightgcn import LightGCN

from tests.models.toy_graph import ToyGraph


def make(toy: ToyGraph, num_layers: int, reg_weight: float = 1e-4) -> LightGCN:
    torch.manual_seed(0)
    return LightGCN(toy.num_users, toy.num_items, 8, num_layers, reg_weight)


@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_mean_over_layers_matches_dense(toy: ToyGraph, num_layers: int) -> None:
    model = make(toy, num_layers)
    e0 = model.embedding.weight.detach()
    layers, h = [e0], e0
    for _ in range(num_layers):
        h = toy.a_hat @ h
        layers.append(h)
    expected = torch.stack(layers).mean(0)
    with torch.no_grad():
        emb = model.node_embeddings(toy.full_batch(num_layers, toy.triples(4)))
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)


def test_loss_is_bpr_plus_reg_on_layer0_rows(toy: ToyGraph) -> None:
    model = make(toy, 2, reg_weight=0.5)
    batch = toy.full_batch(2, toy.triples(6, num_negatives=2))
    out = model(batch)
    e0 = model.embedding.weight.detach()
    rows = [e0[batch.users], e0[batch.pos_items], e0[batch.neg_items]]
    reg = sum(float(r.pow(2).sum()) for r in rows) / (2 * batch.batch_size)
    assert float(out["reg"]) == pytest.approx(reg, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(float(out["bpr"]) + 0.5 * reg, rel=1e-5)


def test_ignores_features_and_item_graph(toy: ToyGraph) -> None:
    model = make(toy, 2)
    triples = toy.triples(4)
    plain = toy.full_batch(2, triples, item_graph=False)
    plain.item_features = {}
    with torch.no_grad():
        torch.testing.assert_close(
            model.node_embeddings(plain), model.node_embeddings(toy.full_batch(2, triples))
        )
    assert model.id_tables() == [model.embedding.weight]
