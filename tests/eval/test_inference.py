"""Layer-wise inference gives every model's full-graph representations, and the same metrics.

The reference is today's evaluation: ``model.node_embeddings`` on the full-graph batch, ranked
with every user's rows. Chunks are small here so that every layer spans several chunks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sea_dist.config import LightGCNCfg, MENTORCfg, SEACfg, SGFDCfg, VBPRCfg
from sea_dist.eval.evaluator import Evaluator
from sea_dist.eval.inference import all_finite, gather_users, layerwise_embeddings
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.loader import full_graph_batch
from sea_dist.graph.slices import GraphSlices
from sea_dist.models.registry import build_model, resolve_item_labels
from tests.ranks import run_ranks

MODELS = {
    "lightgcn": LightGCNCfg(embedding_dim=16),
    "vbpr": VBPRCfg(embedding_dim=16),
    "sea": SEACfg(name="sea", embedding_dim=16, feature_hidden=32),
    "sand": SEACfg(name="sand", embedding_dim=16, feature_hidden=32, num_layers=3),
    "mentor": MENTORCfg(embedding_dim=16, feature_hidden=32),
    "sea+sgfd": SEACfg(
        name="sea", embedding_dim=16, feature_hidden=32, sgfd=SGFDCfg(num_clusters=4)
    ),
    "vbpr+sgfd": VBPRCfg(embedding_dim=16, sgfd=SGFDCfg(num_clusters=4)),
    "mentor+sgfd": MENTORCfg(embedding_dim=16, feature_hidden=32, sgfd=SGFDCfg(num_clusters=4)),
}


def item_hops(cfg) -> int:
    return 0 if cfg.name == "lightgcn" else 1


def parts(store):
    users, items = store.edges(0)
    graph = build_graph(store.num_users, store.num_items, users, items)
    features = {m: store.features(m) for m in store.modalities}
    item_graph = build_item_graph(
        features, weights=None, k=5, method="exact", exact_max_items=10_000
    )
    return graph, item_graph, features


def make_model(store, features, cfg, seed: int = 0):
    torch.manual_seed(seed)
    dims = {m: int(f.shape[1]) for m, f in features.items()}
    labels = resolve_item_labels(cfg, store.labels(), features)
    return build_model(cfg, store.num_users, store.num_items, dims, labels)


def reference(model, graph, item_graph, features, cfg) -> torch.Tensor:
    full = full_graph_batch(
        graph, item_graph, features, item_hops(cfg), num_layers=getattr(cfg, "num_layers", 0)
    )
    model.eval()
    with torch.no_grad():
        emb = model.node_embeddings(full)
    model.train()
    return emb


@pytest.fixture(scope="module")
def data(tiny_store):
    return tiny_store, *parts(tiny_store)


@pytest.mark.parametrize("name", list(MODELS))
def test_layerwise_equals_full_graph_forward(data, name: str) -> None:
    store, graph, item_graph, features = data
    cfg = MODELS[name]
    model = make_model(store, features, cfg)
    want = reference(model, graph, item_graph, features, cfg)
    slices = GraphSlices(graph, item_graph, features, item_hops(cfg))
    got = layerwise_embeddings(model, slices, chunk_nodes=37)
    assert model.training  # the mode is restored
    assert got.user_start == 0 and got.users.shape == (store.num_users, want.shape[1])
    torch.testing.assert_close(got.users, want[: store.num_users], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.items, want[store.num_users :], atol=1e-5, rtol=1e-5)
    assert torch.equal(gather_users(got), got.users) and all_finite(got)


@pytest.mark.parametrize("name", list(MODELS))
def test_an_empty_chunk_is_fine(data, name: str) -> None:
    """A worker whose share is short runs empty chunks, to keep table lookups in step."""
    store, graph, item_graph, features = data
    model = make_model(store, features, MODELS[name]).eval()
    nodes = torch.zeros(0, dtype=torch.long)
    empty = {m: torch.zeros(0, f.shape[1]) for m, f in features.items()}
    with torch.no_grad():
        x = model.inference_inputs(nodes, empty)
        out = model.inference_outputs(nodes, x)
    assert x.shape[0] == 0 and out.shape[0] == 0


def test_item_hop_and_layers_change_the_result(data) -> None:
    """The comparison above can fail: without the item hop, or a layer short, rows differ."""
    store, graph, item_graph, features = data
    cfg = MODELS["sea"]
    model = make_model(store, features, cfg)
    want = reference(model, graph, item_graph, features, cfg)
    no_hop = layerwise_embeddings(
        model, GraphSlices(graph, item_graph, features, 0), chunk_nodes=37
    )
    assert torch.allclose(no_hop.users, want[: store.num_users], atol=1e-5)  # users: no hop
    assert not torch.allclose(no_hop.items, want[store.num_users :], atol=1e-3)
    model.params = type(model.params)(**{**vars(model.params), "num_layers": 1})
    one_layer = layerwise_embeddings(model, GraphSlices(graph, item_graph, features, 1))
    assert not torch.allclose(one_layer.users, want[: store.num_users], atol=1e-3)


def test_same_metrics_as_full_forward_evaluation(data) -> None:
    store, graph, item_graph, features = data
    cfg = MODELS["mentor"]
    model = make_model(store, features, cfg)
    emb = reference(model, graph, item_graph, features, cfg)
    evaluator = Evaluator(
        store.num_users, store.num_items, train=store.edges(0),
        splits={"valid": store.edges(1), "test": store.edges(2)}, ks=[5, 20], batch_users=64,
    )
    got = layerwise_embeddings(model, GraphSlices(graph, item_graph, features, 1), chunk_nodes=50)
    for split in ("valid", "test"):
        want = evaluator.evaluate(emb[: store.num_users], emb[store.num_users :], split)
        mine = evaluator.evaluate(got.users, got.items, split, user_start=got.user_start)
        assert mine.keys() == want.keys()
        for key in want:
            assert mine[key] == pytest.approx(want[key], abs=1e-5), key
    # Rows that do not tile the users are refused, not silently under-counted.
    with pytest.raises(ValueError, match="cover 100 of 300 users"):
        evaluator.evaluate(got.users[:100], got.items, "valid", user_start=0)
    with pytest.raises(ValueError, match="outside 0..299"):
        evaluator.evaluate(got.users[:100], got.items, "valid", user_start=250)


# --- several real gloo processes -------------------------------------------------------------

# Models with row-sharded tables (lookups are collectives, so every rank must run as many
# chunks as the others) and replicated ones; LightGCN's one table is not cut like the shares.
DIST_MODELS = {"lightgcn": True, "vbpr": True, "sea": True, "mentor": False}
SAMPLE = {"users_sample": 41, "seed": 3}


def _evaluator(store) -> Evaluator:
    return Evaluator(
        store.num_users, store.num_items, train=store.edges(0),
        splits={"valid": store.edges(1), "test": store.edges(2)}, ks=[5, 20], batch_users=16,
    )


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    from sea_dist.data.store import open_store
    from sea_dist.train.sharding import shard_tables

    store = open_store(store_path)
    graph, item_graph, features = parts(store)
    evaluator = _evaluator(store)
    for name, sharded in DIST_MODELS.items():
        cfg = MODELS[name]
        model = make_model(store, features, cfg)
        if sharded:
            shard_tables(model, rank, world)
        slices = GraphSlices(graph, item_graph, features, item_hops(cfg))
        emb = layerwise_embeddings(model, slices, chunk_nodes=33)
        metrics = {
            split: evaluator.evaluate(emb.users, emb.items, split, user_start=emb.user_start)
            for split in ("valid", "test")
        }
        metrics["sampled"] = evaluator.evaluate(
            emb.users, emb.items, "test", user_start=emb.user_start, **SAMPLE
        )
        out = {
            "user_start": emb.user_start, "users": emb.users, "items": emb.items,
            "metrics": metrics, "all_users": gather_users(emb), "finite": all_finite(emb),
        }
        torch.save(out, Path(out_dir, f"{name}-{rank}.pt"))


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_ranks_share_the_rows_and_give_one_process_metrics(
    data, tmp_path: Path, world: int
) -> None:
    store, graph, item_graph, features = data
    run_ranks(_worker, world, str(store.path), str(tmp_path))
    evaluator = _evaluator(store)
    for name in DIST_MODELS:
        cfg = MODELS[name]
        want = reference(make_model(store, features, cfg), graph, item_graph, features, cfg)
        users, items = want[: store.num_users], want[store.num_users :]
        ranks = [torch.load(tmp_path / f"{name}-{r}.pt") for r in range(world)]
        # Each rank computed its own contiguous users, the ranks together all of them.
        starts = [r["user_start"] for r in ranks]
        block = -(-store.num_users // world)
        assert starts == [min(r * block, store.num_users) for r in range(world)]
        assert sum(len(r["users"]) for r in ranks) == store.num_users
        for r in ranks:
            rows = users[r["user_start"] : r["user_start"] + len(r["users"])]
            torch.testing.assert_close(r["users"], rows, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r["items"], items, atol=1e-5, rtol=1e-5)
            assert r["finite"]
        torch.testing.assert_close(ranks[0]["all_users"], users, atol=1e-5, rtol=1e-5)
        assert all(r["all_users"] is None for r in ranks[1:])
        single = {
            split: evaluator.evaluate(users, items, split) for split in ("valid", "test")
        }
        single["sampled"] = evaluator.evaluate(users, items, "test", **SAMPLE)
        for r in ranks:
            for split, metrics in single.items():
                got = r["metrics"][split]
                assert got.keys() == metrics.keys()
                for key, value in metrics.items():
                    assert got[key] == pytest.approx(value, abs=1e-5), (name, split, key)
