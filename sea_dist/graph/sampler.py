"""Seed edges -> sampled MiniBatch: negatives, item-graph hop, L-hop neighbourhood blocks.

A sampled batch is built in named stages (:func:`sample_batch` runs them in order):

1. :func:`sample_negatives`: uniform over the pool's items (:func:`negative_pool`: by default
   the items of the training split, as MMRec's sampler) that the user has NOT seen in
   training, exactly.
2. :func:`output_nodes_for`: batch users, positive and negative items, and the item-graph
   neighbours of those items (so the item hop ``i = i0 + S^h i0`` is exact for batch items),
   or, with an item fanout, an importance sample of them (PinSage-style neighbourhoods).
3. :class:`BlockSampler`: DGL neighbour or LABOR sampling over the user-item graph from the
   output nodes, per-layer fanouts, converted into plain-torch :class:`Block` s whose weights
   make ``propagate`` an unbiased estimate of ``A_hat h``.

Unbiasedness: DGL's neighbour sampler keeps ``n_i = min(fanout, d_i)`` of node i's ``d_i``
neighbours uniformly without replacement, so each neighbour is kept with probability
``n_i / d_i``; LABOR-0 (https://arxiv.org/abs/2210.13339) keeps each with the same probability
``min(fanout, d_i) / d_i`` but draws one variate per SOURCE node, shared by every destination
of the batch, so destinations that share neighbours sample the same ones and a layer reaches
fewer distinct nodes (how many fewer depends on how much they share: 4 % on the generated
million-item catalogue, whose interactions are uniform). Weighting a kept edge by
``A_hat[i, j]`` over its probability makes ``E[sum_j w_ij h_j] = sum_j A_hat[i, j] h_j``
(neighbour sampling divides by the realised ``n_i``, equal to the expected count). The
sampled item hop draws ``item_fanout`` entries of a row with replacement, with probability
proportional to ``|S_ij|``, each weighted ``sign(S_ij) sum_j |S_ij| / item_fanout``: unbiased
too. Layers sample independently and propagation is linear, so the multi-layer sum and the
item hop on top stay unbiased. With fanout ``"all"`` the factor is exactly 1 and every block is
the exact restriction of ``A_hat`` to its rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Union

import dgl
import numpy as np
import torch

from sea_dist.errors import DataError
from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.graph.build import UserItemGraph, tensor_view
from sea_dist.graph.knn import ItemGraph

Fanout = Union[int, str]
NegativePool = Literal["train_items", "all_items"]
NeighbourSampling = Literal["neighbor", "labor"]


def negative_pool(graph: UserItemGraph, pool: NegativePool) -> np.ndarray | None:
    """The sorted item ids negatives are drawn from, or ``None`` for every item.

    ``"train_items"``: the items with a training interaction, what MMRec's sampler draws from
    (its item list is the training split's); ``"all_items"``: every item id, including those
    seen only in valid/test or nowhere.
    """
    if pool == "all_items":
        return None
    if pool != "train_items":
        raise ValueError(f"pool must be 'train_items' or 'all_items', got {pool!r}")
    return np.flatnonzero(graph.degrees[graph.num_users :] > 0)


def check_negatives_exist(graph: UserItemGraph, pool: np.ndarray | None = None) -> None:
    """Raise if some user has seen every item of the pool: BPR has no negative for it."""
    size = graph.num_items if pool is None else len(pool)
    full = np.flatnonzero(graph.degrees[: graph.num_users] >= size)
    if len(full):
        what = "items" if pool is None else "items that appear in training"
        raise DataError(
            f"user {full[0]} interacted with all {size} {what}; BPR needs an unseen item per user"
        )


def sample_negatives(
    graph: UserItemGraph,
    users: np.ndarray,
    num_negatives: int,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Draw items uniformly from each user's unseen pool items, exactly, with no rejection loop.

    Items are counted by their position in the pool (the item id itself when ``pool`` is
    ``None``). With ``s_0 < s_1 < ...`` the positions of the user's sorted seen items,
    ``s_j - j`` counts the unseen pool items below ``s_j`` and is non-decreasing. Drawing ``r``
    uniformly in ``[0, P - d_u)`` and returning ``r + #{j : s_j - j <= r}`` maps ``r`` to the
    ``r``-th unseen pool item, a bijection, so every unseen pool item is equally likely
    whatever the user's degree (also for a user who has seen all but one). The count is a
    binary search inside the user's neighbour list, vectorised over the batch.

    Args:
        graph: the training graph (its user rows are the seen lists).
        users: ``[B]`` user ids.
        num_negatives: draws per user (independent, with replacement).
        rng: source of randomness.
        pool: sorted item ids to draw from, holding every training item
            (:func:`negative_pool`); ``None``: all items.

    Returns:
        ``[B, num_negatives]`` int64 item ids (0-based).
    """
    users = np.repeat(np.asarray(users, dtype=np.int64), num_negatives)
    start, end = graph.indptr[users], graph.indptr[users + 1]
    size = graph.num_items if pool is None else len(pool)
    r = (rng.random(len(users)) * (size - (end - start))).astype(np.int64)
    # Binary search for the first j in [start, end) whose seen item has more than r unseen
    # pool items below it: s_j - (j - start) > r.
    lo, hi = start.copy(), end.copy()
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        seen = graph.indices[np.where(active, mid, 0)] - graph.num_users
        position = seen if pool is None else np.searchsorted(pool, seen)
        below = position - (mid - start) <= r
        lo = np.where(active & below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    picked = (r + (lo - start)).reshape(-1, num_negatives)
    return picked if pool is None else pool[picked]


def _csr_rows(indptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``indices`` of the entries of ``rows``, and the row index of each."""
    starts, lens = indptr[rows], indptr[rows + 1] - indptr[rows]
    row_of = np.repeat(np.arange(len(rows)), lens)
    first = np.repeat(starts - np.cumsum(lens) + lens, lens)
    return first + np.arange(len(row_of)), row_of


def output_nodes_for(
    num_users: int,
    users: np.ndarray,
    pos_items: np.ndarray,
    neg_items: np.ndarray,
    item_hop: ItemGraph | None,
    item_fanout: Fanout = "all",
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, Block | None]:
    """Output nodes of a batch (sorted global ids) and the item-hop block over them.

    Args:
        num_users: U.
        users: ``[B]`` user ids.
        pos_items: ``[B]`` item ids (0-based).
        neg_items: ``[B, n]`` item ids (0-based).
        item_hop: ``S^hops``, or ``None`` for no item hop.
        item_fanout: ``"all"`` for every entry of a batch item's row of ``S^hops``, or the
            number of importance draws for a row with more entries than that (module
            docstring); rows with at most that many are taken whole.
        rng: source of the draws (needed for an int ``item_fanout``).

    Returns:
        ``output_nodes`` and a :class:`Block` with ``num_dst = len(output_nodes)`` whose edges go
        only into the batch items' rows (or ``None``).
    """
    batch_items = np.unique(np.concatenate([pos_items, neg_items.reshape(-1)]))
    ids = [users, batch_items + num_users]
    if item_hop is not None:
        if item_fanout == "all":
            where, row_of = _csr_rows(item_hop.indptr, batch_items)
            nbrs, weights = item_hop.indices[where], item_hop.weights[where]
        else:
            assert rng is not None, "a sampled item hop needs rng"
            row_of, nbrs, weights = _sample_rows(item_hop, batch_items, int(item_fanout), rng)
        nbr_ids = nbrs + num_users
        ids.append(nbr_ids)
    output = np.unique(np.concatenate(ids))
    if item_hop is None:
        return output, None
    dst = np.searchsorted(output, batch_items[row_of] + num_users)
    src = np.searchsorted(output, nbr_ids)
    block = Block.from_edges(
        torch.from_numpy(output),
        len(output),
        torch.from_numpy(src),
        torch.from_numpy(dst),
        torch.from_numpy(np.asarray(weights, dtype=np.float32)),
    )
    return output, block


def _sample_rows(
    matrix: ItemGraph, rows: np.ndarray, fanout: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries of ``matrix[rows]``: whole rows of at most ``fanout`` entries; ``fanout``
    draws with replacement, probability proportional to ``|w|``, from the longer ones.

    Returns:
        ``(row_of, columns, weights)``: the index into ``rows`` of each entry, its column and
        its weight (a drawn entry: ``sign(w) * sum|w_row| / fanout``; duplicates add up).
    """
    where, row_of = _csr_rows(matrix.indptr, rows)
    lengths = np.diff(matrix.indptr)[rows]
    whole = np.repeat(lengths <= fanout, lengths)
    long_rows = np.flatnonzero(lengths > fanout)
    # Within the long rows' gathered entries, a running sum of |w|: a row's draws land in
    # its own stretch [lo, hi) of it.
    entries = where[~whole]
    magnitude = np.abs(matrix.weights[entries]).astype(np.float64)
    running = np.cumsum(magnitude)
    ends = np.cumsum(lengths[long_rows])
    starts = ends - lengths[long_rows]
    lo, hi = running[starts] - magnitude[starts], running[ends - 1]
    draws = lo[:, None] + rng.random((len(long_rows), fanout)) * (hi - lo)[:, None]
    picked = np.searchsorted(running, draws, side="right")
    picked = np.clip(picked, starts[:, None], (ends - 1)[:, None]).ravel()
    share = np.repeat((hi - lo) / fanout, fanout)
    drawn = entries[picked]
    return (
        np.concatenate([row_of[whole], np.repeat(long_rows, fanout)]),
        np.concatenate([matrix.indices[where[whole]], matrix.indices[drawn]]),
        np.concatenate(
            [matrix.weights[where[whole]], np.sign(matrix.weights[drawn]) * share]
        ).astype(np.float32),
    )


def check_fanouts(fanouts: Sequence[Fanout]) -> None:
    """Raise unless every fanout is a positive int or ``"all"``."""
    for f in fanouts:
        if f != "all" and not (isinstance(f, int) and not isinstance(f, bool) and f >= 1):
            raise ValueError(f"fanouts must be positive ints or 'all', got {list(fanouts)}")


class BlockSampler:
    """L-hop neighbourhood sampling with DGL, returning unbiased plain-torch blocks.

    Args:
        graph: the training graph.
        fanouts: one entry per layer, INPUT side first (as in DGL's ``NeighborSampler``):
            a positive int, or ``"all"`` for every neighbour.
        method: ``"neighbor"`` (DGL's ``NeighborSampler``: exactly ``min(fanout, d)``
            neighbours per node) or ``"labor"`` (DGL's ``LaborSampler``, LABOR-0: that many in
            expectation, with fewer distinct nodes per layer; module docstring).

    Not thread-safe: DGL's fused sampler keeps an id map between calls; use one per thread.
    """

    def __init__(
        self,
        graph: UserItemGraph,
        fanouts: Sequence[Fanout],
        method: NeighbourSampling = "neighbor",
    ):
        check_fanouts(fanouts)
        self.graph = graph
        self.fanouts = list(fanouts)
        self.method = method
        dgl_fanouts = [-1 if f == "all" else f for f in fanouts]
        if method == "neighbor":
            self._sampler = dgl.dataloading.NeighborSampler(dgl_fanouts)
        elif method == "labor":
            self._sampler = dgl.dataloading.LaborSampler(dgl_fanouts)
        else:
            raise ValueError(f"method must be 'neighbor' or 'labor', got {method!r}")

    def seed(self, value: int) -> None:
        """Seed the next :meth:`sample` (LABOR keeps its own generator; DGL's global seed,
        ``dgl.seed``, drives the neighbour sampler)."""
        if self.method == "labor":
            self._sampler.set_seed(value)

    def sample(self, output_nodes: np.ndarray) -> tuple[torch.Tensor, list[Block]]:
        """Blocks (input side first) whose last destination nodes are ``output_nodes``.

        Returns:
            ``(input_nodes, blocks)``; ``input_nodes`` starts with ``output_nodes`` in order.
        """
        seeds = torch.from_numpy(np.asarray(output_nodes, dtype=np.int64))
        if not self.fanouts:
            return seeds, []
        input_nodes, _, dgl_blocks = self._sampler.sample_blocks(self.graph.dgl_graph, seeds)
        return input_nodes, [self._convert(b, f) for b, f in zip(dgl_blocks, self.fanouts)]

    def _convert(self, block: dgl.DGLGraph, fanout: Fanout) -> Block:
        src_ids = block.srcdata[dgl.NID]
        num_dst = block.num_dst_nodes()
        src, dst = block.edges()
        dst_ids = src_ids[dst]  # destination nodes are a prefix of the source nodes
        degrees = tensor_view(self.graph.degrees)[dst_ids].double()
        if self.method == "labor" and fanout != "all":
            kept = degrees.clamp(max=float(fanout))  # expected count: each kept w.p. k / d
        else:
            kept = torch.bincount(dst, minlength=num_dst).double()[dst]
        weight = self.graph.edge_weights(src_ids[src], dst_ids) * degrees / kept
        return Block.from_edges(src_ids, num_dst, src, dst, weight, distinct=True)


def sample_batch(
    graph: UserItemGraph,
    sampler: BlockSampler,
    item_hop: ItemGraph | None,
    edge_ids: np.ndarray,
    num_negatives: int,
    rng: np.random.Generator,
    pool: np.ndarray | None = None,
    item_fanout: Fanout = "all",
) -> MiniBatch:
    """A sampled BPR minibatch for the seed edges ``edge_ids`` (item features not yet attached).

    Negatives come from ``pool`` (see :func:`sample_negatives`); ``item_fanout`` bounds the
    item hop (see :func:`output_nodes_for`). Positions of the batch's
    users and items are found in the (sorted) output nodes; ``loss_items`` are the positions
    of the batch's distinct positive and negative items.
    """
    num_users = graph.num_users
    users = graph.edge_users(edge_ids)
    pos = graph.edge_items(edge_ids)
    neg = sample_negatives(graph, users, num_negatives, rng, pool)
    output, item_block = output_nodes_for(num_users, users, pos, neg, item_hop, item_fanout, rng)
    input_nodes, blocks = sampler.sample(output)
    batch_items = np.unique(np.concatenate([pos, neg.reshape(-1)])) + num_users

    def positions(ids: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.searchsorted(output, ids))

    return MiniBatch(
        blocks=blocks,
        input_nodes=input_nodes,
        output_nodes=torch.from_numpy(output),
        users=positions(users),
        pos_items=positions(pos + num_users),
        neg_items=positions(neg + num_users),
        loss_items=positions(batch_items),
        num_users=num_users,
        item_graph=item_block,
    )
