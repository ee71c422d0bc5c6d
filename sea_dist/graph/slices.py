"""Row ranges of the propagation operators, for layer-wise inference over node chunks.

Layer-wise inference (:mod:`sea_dist.eval.inference`) computes a layer for one contiguous
range of nodes at a time, so it needs only those rows of ``A_hat`` (and of the item hop
``S^hops``), never the whole normalised matrix. A row range becomes a :class:`Block` in DGL's
layout: destination nodes ``start .. stop-1`` first, then the other columns the rows touch, in
ascending order, so ``propagate(block, h[block.src_nodes])`` gives the range's next layer from
any ``h`` indexed by node id. Item feature rows are read from the store's memory maps by row.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sea_dist.graph.batch import Block
from sea_dist.graph.build import UserItemGraph, tensor_view
from sea_dist.graph.knn import ItemGraph
from sea_dist.graph.loader import gather_rows


def row_block(
    start: int, stop: int, indptr: np.ndarray, indices: np.ndarray, weights: Tensor
) -> Block:
    """Rows ``[start, stop)`` of a square CSR matrix as a :class:`Block`.

    Args:
        start, stop: the row (= destination node) range.
        indptr, indices: the matrix's CSR structure; ``indices`` are column ids.
        weights: ``[nnz in the range]`` entries of those rows, in CSR order.

    Shapes:
        -> ``adj`` ``[stop - start, N_src]``, ``src_nodes`` ``[N_src]`` (ids in the matrix's
        own numbering: node ids for ``A_hat``, item ids for ``S``).
    """
    num_dst = stop - start
    cols = np.asarray(indices[indptr[start] : indptr[stop]], dtype=np.int64)
    dst = np.repeat(np.arange(num_dst, dtype=np.int64), np.diff(indptr[start : stop + 1]))
    outside = (cols < start) | (cols >= stop)
    others = np.unique(cols[outside])
    src = np.where(outside, num_dst + np.searchsorted(others, cols), cols - start)
    src_nodes = np.concatenate([np.arange(start, stop, dtype=np.int64), others])
    return Block.from_edges(
        torch.from_numpy(src_nodes), num_dst, torch.from_numpy(src), torch.from_numpy(dst), weights
    )


class GraphSlices:
    """What layer-wise inference reads: row blocks of ``A_hat`` and ``S^hops``, feature rows.

    Holds the training graph (its per-edge ``A_hat`` entries are sliced by row range, the
    same array the loader and the driver's shared copy hold: no normalised copy), the item hop
    ``S^hops`` when the run has one, and the store's feature matrices as given (memory maps
    stay memory maps).

    Args:
        graph: the training graph.
        item_graph: the item-item graph ``S`` (``None``: no item hop).
        features: modality -> ``[I, d_m]`` raw feature matrix (memory-mapped is fine).
        item_hops: hops of the item graph (``S^hops``); 0 disables it.
    """

    def __init__(
        self,
        graph: UserItemGraph,
        item_graph: ItemGraph | None,
        features: dict[str, np.ndarray],
        item_hops: int,
    ) -> None:
        self.graph = graph
        self.item_hop = (
            None if item_graph is None or item_hops == 0 else item_graph.power(item_hops)
        )
        self.features = features

    @property
    def num_users(self) -> int:
        return self.graph.num_users

    @property
    def num_items(self) -> int:
        return self.graph.num_items

    def node_block(self, start: int, stop: int) -> Block:
        """Rows ``[start, stop)`` of ``A_hat`` (global node ids), weights ``1/sqrt(d_u d_i)``."""
        g = self.graph
        weights = tensor_view(g.weights[g.indptr[start] : g.indptr[stop]])
        return row_block(start, stop, g.indptr, g.indices, weights)

    def item_block(self, start: int, stop: int) -> Block:
        """Rows ``[start, stop)`` of ``S^hops`` (item ids, not offset by ``num_users``)."""
        if self.item_hop is None:
            raise ValueError("this run has no item hop")
        s = self.item_hop
        weights = tensor_view(s.weights[s.indptr[start] : s.indptr[stop]])
        return row_block(start, stop, s.indptr, s.indices, weights)

    def item_features(self, nodes: Tensor) -> dict[str, Tensor]:
        """Per modality, float32 feature rows of the items among ``nodes``, in their order."""
        items = (nodes[nodes >= self.num_users] - self.num_users).numpy()
        return {m: gather_rows(f, items) for m, f in self.features.items()}
