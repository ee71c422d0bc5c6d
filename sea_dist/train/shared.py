"""The read-only training data: built once by the driver, one copy per node in Ray's object store.

Every worker needs the same user-item graph, item kNN graph and (SGFD) item labels, and its
rank's seed edges. Built per worker they cost one copy each, and the seed-edge partition (METIS
at scale) one run each. Instead the driver builds them once (:func:`share_training_data`) and
``ray.put`` s them as numpy arrays; the workers receive ObjectRefs through the train loop config
(:class:`SharedData`) and ``ray.get`` them (:func:`receive_training_data`). Ray keeps one copy
per node in its shared-memory object store and hands each worker of that node read-only numpy
views of it, so the graph's bytes are paid once per node, not once per worker. A worker on
another node pulls the objects to its node's store on its first ``ray.get``; a restarted worker
gets them again from the same refs, which the driver holds until the run ends.

What each worker still reads itself: the store (its sizes, splits for evaluation, and the
feature matrices, memory-mapped and read by row), so a worker checks that its store is the one
the driver built from (a node with other data at the same path is refused).

Nothing writes into the shared arrays: they are read-only views, and the graph layer wraps them
in tensors without copying (:func:`sea_dist.graph.build.tensor_view`) only to read them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sea_dist.config import RunCfg
from sea_dist.data.store import Store, resolve_store, verify_store_cached
from sea_dist.errors import DataError
from sea_dist.graph.build import UserItemGraph
from sea_dist.graph.knn import ItemGraph
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.models.registry import resolve_item_labels

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Everything derived from the store that a worker needs; built the same way everywhere
    (:func:`sea_dist.train.loop.prepare_data`), or received (:func:`receive_training_data`)."""

    store: Store
    modalities: list[str]
    graph: UserItemGraph
    item_graph: ItemGraph | None
    features: dict[str, np.ndarray]


@dataclass(frozen=True)
class SharedData:
    """What the driver hands every worker: ObjectRefs of the shared arrays, and sizes.

    Attributes:
        checksum: the store's content checksum the arrays were built from.
        arrays: ref of ``{"graph": ..., "item_graph": ... | None, "item_graph_info": ...,
            "labels": ... | None}`` (numpy arrays; see :func:`share_training_data`).
        seed_edges: one ref per rank: the ``[E_r]`` int64 training edge ids it trains on.
        max_part_edges: seed edges of the largest part (every rank takes as many steps).
        partition: the partition's method and statistics (edge cut, balance, seconds).
    """

    checksum: str
    arrays: Any  # ray.ObjectRef
    seed_edges: list[Any]  # list[ray.ObjectRef]
    max_part_edges: int
    partition: dict[str, Any]


@dataclass
class WorkerData:
    """What a worker received: the training data over shared arrays, and its own seed edges."""

    data: TrainingData
    labels: torch.Tensor | None
    seed_edges: np.ndarray
    max_part_edges: int


def share_training_data(cfg: RunCfg, data: TrainingData) -> SharedData:
    """Partition the seed edges, resolve SGFD's item labels and put it all in the object store.

    Call on the driver, connected to Ray, once per run; keep the result until the run ends
    (the refs keep the objects alive for restarted workers).
    """
    import ray

    workers = cfg.train.workers
    graph = data.graph
    parts = partition_seed_edges(graph, workers, method=cfg.train.partition, seed=cfg.train.seed)
    log.info("seed edges over %d workers (%s): %s", workers, parts.method, parts.stats)
    # SGFD's k-means labels read every feature row: once here, not once per worker.
    labels = resolve_item_labels(cfg.model, data.store.labels(), data.features)
    item_graph = data.item_graph
    arrays = ray.put(
        {
            "graph": graph.to_arrays(),
            "item_graph": None if item_graph is None else item_graph.to_arrays(),
            "item_graph_info": {} if item_graph is None else item_graph.info,
            "labels": None if labels is None else labels.numpy(),
        }
    )
    return SharedData(
        checksum=data.store.checksum,
        arrays=arrays,
        seed_edges=[ray.put(parts.seed_edges(rank)) for rank in range(workers)],
        max_part_edges=parts.max_part_edges,
        partition={"method": parts.method, **parts.stats},
    )


def receive_training_data(cfg: RunCfg, shared: SharedData, rank: int, world: int) -> WorkerData:
    """A worker's training data: its store opened, the shared arrays mapped zero-copy.

    Raises:
        DataError: this worker's store is not the one the driver built the arrays from.
        ValueError: ``world`` is not the number of parts the driver partitioned into.
    """
    import ray

    if len(shared.seed_edges) != world:
        parts = len(shared.seed_edges)
        raise ValueError(f"the driver partitioned into {parts} parts for {world} workers")
    store = resolve_store(cfg.data.path, cfg.data.cache_dir)
    verify_store_cached(store, cfg.data.cache_dir)
    if store.checksum != shared.checksum:
        node = ray.get_runtime_context().get_node_id()
        raise DataError(
            f"{store.path}: content checksum {store.checksum} on node {node}, but the driver's "
            f"store has {shared.checksum}"
        )
    arrays = ray.get(shared.arrays)
    modalities = cfg.data.modalities or list(store.modalities)
    graph = UserItemGraph.from_arrays(store.num_users, store.num_items, arrays["graph"])
    item_graph = None
    if arrays["item_graph"] is not None:
        item_graph = ItemGraph.from_arrays(
            store.num_items, arrays["item_graph"], arrays["item_graph_info"]
        )
    features = {m: store.features(m) for m in modalities}
    # A copy (8 bytes per item): the model keeps the labels as a buffer, which loading a
    # checkpoint writes into.
    labels = None if arrays["labels"] is None else torch.from_numpy(np.array(arrays["labels"]))
    return WorkerData(
        data=TrainingData(store, modalities, graph, item_graph, features),
        labels=labels,
        seed_edges=ray.get(shared.seed_edges[rank]),
        max_part_edges=shared.max_part_edges,
    )
