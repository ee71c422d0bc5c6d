"""Full-graph and sampled modes run the same model code: with fanout "all" they agree."""

import numpy as np
import pytest
import torch

from sea_dist.config import LightGCNCfg, MENTORCfg, SEACfg, VBPRCfg
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.loader import MiniBatchLoader, full_graph_batch
from sea_dist.models.registry import build_model


@pytest.fixture(scope="module")
def parts(tiny_store):
    users, items = tiny_store.edges(0)
    graph = build_graph(tiny_store.num_users, tiny_store.num_items, users, items)
    features = {m: tiny_store.features(m) for m in tiny_store.modalities}
    item_graph = build_item_graph(
        features, weights=None, k=10, method="exact",
        exact_max_items=10_000,
    )
    return tiny_store, graph, item_graph, features


@pytest.mark.parametrize(
    "model_cfg",
    [SEACfg(name="sea"), SEACfg(name="sand"), LightGCNCfg(), VBPRCfg(), MENTORCfg()],
    ids=lambda c: c.name,
)
def test_sampled_with_all_fanouts_equals_full_graph(parts, model_cfg) -> None:
    store, graph, item_graph, features = parts
    torch.manual_seed(0)
    dims = {m: int(f.shape[1]) for m, f in features.items()}
    model = build_model(model_cfg, store.num_users, store.num_items, dims).eval()
    hops = 0 if model_cfg.name in ("lightgcn", "vbpr") else 1
    num_layers = model_cfg.num_layers
    full = full_graph_batch(graph, item_graph, features, hops, num_layers=num_layers)
    loader = MiniBatchLoader(
        graph, item_graph, features, mode="sampled", fanouts=["all"] * num_layers,
        num_layers=num_layers, item_hops=hops, batch_size=64, num_negatives=2, seed=3, prefetch=0,
        max_steps=3,
    )
    with torch.no_grad():
        reference = model.node_embeddings(full)
        for batch in loader:
            sampled = model.node_embeddings(batch)
            # Only batch rows are exact: extra kNN-neighbour rows lack their own item hop.
            rows = torch.cat([batch.users, batch.pos_items, batch.neg_items.reshape(-1)])
            ids = batch.output_nodes[rows]
            torch.testing.assert_close(sampled[rows], reference[ids], atol=1e-5, rtol=1e-5)


def test_sampled_batches_cover_distinct_seed_edges(parts) -> None:
    store, graph, item_graph, features = parts
    loader = MiniBatchLoader(
        graph, item_graph, features, mode="sampled", fanouts=[4, 4], num_layers=2, item_hops=1,
        batch_size=128, num_negatives=1, seed=0, prefetch=2,
    )
    seen = np.concatenate(loader.epoch_batches())
    assert np.array_equal(np.sort(seen), np.arange(graph.num_edges))
    assert sum(b.batch_size for b in loader) == graph.num_edges
