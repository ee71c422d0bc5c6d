import numpy as np
import pytest

from sea_dist.graph.build import build_graph
from sea_dist.graph.loader import MiniBatchLoader
from sea_dist.graph.partition import partition_seed_edges


def planted(num_groups: int, users_per: int, items_per: int, seed: int):
    """Users mostly interact with their own group's items: METIS should find the groups."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_groups * users_per):
        group = u // users_per
        own = group * items_per + rng.choice(items_per, 6, replace=False)
        other = rng.choice(num_groups * items_per, 1)
        users += [u] * 7
        items += [*own.tolist(), *other.tolist()]
    return build_graph(num_groups * users_per, num_groups * items_per, np.array(users), np.array(items))


@pytest.mark.parametrize("method", ["metis", "random"])
@pytest.mark.parametrize("num_parts", [1, 3])
def test_workers_cover_every_seed_edge_exactly_once(method, num_parts):
    graph = planted(4, 30, 20, seed=0)
    part = partition_seed_edges(graph, num_parts, method=method, seed=1)
    assert part.edge_parts.shape == (graph.num_edges,)
    seen = []
    for rank in range(num_parts):
        loader = MiniBatchLoader(graph, None, {}, mode="sampled", fanouts=[2], num_layers=1, item_hops=0,
                                 batch_size=32, num_negatives=1, seed=rank, seed_edges=part.seed_edges(rank))
        for batch in loader:
            ids = batch.output_nodes
            seen += zip(ids[batch.users].tolist(), (ids[batch.pos_items] - graph.num_users).tolist())
    users, items = graph.edges()
    assert sorted(seen) == sorted(zip(users.tolist(), items.tolist()))
    # A seed edge belongs to its user's owner.
    np.testing.assert_array_equal(part.edge_parts, part.node_parts[users])
    assert sum(part.stats["seed_edges_per_part"]) == graph.num_edges
    assert part.max_part_edges == max(part.stats["seed_edges_per_part"])


def test_edge_cut_and_balance():
    graph = planted(4, 30, 20, seed=0)
    users, items = graph.edges()
    cuts = {}
    for method in ("metis", "random"):
        part = partition_seed_edges(graph, 4, method=method, seed=0)
        brute = sum(part.node_parts[u] != part.node_parts[graph.num_users + i] for u, i in zip(users, items))
        assert part.stats["edge_cut"] == brute
        cuts[method] = part.stats["edge_cut_fraction"]
        if method == "metis":
            assert part.stats["seed_edge_balance"] < 1.15
            assert part.stats["user_balance"] < 1.15 and part.stats["item_balance"] < 1.15
    assert cuts["random"] > 0.6  # ~3/4 of edges cross 4 random parts
    assert cuts["metis"] < 0.3  # the planted groups: ~1/7 of the edges leave their group
    assert partition_seed_edges(graph, 1, "metis").stats["edge_cut"] == 0


def test_metis_prints_nothing(capfd, caplog):
    """The training driver partitions: DGL's progress lines (C++ ones on the stderr descriptor
    included) go to the log, not the console."""
    graph = planted(4, 30, 20, seed=0)
    with caplog.at_level("INFO", logger="sea_dist.graph.partition"):
        partition_seed_edges(graph, 4, method="metis")
    assert capfd.readouterr() == ("", "")
    assert any("edge cuts" in r.getMessage() for r in caplog.records)


def test_bad_arguments():
    graph = planted(2, 5, 10, seed=0)
    with pytest.raises(ValueError, match="num_parts"):
        partition_seed_edges(graph, 0)
    with pytest.raises(ValueError, match="method"):
        partition_seed_edges(graph, 2, method="kmeans")
