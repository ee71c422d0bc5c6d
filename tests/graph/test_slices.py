"""Row blocks of A_hat and S^hops are exactly the rows of the full operators."""

from __future__ import annotations

import pytest
import torch

from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.slices import GraphSlices


@pytest.fixture(scope="module")
def slices(tiny_store) -> GraphSlices:
    users, items = tiny_store.edges(0)
    graph = build_graph(tiny_store.num_users, tiny_store.num_items, users, items)
    features = {m: tiny_store.features(m) for m in tiny_store.modalities}
    item_graph = build_item_graph(
        features, weights=None, k=5, method="exact", exact_max_items=10_000
    )
    return GraphSlices(graph, item_graph, features, item_hops=2)


@pytest.mark.parametrize("start, stop", [(0, 17), (290, 330), (480, 500), (5, 5)])
def test_node_block_is_rows_of_a_hat(slices: GraphSlices, start: int, stop: int) -> None:
    a_hat = slices.graph.full_block().adj.to_dense()
    block = slices.node_block(start, stop)
    assert block.num_dst == stop - start
    assert torch.equal(block.dst_nodes, torch.arange(start, stop))  # dst: a prefix of src
    assert len(set(block.src_nodes.tolist())) == len(block.src_nodes)
    dense = torch.zeros(stop - start, a_hat.shape[1])
    dense[:, block.src_nodes] = block.adj.to_dense()
    torch.testing.assert_close(dense, a_hat[start:stop], atol=0, rtol=0)


def test_item_block_is_rows_of_s_power(slices: GraphSlices, tiny_store) -> None:
    s = slices.item_hop
    assert s is not None and s.info["hops"] == 2
    block = slices.item_block(40, 90)
    assert torch.equal(block.dst_nodes, torch.arange(40, 90))  # item ids, not node ids
    dense = torch.zeros(50, tiny_store.num_items)
    dense[:, block.src_nodes] = block.adj.to_dense()
    torch.testing.assert_close(dense, s.to_torch().to_dense()[40:90], atol=0, rtol=0)


def test_item_features_are_the_items_rows_in_node_order(slices: GraphSlices, tiny_store) -> None:
    nodes = torch.tensor([301, 5, 300, 499, 7])  # items 1, 0, 199 among users
    rows = slices.item_features(nodes)
    for m, f in slices.features.items():
        assert torch.equal(rows[m], torch.from_numpy(f[[1, 0, 199]]).float())
