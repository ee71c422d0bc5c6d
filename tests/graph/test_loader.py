import numpy as np
import pytest
import torch

from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.loader import MiniBatchLoader, full_graph_batch
from tests.graph.conftest import full_output, model_output, random_interactions


@pytest.fixture
def data(tmp_path):
    data = random_interactions(num_users=50, num_items=40, seed=2)
    # Features as the store hands them over: float16, memory-mapped.
    for name, feat in data.features.items():
        np.save(tmp_path / f"{name}.npy", feat.astype(np.float16))
        data.features[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    return data


def make_loader(data, **kwargs):
    graph = build_graph(data.num_users, data.num_items, data.users, data.items)
    dense = {m: np.asarray(f, dtype=np.float32) for m, f in data.features.items()
             if f.dtype != object}
    item_graph = build_item_graph(dense, None, 3, "exact", 1000)
    args = dict(mode="sampled", fanouts=[3, "all"], num_layers=2, item_hops=1, batch_size=16,
                num_negatives=2, seed=0, features=data.features)
    args.update(kwargs)
    return graph, item_graph, MiniBatchLoader(graph, item_graph, args.pop("features"), **args)


def batch_pairs(batch) -> list[tuple[int, int]]:
    ids = batch.output_nodes
    return list(zip(ids[batch.users].tolist(), (ids[batch.pos_items] - batch.num_users).tolist()))


def test_epoch_visits_every_seed_edge_once_and_reshuffles(data):
    graph, _, loader = make_loader(data)
    assert len(loader) == -(-graph.num_edges // 16)
    epochs = []
    for epoch in (0, 0, 1):
        loader.set_epoch(epoch)
        epochs.append([pair for batch in loader for pair in batch_pairs(batch)])
    users, items = graph.edges()
    assert sorted(epochs[0]) == sorted(zip(users.tolist(), items.tolist()))
    assert epochs[0] == epochs[1]
    assert epochs[0] != epochs[2] and sorted(epochs[0]) == sorted(epochs[2])


def test_sampled_batch_contents(data):
    graph, item_graph, loader = make_loader(data)
    batch = next(iter(loader))
    num_users = graph.num_users
    assert batch.neg_items.shape == (16, 2)
    ids = batch.output_nodes
    for u, negs in zip(ids[batch.users].tolist(), (ids[batch.neg_items] - num_users).tolist()):
        assert not set(negs) & set(graph.seen_items(u).tolist())
    batch_items = torch.cat([ids[batch.pos_items], ids[batch.neg_items].ravel()]).unique()
    torch.testing.assert_close(ids[batch.loss_items].sort().values, batch_items)
    # The item hop's neighbours are output nodes; its edges go only into batch items' rows.
    rows = batch.item_graph.adj.to_sparse_coo().indices()[0].unique()
    torch.testing.assert_close(ids[rows].sort().values, batch_items)
    for item in (batch_items - num_users).tolist():
        start, end = item_graph.indptr[item], item_graph.indptr[item + 1]
        assert set((item_graph.indices[start:end] + num_users).tolist()) <= set(ids.tolist())
    item_rows = batch.input_nodes[batch.input_is_item] - num_users
    for name, feat in data.features.items():
        got = batch.item_features[name]
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), np.asarray(feat[item_rows.numpy()], dtype=np.float32))


def test_full_mode_equals_dense_reference(data):
    graph, item_graph, loader = make_loader(data, mode="full", fanouts=[])
    batches = list(loader)
    first = batches[0]
    assert all(b is graph.full_block() for batch in batches for b in batch.blocks)
    assert all(batch.item_graph is first.item_graph for batch in batches)
    nodes = torch.arange(graph.num_nodes)
    torch.testing.assert_close(first.output_nodes, nodes)
    torch.testing.assert_close(first.loss_items, nodes[graph.num_users:])
    torch.testing.assert_close(first.output_nodes[first.users], first.users)  # positions == ids
    x_all = torch.randn(graph.num_nodes, 4, dtype=torch.float64)
    want = full_output(data, item_graph, 1, 2, x_all).float()
    torch.testing.assert_close(model_output(first, x_all.float()), want, atol=1e-5, rtol=1e-5)
    evaluation = full_graph_batch(graph, item_graph, data.features, 1, num_layers=2)
    assert evaluation.batch_size == 0 and len(evaluation.blocks) == 2
    torch.testing.assert_close(model_output(evaluation, x_all.float()), want, atol=1e-5, rtol=1e-5)
    assert set(evaluation.item_features) == set(data.features)
    assert evaluation.item_features["m0"].shape == (graph.num_items, 6)


@pytest.mark.parametrize("mode", ["sampled", "full"])
def test_negatives_come_from_the_training_items_by_default(data, mode):
    cold = data.num_items - 1  # in no training row (see random_interactions)
    fanouts = [3, "all"] if mode == "sampled" else []

    def drawn(**kwargs) -> set[int]:
        graph, _, loader = make_loader(data, mode=mode, fanouts=fanouts, **kwargs)
        items: set[int] = set()
        for epoch in range(3):
            loader.set_epoch(epoch)
            for batch in loader:
                neg = batch.output_nodes[batch.neg_items] - graph.num_users
                items |= set(neg.ravel().tolist())
        return items

    assert cold not in drawn() and cold not in drawn(negatives="train_items")
    assert cold in drawn(negatives="all_items")


def test_same_seed_same_batches(data):
    def assert_same(a, b):
        ids_a, ids_b = a.output_nodes, b.output_nodes
        for key in ("users", "pos_items", "neg_items"):
            torch.testing.assert_close(ids_a[getattr(a, key)], ids_b[getattr(b, key)])
        torch.testing.assert_close(a.input_nodes, b.input_nodes)
        for x, y in zip(a.blocks, b.blocks, strict=True):
            torch.testing.assert_close(x.adj.to_dense(), y.adj.to_dense())

    # Neighbour sampling included: any prefetch depth gives the same batches.
    _, _, inline = make_loader(data, prefetch=0, num_threads=1)
    _, _, ahead = make_loader(data, prefetch=3, num_threads=1)
    for a, b in zip(inline, ahead, strict=True):
        assert_same(a, b)
    # A restarted worker's loader starts at epoch 1: it must replay what epoch 1 gave after 0.
    inline.set_epoch(1)
    _, _, restarted = make_loader(data, prefetch=2, num_threads=1)
    restarted.set_epoch(1)
    epoch1 = list(restarted)
    for a, b in zip(inline, epoch1, strict=True):
        assert_same(a, b)
    _, _, other_seed = make_loader(data, prefetch=2, num_threads=1, seed=99)
    other_seed.set_epoch(1)
    assert any(not torch.equal(a.input_nodes, b.input_nodes) for a, b in zip(other_seed, epoch1))


def test_steps_per_epoch_cycles_and_max_steps_caps(data):
    graph, _, loader = make_loader(data, steps_per_epoch=40, batch_size=8, seed_edges=np.arange(20))
    batches = loader.epoch_batches()
    assert len(loader) == len(batches) == 40
    assert all(len(b) == 8 for b in batches)
    assert set(np.concatenate(batches).tolist()) == set(range(20))
    _, _, capped = make_loader(data, max_steps=2)
    assert len(capped) == 2 and len(list(capped)) == 2


def test_early_break_and_producer_errors(data):
    _, _, loader = make_loader(data, prefetch=1)
    for _ in loader:
        break  # batches built ahead are dropped; the next epoch starts cleanly
    assert len(list(loader)) == len(loader)
    # Text where numbers belong: the sampling thread fails, the consumer sees its error.
    data.features["m0"] = np.full(data.features["m0"].shape, "x", dtype=object)
    _, _, broken = make_loader(data, prefetch=2)
    with pytest.raises(ValueError, match="could not convert"):
        list(broken)


@pytest.mark.parametrize("kwargs,match", [
    ({"fanouts": [3]}, "1 fanouts for 2 layers"),
    ({"fanouts": [3, 0]}, "positive ints or 'all'"),
    ({"seed_edges": np.array([10_000])}, "seed_edges must be edge ids"),
    ({"mode": "minibatch"}, "mode must be"),
    ({"features": {"m0": np.ones((3, 2))}}, r"features\['m0'\] has shape \(3, 2\), expected \[40, d\]"),
])
def test_bad_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        list(make_loader(data, **kwargs)[2])
