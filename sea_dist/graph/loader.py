"""A DataLoader-style iterator over seed edges that yields :class:`MiniBatch` es.

Flow of one epoch (``set_epoch(e)`` first, for a new shuffle):

    seed edges --shuffle(seed, epoch)--> batches of edge ids
      --sampling thread: negatives -> output nodes (+ item hop) -> DGL blocks -> feature rows-->
      up to ``prefetch`` batches ahead --> training loop

Every step draws its shuffle position, negatives and DGL's sampling seed from a ``numpy``
generator seeded by ``(seed, epoch, step)``. Batches are built on one long-lived thread per
process (see :func:`_sampling_thread`), so with one OpenMP thread they repeat exactly, whatever
the prefetch depth and across a restart. With several OpenMP threads DGL's per-thread
generators are numbered in a racy order and blocks may differ from run to run.

Threads: Ray sets ``OMP_NUM_THREADS=1`` in its workers, which would leave DGL's OpenMP
sampling single-threaded whatever the trainer asks of torch; the sampling thread therefore
sets DGL's OpenMP thread count to ``num_threads`` (default: ``torch.get_num_threads()`` when the
loader is built) for its own parallel regions, and leaves torch's settings alone.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import dgl
import numpy as np
import torch

from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.graph.build import UserItemGraph, tensor_view
from sea_dist.graph.knn import ItemGraph
from sea_dist.graph.sampler import (
    BlockSampler,
    Fanout,
    NegativePool,
    NeighbourSampling,
    check_fanouts,
    check_negatives_exist,
    negative_pool,
    sample_batch,
    sample_negatives,
)

_SAMPLING_THREAD: ThreadPoolExecutor | None = None
_SAMPLING_THREAD_LOCK = threading.Lock()


def _sampling_thread() -> ThreadPoolExecutor:
    """The process's one batch-building thread, shared by every loader.

    DGL seeds each OS thread's generator with ``seed + index``, the index counting threads in
    order of first use. One long-lived thread keeps that index fixed, so blocks depend only on
    ``(seed, epoch, step)``: the same at any prefetch depth, and the same in a worker restarted
    from a checkpoint (which builds its first batch at the same point of its set-up).
    """
    global _SAMPLING_THREAD
    with _SAMPLING_THREAD_LOCK:
        if _SAMPLING_THREAD is None:
            _SAMPLING_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minibatch-sampling")
        return _SAMPLING_THREAD


def gather_rows(features: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """``features[rows]`` as a float32 tensor, read in ascending row order.

    Reading a memory-mapped matrix in sorted order touches each page once and sequentially.
    """
    order = np.argsort(rows, kind="stable")
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    out[order] = features[rows[order]]
    return torch.from_numpy(out)


def _full_item_block(num_users: int, item_hop: ItemGraph) -> Block:
    """``S^hops`` embedded into the ``(U + I) x (U + I)`` node space (rows of items only)."""
    num_nodes = num_users + item_hop.num_items
    crow = np.concatenate([np.zeros(num_users, dtype=np.int64), item_hop.indptr])
    adj = torch.sparse_csr_tensor(
        torch.from_numpy(crow),
        torch.from_numpy(item_hop.indices + num_users),
        tensor_view(item_hop.weights),
        (num_nodes, num_nodes),
    )
    return Block(src_nodes=torch.arange(num_nodes), num_dst=num_nodes, adj=adj)


def _item_hop(item_graph: ItemGraph | None, item_hops: int) -> ItemGraph | None:
    if item_graph is None or item_hops == 0:
        return None
    return item_graph.power(item_hops)


class _FullGraph:
    """What every full-graph batch shares: ``A_hat``, ``S^hops`` and all feature rows."""

    def __init__(
        self,
        graph: UserItemGraph,
        item_hop: ItemGraph | None,
        features: dict[str, np.ndarray],
        num_layers: int,
    ):
        self.graph = graph
        self.num_layers = num_layers
        self.nodes = torch.arange(graph.num_nodes)
        self.item_block = None if item_hop is None else _full_item_block(graph.num_users, item_hop)
        # Views of the store's read-only memory maps in their own dtype, not float32 copies:
        # the pages are shared by every worker of a node through the page cache, and the
        # models cast what they read. Nothing writes to them.
        self.features = {m: tensor_view(f) for m, f in features.items()}

    def batch(self, users: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> MiniBatch:
        num_users = self.graph.num_users
        block = self.graph.full_block()
        return MiniBatch(
            blocks=[block] * self.num_layers,
            input_nodes=self.nodes,
            output_nodes=self.nodes,
            users=torch.from_numpy(users),
            pos_items=torch.from_numpy(pos + num_users),
            neg_items=torch.from_numpy(neg + num_users),
            loss_items=self.nodes[num_users:],
            num_users=num_users,
            item_graph=self.item_block,
            item_features=self.features,
        )


def full_graph_batch(
    graph: UserItemGraph,
    item_graph: ItemGraph | None,
    features: dict[str, np.ndarray],
    item_hops: int,
    *,
    num_layers: int,
) -> MiniBatch:
    """Everything needed to compute every node's final representation (evaluation).

    Blocks are ``num_layers`` copies of ``A_hat``; positions are global ids; there are no
    triples (``users``/``pos_items`` are empty, ``neg_items`` is ``[0, 1]``).
    """
    full = _FullGraph(graph, _item_hop(item_graph, item_hops), features, num_layers)
    empty = np.zeros(0, dtype=np.int64)
    return full.batch(empty, empty, empty.reshape(0, 1))


class MiniBatchLoader:
    """Iterates over this worker's seed edges in shuffled BPR minibatches.

    Args:
        graph: the training graph.
        item_graph: the item-item graph ``S`` (``None``: no item hop).
        features: modality -> ``[I, d_m]`` raw feature matrix (memory-mapped is fine).
        mode: ``"sampled"`` (neighbourhood blocks per batch) or ``"full"`` (``A_hat`` blocks).
        fanouts: per layer, input side first, a positive int or ``"all"`` (sampled mode).
        num_layers: propagation layers; ``len(fanouts)`` must equal it in sampled mode.
        item_hops: hops of the item graph (``S^hops``); 0 disables it.
        batch_size: seed edges per batch.
        num_negatives: negatives per seed edge.
        negatives: the pool they are drawn from, ``"train_items"`` (MMRec's) or
            ``"all_items"`` (see :func:`~sea_dist.graph.sampler.negative_pool`).
        seed: base seed of the shuffle, the negatives and the neighbour sampling.
        seed_edges: edge ids this worker trains on (default: all training edges).
        prefetch: batches built ahead while the consumer trains; 0 builds each on demand.
        max_steps: cap on steps per epoch.
        steps_per_epoch: exact steps per epoch, cycling through reshuffled seeds when it asks
            for more than one pass; give every DDP worker the same value so that their
            collectives line up although their seed sets differ in size.
        num_threads: DGL OpenMP threads of the sampling thread (default: torch's).
        sampler: ``"neighbor"`` or ``"labor"`` neighbourhoods (see
            :class:`~sea_dist.graph.sampler.BlockSampler`).
        item_fanout: ``"all"``, or importance draws per batch item's item-hop row (see
            :func:`~sea_dist.graph.sampler.output_nodes_for`).
    """

    def __init__(
        self,
        graph: UserItemGraph,
        item_graph: ItemGraph | None,
        features: dict[str, np.ndarray],
        *,
        mode: Literal["full", "sampled"],
        fanouts: Sequence[Fanout],
        num_layers: int,
        item_hops: int,
        batch_size: int,
        num_negatives: int,
        seed: int,
        negatives: NegativePool = "train_items",
        seed_edges: np.ndarray | None = None,
        prefetch: int = 2,
        max_steps: int | None = None,
        steps_per_epoch: int | None = None,
        num_threads: int | None = None,
        sampler: NeighbourSampling = "neighbor",
        item_fanout: Fanout = "all",
    ):
        if mode not in ("full", "sampled"):
            raise ValueError(f"mode must be 'full' or 'sampled', got {mode!r}")
        if mode == "sampled":
            if len(fanouts) != num_layers:
                raise ValueError(f"{len(fanouts)} fanouts for {num_layers} layers")
            check_fanouts([*fanouts, item_fanout])
        if batch_size < 1 or num_negatives < 1 or prefetch < 0:
            raise ValueError("batch_size and num_negatives must be >= 1, prefetch >= 0")
        for name, feat in features.items():
            if feat.ndim != 2 or feat.shape[0] != graph.num_items:
                raise ValueError(
                    f"features[{name!r}] has shape {feat.shape}, expected [{graph.num_items}, d]"
                )
        self._pool = negative_pool(graph, negatives)
        check_negatives_exist(graph, self._pool)
        self.graph = graph
        self.mode = mode
        self.fanouts = list(fanouts)
        self.sampling = sampler
        self.item_fanout = item_fanout
        self.batch_size = batch_size
        self.num_negatives = num_negatives
        self.seed = seed
        self.prefetch = prefetch
        self.num_threads = num_threads or torch.get_num_threads()
        self.features = features
        edges = np.arange(graph.num_edges) if seed_edges is None else np.asarray(seed_edges, np.int64)
        if len(edges) and (edges.min() < 0 or edges.max() >= graph.num_edges):
            raise ValueError(f"seed_edges must be edge ids in [0, {graph.num_edges})")
        self.seed_edges = edges
        steps = steps_per_epoch if steps_per_epoch is not None else math.ceil(len(edges) / batch_size)
        if steps > 0 and len(edges) == 0:
            raise ValueError("steps_per_epoch > 0 but this worker has no seed edges")
        self._steps = steps if max_steps is None else min(steps, max_steps)
        self._cycle = steps_per_epoch is not None
        self._epoch = 0
        item_hop = _item_hop(item_graph, item_hops)
        self._item_hop = item_hop
        self._full = _FullGraph(graph, item_hop, features, num_layers) if mode == "full" else None

    def __len__(self) -> int:
        return self._steps

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle (and sampling seeds) the next iteration uses."""
        self._epoch = epoch

    def epoch_batches(self) -> list[np.ndarray]:
        """The seed edge ids of each step of the current epoch."""
        n = len(self.seed_edges)
        if n == 0:
            return []
        rng = np.random.default_rng([self.seed, self._epoch])
        passes = math.ceil(self._steps * self.batch_size / n) if self._cycle else 1
        order = np.concatenate([rng.permutation(self.seed_edges) for _ in range(passes)])
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self._steps)]

    def __iter__(self) -> Iterator[MiniBatch]:
        todo = enumerate(self.epoch_batches())
        sampler = self._sampler()
        thread = _sampling_thread()
        pending: deque[Future[MiniBatch]] = deque()

        def top_up(depth: int) -> None:
            while len(pending) < depth and (step := next(todo, None)) is not None:
                pending.append(thread.submit(self._make, sampler, *step))

        top_up(1)
        try:
            while pending:
                batch = pending.popleft().result()  # re-raises the sampling thread's error
                top_up(self.prefetch)  # built while the consumer trains on ``batch``
                yield batch
                top_up(1)
        finally:
            for future in pending:
                future.cancel()

    def _sampler(self) -> BlockSampler | None:
        if self.mode != "sampled":
            return None
        return BlockSampler(self.graph, self.fanouts, self.sampling)

    def _make(self, sampler: BlockSampler | None, step: int, edge_ids: np.ndarray) -> MiniBatch:
        rng = np.random.default_rng([self.seed, self._epoch, step])
        if self._full is not None:
            users = self.graph.edge_users(edge_ids)
            neg = sample_negatives(self.graph, users, self.num_negatives, rng, self._pool)
            return self._full.batch(users, self.graph.edge_items(edge_ids), neg)
        assert sampler is not None
        dgl.utils.set_num_threads(self.num_threads)  # this thread's OpenMP regions only
        dgl.seed(int(rng.integers(1 << 31)))
        sampler.seed(int(rng.integers(1 << 62)))
        batch = sample_batch(
            self.graph,
            sampler,
            self._item_hop,
            edge_ids,
            self.num_negatives,
            rng,
            self._pool,
            self.item_fanout,
        )
        item_rows = (batch.input_nodes[batch.input_is_item] - self.graph.num_users).numpy()
        batch.item_features = {m: gather_rows(f, item_rows) for m, f in self.features.items()}
        return batch
