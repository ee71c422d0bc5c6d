"""The training user-item graph: one symmetric CSC structure shared by sampling, negatives and A_hat.

Users are nodes ``0 .. U-1`` and items ``U .. U+I-1`` of ONE homogeneous graph holding both
directions of every training interaction (user -> item and item -> user). Since the graph is
bipartite, the node id says the node type, so a DGL heterograph with two edge types would be
the same structure; the homogeneous form is what ``dgl.to_block`` needs for destination nodes
to be a prefix of source nodes across both types, and what METIS partitions.

The structure is a CSC (in-edges per node) whose neighbour lists are sorted:

* node ``u < U``: its training items (as node ids ``U + i``), ascending;
* node ``U + i``: its training users, ascending.

Edge ``e`` (``0 <= e < E``) is the ``e``-th entry of the user half of ``indices``, i.e. the
interactions sorted by ``(user, item)``; seed edges and partitions refer to these ids. Duplicate
training pairs are kept once (as MMRec's 0/1 interaction matrix does), so ``E`` counts distinct
pairs, and degrees (for ``A_hat = D^-1/2 A D^-1/2``) count distinct neighbours over the FULL
training graph.

Memory, for ``N = U + I`` nodes and ``E`` training interactions (:meth:`UserItemGraph.to_arrays`):

* ``indptr`` ``8 (N + 1)`` bytes, ``indices`` ``2 E x 8``, the ``A_hat`` entry of every stored
  edge ``2 E x 4`` (float32, what :meth:`UserItemGraph.full_block` uses), degrees and
  ``1/sqrt(deg)`` ``16 N``: **24 bytes per interaction + 24 per node**, all read-only. The DGL
  graph and the full ``A_hat`` block are built on these arrays without a copy.
* private: DGL's fused sampler keeps an 8-byte-per-node id map when sampling with more than
  one thread.

Negatives need no extra structure: a user's seen items are its sorted neighbour list.

Sharing between the workers of a node: the training driver builds the graph once and puts
:meth:`~UserItemGraph.to_arrays` in Ray's object store; :meth:`~UserItemGraph.from_arrays`
over what ``ray.get`` returns (read-only numpy views of the node's one shared copy) gives every
worker the same graph at no memory of its own (see :mod:`sea_dist.train.shared`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import cached_property

import dgl
import numpy as np
import torch

from sea_dist.data.splits import user_item_csr
from sea_dist.graph.batch import Block


class UserItemGraph:
    """Symmetric user-item training graph with ``A_hat`` weights (see the module docstring).

    Args:
        num_users: U.
        num_items: I.
        indptr: ``[U + I + 1]`` int64 CSC offsets.
        indices: ``[2 E]`` int64 neighbour node ids, sorted within each node.

    Use :func:`build_graph` to construct one from interaction arrays.
    """

    def __init__(self, num_users: int, num_items: int, indptr: np.ndarray, indices: np.ndarray):
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.indptr = indptr
        self.indices = indices

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every array the graph reads, for :meth:`from_arrays` (derived ones computed now)."""
        return {
            "indptr": self.indptr,
            "indices": self.indices,
            "weights": self.weights,
            "degrees": self.degrees,
            "inv_sqrt_degrees": self.inv_sqrt_degrees,
        }

    @classmethod
    def from_arrays(
        cls, num_users: int, num_items: int, arrays: Mapping[str, np.ndarray]
    ) -> UserItemGraph:
        """The graph over ``arrays`` from :meth:`to_arrays`, used as they are (read-only is fine).

        Raises:
            ValueError: an array is missing or does not fit ``num_users + num_items`` nodes.
        """
        missing = {"indptr", "indices", "weights", "degrees", "inv_sqrt_degrees"} - set(arrays)
        if missing:
            raise ValueError(f"graph arrays lack {', '.join(sorted(missing))}")
        graph = cls(num_users, num_items, arrays["indptr"], arrays["indices"])
        nodes = graph.num_nodes
        sizes = {"indptr": nodes + 1, "degrees": nodes, "inv_sqrt_degrees": nodes,
                 "weights": len(graph.indices)}
        for name, size in sizes.items():
            if arrays[name].shape != (size,):
                shape = arrays[name].shape
                raise ValueError(f"graph array {name} has shape {shape}, expected ({size},)")
        # The derived arrays fill their cached properties: nothing is recomputed or copied.
        graph.__dict__.update({k: arrays[k] for k in ("weights", "degrees", "inv_sqrt_degrees")})
        return graph

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def num_edges(self) -> int:
        """E, the number of distinct training interactions (each stored in both directions)."""
        return int(self.indptr[self.num_users])

    @cached_property
    def degrees(self) -> np.ndarray:
        """``[U + I]`` int64 number of training neighbours of each node."""
        return np.diff(self.indptr)

    @cached_property
    def inv_sqrt_degrees(self) -> np.ndarray:
        """``[U + I]`` float64 ``1/sqrt(deg)``, 0 for isolated nodes (they have no edges)."""
        deg = tensor_view(self.degrees).double()
        return torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg)).numpy()

    @cached_property
    def weights(self) -> np.ndarray:
        """``[2 E]`` float32 ``A_hat`` entry ``1/sqrt(d_src d_dst)`` of each stored edge, in CSC
        order."""
        dst = torch.repeat_interleave(torch.arange(self.num_nodes), tensor_view(self.degrees))
        return self.edge_weights(tensor_view(self.indices), dst).float().numpy()

    @cached_property
    def dgl_graph(self) -> dgl.DGLGraph:
        """The structure as a DGL graph on the same memory, restricted to CSC (in-edges)."""
        indptr, indices = tensor_view(self.indptr), tensor_view(self.indices)
        graph = dgl.graph(("csc", (indptr, indices, torch.empty(0, dtype=torch.int64))),
                          num_nodes=self.num_nodes)
        return graph.formats("csc")

    def edge_users(self, edge_ids: np.ndarray) -> np.ndarray:
        """User node id of each edge in ``edge_ids``."""
        return np.searchsorted(self.indptr[: self.num_users + 1], edge_ids, side="right") - 1

    def edge_items(self, edge_ids: np.ndarray) -> np.ndarray:
        """Item id (0-based, not offset by U) of each edge in ``edge_ids``."""
        return self.indices[edge_ids] - self.num_users

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """All training interactions as ``(user_ids, item_ids)``, sorted by user then item."""
        users = np.repeat(np.arange(self.num_users, dtype=np.int64), self.degrees[: self.num_users])
        return users, self.indices[: self.num_edges] - self.num_users

    def seen_items(self, user: int) -> np.ndarray:
        """Sorted training items (0-based) of ``user``."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]] - self.num_users

    def edge_weights(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """``1/sqrt(d_src d_dst)`` for global node ids (float64)."""
        inv = tensor_view(self.inv_sqrt_degrees)
        return inv[src] * inv[dst]

    def full_block(self) -> Block:
        """``A_hat`` over all ``U + I`` nodes as a :class:`Block` (built once, then reused)."""
        return self._full_block

    @cached_property
    def _full_block(self) -> Block:
        # On the graph's own arrays (shared ones included): no second normalised adjacency.
        adj = torch.sparse_csr_tensor(
            tensor_view(self.indptr),
            tensor_view(self.indices),
            tensor_view(self.weights),
            (self.num_nodes, self.num_nodes),
        )
        return Block(src_nodes=torch.arange(self.num_nodes), num_dst=self.num_nodes, adj=adj)

    def structure_bytes(self) -> int:
        """Bytes of the structure (``indptr`` + ``indices``)."""
        return int(self.indptr.nbytes + self.indices.nbytes)


def tensor_view(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy(array)`` without a copy, also for read-only arrays.

    ``ray.get`` and memory maps give read-only arrays; torch cannot mark a tensor read-only and
    warns. The graph layer only reads such views (never an in-place op), so the warning is moot.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def build_graph(
    num_users: int, num_items: int, user_ids: np.ndarray, item_ids: np.ndarray
) -> UserItemGraph:
    """Build the symmetric training graph from interaction arrays.

    Args:
        num_users: U; user ids must lie in ``[0, U)``.
        num_items: I; item ids (0-based) must lie in ``[0, I)``.
        user_ids: ``[E']`` user of each training interaction.
        item_ids: ``[E']`` item of each training interaction (duplicates are kept once).

    Raises:
        ValueError: on mismatched lengths or an id out of range (naming the first bad row).
    """
    users = np.asarray(user_ids, dtype=np.int64)
    items = np.asarray(item_ids, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError(f"user_ids {users.shape} and item_ids {items.shape} must be equal-length 1-D")
    for name, ids, bound in (("user", users, num_users), ("item", items, num_items)):
        bad = np.flatnonzero((ids < 0) | (ids >= bound))
        if len(bad):
            raise ValueError(
                f"training interaction {bad[0]}: {name} id {ids[bad[0]]} outside [0, {bound})"
            )
    user_ptr, user_nbrs = user_item_csr(users, items, num_users)
    item_ptr, item_nbrs = user_item_csr(items, users, num_items)
    num_edges = len(user_nbrs)
    indptr = np.concatenate([user_ptr, item_ptr[1:] + num_edges])
    indices = np.concatenate([user_nbrs + num_users, item_nbrs])
    return UserItemGraph(num_users, num_items, indptr, indices)
