"""The driver builds the read-only data once and its Ray workers map it: what a worker receives
equals what it would build itself, read-only and without a copy of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import ray

from sea_dist.config import RunCfg, load_config
from sea_dist.errors import DataError
from sea_dist.graph.build import build_graph
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.models.registry import resolve_item_labels
from sea_dist.train.loop import prepare_data, store_item_graph
from sea_dist.train.shared import SharedData, receive_training_data, share_training_data
from sea_dist.train.trainer import _connect

from tests.train.conftest import ROOT

WORKERS = 2


@pytest.fixture(scope="module")
def local_ray():
    _connect(None, 1)  # the loopback-only private instance sea-dist train starts
    yield
    ray.shutdown()


def _cfg(store: Path, cache: Path, partition: str = "random") -> RunCfg:
    # SGFD with k-means labels and an item graph: every shared structure is present.
    sets = [f"data.path={store}", f"data.cache_dir={cache}", f"train.workers={WORKERS}",
            f"train.partition={partition}", "model.sgfd.label_source=kmeans", "model.sgfd.num_clusters=5"]
    return load_config(ROOT / "configs" / "sea_sgfd.yaml", sets)


@ray.remote(num_cpus=0)
def _receive(cfg: RunCfg, shared: SharedData, rank: int) -> dict:
    """In a Ray worker process: what receive_training_data gives, with its arrays' flags."""
    got = receive_training_data(cfg, shared, rank, WORKERS)
    graph, item_graph = got.data.graph, got.data.item_graph
    arrays = {f"graph.{k}": v for k, v in graph.to_arrays().items()}
    arrays.update({f"item_graph.{k}": v for k, v in item_graph.to_arrays().items()})
    arrays["seed_edges"] = got.seed_edges
    return {
        "arrays": {k: np.array(v) for k, v in arrays.items()},
        "writeable": {k: bool(v.flags.writeable) for k, v in arrays.items()},
        "labels": got.labels.numpy(),
        "max_part_edges": got.max_part_edges,
        "features": {m: type(f).__name__ for m, f in got.data.features.items()},
    }


def test_workers_receive_what_they_would_build(local_ray, train_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(train_store, tmp_path / "cache")
    data = prepare_data(cfg)
    shared = share_training_data(cfg, data)
    received = ray.get([_receive.remote(cfg, shared, rank) for rank in range(WORKERS)])

    # Built from scratch, as every worker did before.
    store = data.store
    graph = build_graph(store.num_users, store.num_items, *store.edges(0))
    item_graph = store_item_graph(store, data.modalities, cfg)
    parts = partition_seed_edges(graph, WORKERS, method="random", seed=cfg.train.seed)
    labels = resolve_item_labels(cfg.model, store.labels(), data.features)
    expected = {f"graph.{k}": v for k, v in graph.to_arrays().items()}
    expected.update({f"item_graph.{k}": v for k, v in item_graph.to_arrays().items()})
    assert parts.seed_edges(0).size and parts.seed_edges(1).size
    for rank, got in enumerate(received):
        assert set(got["arrays"]) == {*expected, "seed_edges"}
        for name, array in {**expected, "seed_edges": parts.seed_edges(rank)}.items():
            assert got["arrays"][name].dtype == array.dtype, name
            np.testing.assert_array_equal(got["arrays"][name], array, err_msg=name)
        # Views of the node's object store copy (a private copy would be writeable).
        assert not any(got["writeable"].values()), [k for k, v in got["writeable"].items() if v]
        np.testing.assert_array_equal(got["labels"], labels.numpy())
        assert got["max_part_edges"] == parts.max_part_edges
        assert set(got["features"].values()) == {"memmap"}  # read by row, never loaded whole
    assert shared.partition["seed_edges_per_part"] == [len(parts.seed_edges(r)) for r in range(WORKERS)]


def test_metis_runs_once_and_the_workers_split_the_edges_exactly(
    local_ray, train_store: Path, tmp_path: Path
) -> None:
    """DGL's METIS is not deterministic from run to run (a second call may cut differently),
    so workers partitioning for themselves could train some edges twice and others never."""
    cfg = _cfg(train_store, tmp_path / "cache", "metis")
    data = prepare_data(cfg)
    shared = share_training_data(cfg, data)
    assert shared.partition["method"] == "metis"
    seeds = [receive_training_data(cfg, shared, rank, WORKERS).seed_edges for rank in range(WORKERS)]
    assert [len(s) for s in seeds] == shared.partition["seed_edges_per_part"]
    np.testing.assert_array_equal(np.sort(np.concatenate(seeds)), np.arange(data.graph.num_edges))
    other = dataclasses.replace(shared, checksum="0" * 16)
    with pytest.raises(DataError, match="but the driver's store has 0000000000000000"):
        receive_training_data(cfg, other, 0, WORKERS)
    with pytest.raises(ValueError, match="partitioned into 2 parts for 3 workers"):
        receive_training_data(cfg, shared, 0, 3)
