import pickle

import numpy as np
import pytest
import torch

from sea_dist.graph.build import build_graph
from tests.graph.conftest import dense_a_hat, read_inter


def test_edges_and_degrees_match_input(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    pairs = set(zip(small.users.tolist(), small.items.tolist()))
    assert g.num_edges == len(pairs) == len(small.users) - 1  # the duplicate is kept once
    users, items = g.edges()
    assert set(zip(users.tolist(), items.tolist())) == pairs
    _, deg = dense_a_hat(small.num_users, small.num_items, small.users, small.items)
    np.testing.assert_array_equal(g.degrees, deg)
    assert g.degrees[-1] == 0  # the cold item
    assert g.dgl_graph.num_edges() == 2 * g.num_edges
    np.testing.assert_array_equal(g.dgl_graph.in_degrees().numpy(), deg)
    for u in range(small.num_users):
        seen = g.seen_items(u)
        assert np.all(np.diff(seen) > 0)
        assert set(seen.tolist()) == {i for uu, i in pairs if uu == u}


def test_edge_ids_address_user_item_pairs(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    ids = np.arange(g.num_edges)
    users, items = g.edges()
    np.testing.assert_array_equal(g.edge_users(ids), users)
    np.testing.assert_array_equal(g.edge_items(ids), items)


def test_full_block_is_symmetric_normalised_adjacency(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    expected, _ = dense_a_hat(small.num_users, small.num_items, small.users, small.items)
    block = g.full_block()
    assert block is g.full_block()  # built once
    assert block.num_dst == len(block.src_nodes) == g.num_nodes
    np.testing.assert_allclose(block.adj.to_dense().numpy(), expected, rtol=1e-6)


def test_dgl_graph_shares_memory_and_pickle_carries_only_arrays(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    indptr, indices, _ = g.dgl_graph.adj_tensors("csc")
    assert indptr.data_ptr() == g.indptr.ctypes.data
    assert indices.data_ptr() == g.indices.ctypes.data
    g.full_block()
    clone = pickle.loads(pickle.dumps(g))
    assert set(vars(clone)) == {"num_users", "num_items", "indptr", "indices"}
    np.testing.assert_array_equal(clone.dgl_graph.in_degrees().numpy(), g.degrees)
    # Read-only arrays (as ray.get returns them) work too.
    clone.indptr.setflags(write=False)
    clone.indices.setflags(write=False)
    del clone.__dict__["dgl_graph"]
    assert clone.dgl_graph.num_edges() == 2 * g.num_edges


@pytest.mark.parametrize("users,items,match", [
    ([0, 3], [0, 1], "training interaction 1: user id 3"),
    ([0, 1], [-1, 1], "training interaction 0: item id -1"),
    ([0], [0, 1], "equal-length"),
])
def test_bad_ids_are_rejected(users, items, match):
    with pytest.raises(ValueError, match=match):
        build_graph(3, 2, np.array(users), np.array(items))


def test_tiktok_train_split():
    num_users, num_items, users, items, split = read_inter("tiktok")
    train = split == 0
    g = build_graph(num_users, num_items, users[train], items[train])
    assert g.num_edges == len(set(zip(users[train].tolist(), items[train].tolist())))
    np.testing.assert_array_equal(g.degrees[:num_users], np.bincount(users[train], minlength=num_users))
    np.testing.assert_array_equal(g.degrees[num_users:], np.bincount(items[train], minlength=num_items))
    # Ten users have no training interaction (data/README.md).
    assert int((g.degrees[:num_users] == 0).sum()) == 10
    row_sums = torch.sparse.mm(g.full_block().adj, torch.ones(g.num_nodes, 1)).squeeze(1)
    assert torch.isfinite(row_sums).all()
