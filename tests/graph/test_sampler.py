import dgl
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sea_dist.errors import DataError
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.sampler import (
    BlockSampler,
    check_negatives_exist,
    negative_pool,
    sample_batch,
    sample_negatives,
)
from tests.graph.conftest import full_output, model_output, random_interactions


@st.composite
def seen_sets(draw):
    num_items = draw(st.integers(2, 80))
    num_users = draw(st.integers(1, 8))
    # User 0 has seen all but a few items; the others anything short of everything.
    keep_free = draw(st.integers(1, min(3, num_items - 1)))
    free = draw(st.permutations(range(num_items)))[:keep_free]
    seen = [sorted(set(range(num_items)) - set(free))]
    for _ in range(num_users - 1):
        mask = draw(st.lists(st.booleans(), min_size=num_items, max_size=num_items))
        if all(mask):
            mask[draw(st.integers(0, num_items - 1))] = False
        seen.append([i for i, m in enumerate(mask) if m])
    return num_items, seen


@settings(max_examples=150, deadline=None)
@given(data=seen_sets(), num_negatives=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       pool_name=st.sampled_from(["train_items", "all_items"]))
def test_negatives_never_hit_a_training_item(data, num_negatives, seed, pool_name):
    num_items, seen = data
    users = np.array([u for u, items in enumerate(seen) for _ in items], dtype=np.int64)
    items = np.array([i for items in seen for i in items], dtype=np.int64)
    graph = build_graph(len(seen), num_items, users, items)
    pool = negative_pool(graph, pool_name)
    allowed = set(range(num_items)) if pool is None else set(items.tolist())
    # Under train_items a user may have seen the whole pool (the loader refuses such data).
    drawable = [u for u in range(len(seen)) if allowed - set(seen[u])]
    batch_users = np.repeat(np.array(drawable, dtype=np.int64), 50)
    neg = sample_negatives(graph, batch_users, num_negatives, np.random.default_rng(seed), pool)
    assert neg.shape == (len(batch_users), num_negatives)
    for u, row in zip(batch_users.tolist(), neg.tolist()):
        assert set(row) <= allowed - set(seen[u])
    # 200 draws for the heavy user's <= 3 free items: each shows up (miss prob < 3 (2/3)^200).
    if 0 in drawable:
        assert set(neg[batch_users == 0].ravel().tolist()) == allowed - set(seen[0])


def two_users(num_items: int, seen0: np.ndarray, seen1: np.ndarray):
    users = np.repeat(np.arange(2), [len(seen0), len(seen1)])
    return build_graph(2, num_items, users, np.concatenate([seen0, seen1]))


def test_train_items_pool_is_uniform_over_unseen_training_items():
    seen0 = np.array([0, 3, 4, 5, 17, 30, 31])
    seen1 = np.arange(0, 40, 2)  # items 40..49 and most odd items appear in no training row
    graph = two_users(50, seen0, seen1)
    pool = negative_pool(graph, "train_items")
    np.testing.assert_array_equal(pool, np.union1d(seen0, seen1))
    user0 = np.zeros(1, dtype=np.int64)
    neg = sample_negatives(graph, user0, 34_000, np.random.default_rng(0), pool)
    counts = np.bincount(neg.ravel(), minlength=50)
    allowed = np.setdiff1d(pool, seen0)  # 17 items
    assert counts.sum() == counts[allowed].sum()
    expected = neg.size / len(allowed)  # 2000 per item
    chi2 = (((counts[allowed] - expected) ** 2) / expected).sum()
    assert chi2 < 40  # chi-square, 16 degrees of freedom: P(> 40) < 1e-3


def test_all_items_pool_also_draws_items_absent_from_training():
    graph = two_users(50, np.array([0, 3, 4]), np.arange(0, 40, 2))
    assert negative_pool(graph, "all_items") is None
    neg = sample_negatives(graph, np.zeros(1, dtype=np.int64), 5000, np.random.default_rng(0))
    counts = np.bincount(neg.ravel(), minlength=50)
    assert (counts[40:] > 0).all() and (counts[[0, 3, 4]] == 0).all()


def test_negatives_are_uniform_over_unseen_items():
    num_items = 50
    seen = np.array([0, 3, 4, 5, 17, 30, 31, 49])
    graph = build_graph(1, num_items, np.zeros(len(seen), dtype=np.int64), seen)
    neg = sample_negatives(graph, np.zeros(1, dtype=np.int64), 84_000, np.random.default_rng(0)).ravel()
    counts = np.bincount(neg, minlength=num_items)
    assert (counts[seen] == 0).all()
    unseen = np.setdiff1d(np.arange(num_items), seen)
    expected = len(neg) / len(unseen)  # 2000 per item; std ~ 44
    chi2 = (((counts[unseen] - expected) ** 2) / expected).sum()
    assert chi2 < 80  # chi-square, 41 degrees of freedom: P(> 80) < 1e-3


def test_a_user_with_every_item_is_an_error():
    graph = build_graph(2, 3, np.array([0, 0, 0, 1]), np.array([0, 1, 2, 1]))
    with pytest.raises(DataError, match="user 0 interacted with all 3 items"):
        check_negatives_exist(graph)
    # Item 3 is in no training row: user 0 has a negative among all items, none in training.
    graph = build_graph(2, 4, np.array([0, 0, 0, 1]), np.array([0, 1, 2, 1]))
    check_negatives_exist(graph, negative_pool(graph, "all_items"))
    with pytest.raises(DataError, match="all 3 items that appear in training"):
        check_negatives_exist(graph, negative_pool(graph, "train_items"))


@pytest.fixture
def setup():
    data = random_interactions(num_users=60, num_items=45, seed=1)
    graph = build_graph(data.num_users, data.num_items, data.users, data.items)
    item_graph = build_item_graph(data.features, None, 4, "exact", 1000)
    x_all = torch.randn(graph.num_nodes, 8, generator=torch.Generator().manual_seed(0)).double()
    return data, graph, item_graph, x_all


@pytest.mark.parametrize("hops", [1, 2])
def test_fanout_all_equals_full_graph(setup, hops):
    data, graph, item_graph, x_all = setup
    sampler = BlockSampler(graph, ["all", "all"])
    edge_ids = np.random.default_rng(0).choice(graph.num_edges, 16, replace=False)
    batch = sample_batch(graph, sampler, item_graph.power(hops), edge_ids, 2, np.random.default_rng(1))
    for block in batch.blocks:  # destination nodes are a prefix of the source nodes
        assert block.num_dst <= len(block.src_nodes)
    torch.testing.assert_close(batch.blocks[-1].dst_nodes, batch.output_nodes)
    torch.testing.assert_close(batch.blocks[0].src_nodes, batch.input_nodes)
    got = model_output(batch, x_all.float())
    want = full_output(data, item_graph, hops, 2, x_all).float()
    for positions in (batch.users, batch.pos_items, batch.neg_items.ravel(), batch.loss_items):
        torch.testing.assert_close(got[positions], want[batch.output_nodes[positions]], atol=1e-5, rtol=1e-5)
    ids = batch.output_nodes
    np.testing.assert_array_equal(ids[batch.users].numpy(), graph.edge_users(edge_ids))
    np.testing.assert_array_equal(ids[batch.pos_items].numpy() - graph.num_users, graph.edge_items(edge_ids))


@pytest.mark.parametrize("method, item_fanout", [("neighbor", "all"), ("labor", "all"), ("neighbor", 2)])
def test_finite_fanouts_are_unbiased(setup, method, item_fanout):
    data, graph, item_graph, x_all = setup
    assert np.median(graph.degrees) > 2  # fanout 2 really subsamples
    assert np.diff(item_graph.indptr).min() > 2  # and item fanout 2 too
    sampler = BlockSampler(graph, [2, 2], method)
    edge_ids = np.arange(0, graph.num_edges, 7)
    want = full_output(data, item_graph, 1, 2, x_all)
    targets = np.unique(np.concatenate([graph.edge_users(edge_ids), graph.edge_items(edge_ids) + graph.num_users]))
    total = torch.zeros(len(targets), x_all.shape[1], dtype=torch.float64)
    errors = {}
    for draw in range(1, 401):
        dgl.seed(draw)
        sampler.seed(draw)
        batch = sample_batch(graph, sampler, item_graph, edge_ids, 1, np.random.default_rng(draw),
                             item_fanout=item_fanout)
        out = model_output(batch, x_all.float()).double()
        total += out[np.searchsorted(batch.output_nodes.numpy(), targets)]
        if draw in (25, 400):
            errors[draw] = float((total / draw - want[targets]).norm() / want[targets].norm())
    single = float((out[np.searchsorted(batch.output_nodes.numpy(), targets)] - want[targets]).norm()
                   / want[targets].norm())
    assert single > 0.05  # one draw really is noisy
    # The error of the mean shrinks like 1/sqrt(draws): expected ratio 1/4.
    assert errors[400] < 0.5 * errors[25]
    assert errors[400] < 0.06  # one draw: ~0.6, so ~0.03 expected at 400


def test_labor_reaches_fewer_nodes_than_neighbour_sampling_at_the_same_fanout():
    # Many destinations sharing a few hubs: LABOR's per-source variates make them pick the same.
    rng = np.random.default_rng(0)
    users = rng.integers(0, 400, 8000)
    items = rng.zipf(1.3, 8000) % 300
    graph = build_graph(400, 300, users, items)
    seeds = np.arange(0, 400, 2)
    counts = {}
    for method in ("neighbor", "labor"):
        sampler = BlockSampler(graph, [3, 3], method)
        sizes = []
        for draw in range(20):
            dgl.seed(draw)
            sampler.seed(draw)
            sizes.append(len(sampler.sample(seeds)[0]))
        counts[method] = np.mean(sizes)
    assert counts["labor"] < 0.9 * counts["neighbor"]


def test_labor_is_reproducible_from_its_seed(setup):
    _, graph, _, _ = setup
    sampler = BlockSampler(graph, [2, 2], "labor")
    seeds = np.arange(0, graph.num_nodes, 5)
    runs = []
    for _ in range(2):
        sampler.seed(42)
        nodes, blocks = sampler.sample(seeds)
        runs.append((nodes, blocks[0].adj.to_dense()))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])


def test_item_fanout_bounds_the_item_hop(setup):
    data, graph, item_graph, _ = setup
    edge_ids = np.arange(0, graph.num_edges, 3)
    sampler = BlockSampler(graph, [2, 2])
    exact = sample_batch(graph, sampler, item_graph, edge_ids, 1, np.random.default_rng(0))
    sampled = sample_batch(graph, sampler, item_graph, edge_ids, 1, np.random.default_rng(0), item_fanout=1)
    batch_items = len(sampled.loss_items)
    # one entry per batch item's row (rows of one entry are whole), so at most one neighbour each
    assert sampled.item_graph.num_edges <= batch_items
    assert exact.item_graph.num_edges > 2 * batch_items
    # each row's weights still sum to the row's total |S| (a single draw carries all of it)
    rows = exact.item_graph.adj.to_dense().sum(1)
    got = sampled.item_graph.adj.to_dense().sum(1)
    ids_exact, ids_sampled = exact.output_nodes.numpy(), sampled.output_nodes.numpy()
    for pos in sampled.loss_items.tolist():
        node = ids_sampled[pos]
        assert abs(float(got[pos]) - float(rows[np.searchsorted(ids_exact, node)])) < 1e-5
