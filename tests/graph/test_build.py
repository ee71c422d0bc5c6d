import warnings

import numpy as np
import pytest
import torch

from sea_dist.graph.build import UserItemGraph, build_graph
from sea_dist.graph.sampler import BlockSampler
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


def _read_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies flagged read-only, as ``ray.get`` returns arrays."""
    out = {k: v.copy() for k, v in arrays.items()}
    for v in out.values():
        v.setflags(write=False)
    return out


def test_graph_from_its_arrays_is_the_same_graph_on_the_same_memory(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    arrays = _read_only(g.to_arrays())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning from torch either
        clone = UserItemGraph.from_arrays(small.num_users, small.num_items, arrays)
        dgl_indptr, dgl_indices, _ = clone.dgl_graph.adj_tensors("csc")
        adj = clone.full_block().adj
        sampler = BlockSampler(clone, [2, "all"])
        _, blocks = sampler.sample(np.array([0, 1, small.num_users]))
    # Nothing derived was recomputed or copied: the DGL graph, A_hat and degrees are views.
    assert dgl_indptr.data_ptr() == arrays["indptr"].ctypes.data
    assert dgl_indices.data_ptr() == arrays["indices"].ctypes.data
    assert adj.crow_indices().data_ptr() == arrays["indptr"].ctypes.data
    assert adj.col_indices().data_ptr() == arrays["indices"].ctypes.data
    assert adj.values().data_ptr() == arrays["weights"].ctypes.data
    assert clone.degrees is arrays["degrees"] and clone.inv_sqrt_degrees is arrays["inv_sqrt_degrees"]
    # ... and equal to what the graph computes for itself.
    np.testing.assert_array_equal(adj.to_dense().numpy(), g.full_block().adj.to_dense().numpy())
    np.testing.assert_array_equal(clone.degrees, np.diff(g.indptr))
    assert clone.num_edges == g.num_edges and len(blocks) == 2
    assert all(not a.flags.writeable for a in arrays.values())


def test_from_arrays_refuses_arrays_of_another_graph(small):
    g = build_graph(small.num_users, small.num_items, small.users, small.items)
    with pytest.raises(ValueError, match="graph array indptr has shape"):
        UserItemGraph.from_arrays(small.num_users + 1, small.num_items, g.to_arrays())
    with pytest.raises(ValueError, match="lack weights"):
        UserItemGraph.from_arrays(small.num_users, small.num_items,
                                  {k: v for k, v in g.to_arrays().items() if k != "weights"})


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
