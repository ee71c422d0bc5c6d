"""Assign nodes and training seed edges to P workers: METIS or random, with cut and balance.

Each node gets an owner; each training edge (user, item) is a seed edge of its USER's owner,
so a worker's seed users, and with METIS most of their items, are its own nodes. The edge cut
(interactions whose user and item have different owners) says how much of a worker's sampled
neighbourhood would live elsewhere in a graph-distributed setting; balance is the largest
part over the mean part (1.0 is perfect), for seed edges and for nodes of each type.

METIS runs on the homogeneous symmetric graph (DGL's ``metis_partition_assignment``) with four
balance constraints: user count, item count, and the degree sums of users and of items; the
user degree sum is the part's seed-edge count, so seed edges come out balanced too.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import dgl
import numpy as np
import torch

from sea_dist.graph.build import UserItemGraph

log = logging.getLogger(__name__)


@dataclass
class Partition:
    """Node ownership and seed-edge assignment.

    Attributes:
        method: ``"metis"`` or ``"random"``.
        num_parts: P.
        node_parts: ``[U + I]`` owner of each node.
        edge_parts: ``[E]`` worker of each training edge (edge ids as in :class:`UserItemGraph`).
        stats: edge cut, balance and timing (see :func:`partition_stats`).
    """

    method: str
    num_parts: int
    node_parts: np.ndarray
    edge_parts: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def seed_edges(self, part: int) -> np.ndarray:
        """Edge ids worker ``part`` trains on."""
        return np.flatnonzero(self.edge_parts == part)

    @property
    def max_part_edges(self) -> int:
        """Seed edges of the largest part: size steps per epoch from it so all workers agree."""
        return int(np.bincount(self.edge_parts, minlength=self.num_parts).max())


def partition_seed_edges(
    graph: UserItemGraph,
    num_parts: int,
    method: Literal["metis", "random"] = "random",
    seed: int = 0,
) -> Partition:
    """Partition ``graph``'s nodes and seed edges over ``num_parts`` workers.

    Args:
        graph: the training graph.
        num_parts: P >= 1.
        method: ``"metis"`` (min edge cut under balance constraints) or ``"random"`` (uniform
            node owners, the baseline).
        seed: seed of the random assignment.
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if method not in ("metis", "random"):
        raise ValueError(f"method must be 'metis' or 'random', got {method!r}")
    start = time.perf_counter()
    if num_parts == 1:
        node_parts = np.zeros(graph.num_nodes, dtype=np.int64)
    elif method == "random":
        node_parts = np.random.default_rng(seed).integers(0, num_parts, graph.num_nodes)
    else:
        node_parts = _metis(graph, num_parts)
    seconds = time.perf_counter() - start
    users, _ = graph.edges()
    edge_parts = node_parts[users]
    stats = {"seconds": seconds, **partition_stats(graph, node_parts, edge_parts, num_parts)}
    return Partition(method, num_parts, node_parts, edge_parts, stats)


def _metis(graph: UserItemGraph, num_parts: int) -> np.ndarray:
    # A graph of our own: the shared one is CSC-only, METIS's symmetrisation wants other formats.
    g = dgl.graph(
        ("csc", (torch.from_numpy(np.array(graph.indptr)), torch.from_numpy(np.array(graph.indices)),
                 torch.empty(0, dtype=torch.int64))),
        num_nodes=graph.num_nodes,
    )
    is_item = (torch.arange(graph.num_nodes) >= graph.num_users).long()
    # DGL prints progress lines, from Python to stdout and from C++ to the stderr descriptor;
    # keep them out of CLI and benchmark output (the training driver partitions).
    with _native_output_to_log(), contextlib.redirect_stdout(io.StringIO()):
        parts = dgl.metis_partition_assignment(
            g, num_parts, balance_ntypes=is_item, balance_edges=True
        )
    return parts.numpy().astype(np.int64)


@contextlib.contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 to this module's log."""
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as capture:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in saved:
            os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                log.info("%s", line)


def partition_stats(
    graph: UserItemGraph, node_parts: np.ndarray, edge_parts: np.ndarray, num_parts: int
) -> dict[str, Any]:
    """Edge cut and balance of an assignment.

    Returns:
        ``edge_cut`` (interactions whose endpoints have different owners), ``edge_cut_fraction``,
        ``seed_edges_per_part``, and ``*_balance`` = max part / mean part for seed edges,
        users and items.
    """
    users, items = graph.edges()
    cut = int(np.count_nonzero(node_parts[users] != node_parts[items + graph.num_users]))

    def balance(counts: np.ndarray) -> float:
        mean = counts.mean()
        return float(counts.max() / mean) if mean > 0 else 1.0

    edge_counts = np.bincount(edge_parts, minlength=num_parts)
    user_counts = np.bincount(node_parts[: graph.num_users], minlength=num_parts)
    item_counts = np.bincount(node_parts[graph.num_users :], minlength=num_parts)
    return {
        "edge_cut": cut,
        "edge_cut_fraction": cut / max(graph.num_edges, 1),
        "seed_edges_per_part": edge_counts.tolist(),
        "seed_edge_balance": balance(edge_counts),
        "user_balance": balance(user_counts),
        "item_balance": balance(item_counts),
    }
