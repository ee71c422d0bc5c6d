"""Layer-wise, sharded inference: every node's final representation, each worker its share.

The DGL guide's minibatch inference, spread over the workers of a run. Worker ``r`` of ``P``
owns a contiguous block of ``ceil(U / P)`` users and one of ``ceil(I / P)`` items (its
*share*; the user blocks are those of row-sharded user tables, :mod:`sea_dist.train.sharding`),
and no two workers compute the same rows:

1. ``h_0`` of the share's nodes, in chunks of ``chunk_nodes`` (features read by row);
2. for each layer, chunk by chunk, the chunk's source rows of the previous layer are fetched
   from the ranks that hold them (one all-to-all of ids and one of rows, as row-sharded table
   lookups do) and the chunk's rows of the next layer computed from row blocks of ``A_hat``
   (:class:`~sea_dist.graph.slices.GraphSlices`); the layers are summed per node as they come;
3. the share's rows are finished (:meth:`~sea_dist.models.base.Recommender.inference_outputs`:
   the layer mean, the user weights);
4. with an item hop (SEA, MENTOR), one more sparse layer over items: the items' rows are
   all-gathered and the share's items become ``i_0 + S i_0``;
5. the items' final rows are all-gathered once, for ranking against every item; user rows
   stay where they were computed (the evaluator ranks each worker's own users).

Peak per worker: the share's current layer, next layer and running sum (``3 N / P x D``), one
chunk's fetched source rows (its halo: at most ``chunk_nodes`` times the largest degree, never
all ``N``), blocks and features, and at the end every item's rows (``I x D``), which ranking
against all items needs anyway.

Collectives: when a process group is initialised every rank must call
:func:`layerwise_embeddings` together; every rank runs the same number of chunks (empty ones
where its share is short), so row-sharded ID tables, whose lookups are collectives, stay in
step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sea_dist.graph.slices import GraphSlices
from sea_dist.models.base import Recommender
from sea_dist.train.sharding import fetch_rows

#: Nodes per chunk: bounds a chunk's row block, feature rows and dense activations.
DEFAULT_CHUNK_NODES = 65536

# The tensors of this module's last collective, held until its next one. In torch < 2.8 a Gloo
# worker thread that drops the last reference to a tensor created in Python must take the GIL,
# which ``destroy_process_group`` holds while it joins that thread: a deadlock when the group
# is destroyed right after a collective (pytorch/pytorch#56297, fixed by #154976; seen here
# under load). Holding them makes Python's reference the last one.
_LAST_COLLECTIVE: list[Tensor] = []


def _keep(*tensors: Tensor) -> None:
    _LAST_COLLECTIVE[:] = tensors


@dataclass
class ShardedEmbeddings:
    """This worker's final representations: its own users' rows and every item's.

    Attributes:
        user_start: the first user of this worker's share.
        users: ``[n, d]`` rows of users ``user_start .. user_start + n - 1``.
        items: ``[I, d]`` rows of every item.
        num_users: U, over all workers.
    """

    user_start: int
    users: Tensor
    items: Tensor
    num_users: int


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Share:
    """Rank ``rank``'s users and items, and where any node sits in its owner's padded
    ``[bu + bi, D]`` rows (users first)."""

    def __init__(self, num_users: int, num_items: int, rank: int, world: int, chunk: int):
        self.num_users, self.chunk = num_users, chunk
        self.user_block = math.ceil(num_users / world)
        self.item_block = math.ceil(num_items / world)
        self.users = _block(rank, self.user_block, num_users)
        self.items = _block(rank, self.item_block, num_items)
        self.rows = self.user_block + self.item_block

    def chunks(self) -> list[tuple[int, int, int]]:
        """``(first node id, node count, first padded row)`` of each chunk: the same number on
        every rank, some empty where this share is shorter than a block."""
        out = []
        for ids, block, offset, row in (
            (self.users, self.user_block, 0, 0),
            (self.items, self.item_block, self.num_users, self.user_block),
        ):
            for lo in range(0, block, self.chunk):
                n = max(0, min(lo + self.chunk, len(ids)) - lo)
                out.append((offset + ids.start + lo, n, row + lo))
        return out

    def locate(self, nodes: Tensor) -> tuple[Tensor, Tensor]:
        """The rank that holds each global node id, and its row among that rank's rows."""
        is_item = nodes >= self.num_users
        item = nodes - self.num_users
        owner = torch.where(is_item, item // self.item_block, nodes // self.user_block)
        item_row = self.user_block + item % self.item_block
        row = torch.where(is_item, item_row, nodes % self.user_block)
        return owner, row


def _block(rank: int, size: int, total: int) -> range:
    """Rank ``rank``'s ids when ``total`` ids are cut into blocks of ``size``."""
    return range(min(rank * size, total), min((rank + 1) * size, total))


def _all_gather(local: Tensor, buffer: Tensor | None, world: int) -> Tensor:
    """Every rank's equal-sized ``local`` stacked in rank order, written into ``buffer``."""
    if world == 1:
        return local
    if buffer is None:
        buffer = local.new_empty((world * local.shape[0], *local.shape[1:]))
    parts, local = list(buffer.chunk(world)), local.contiguous()
    dist.all_gather(parts, local)
    _keep(*parts, local)
    return buffer


def _fetch(h: Tensor, nodes: Tensor, share: _Share, world: int) -> Tensor:
    """Rows of global node ids ``nodes`` of the layer the ranks hold in shares ``h``; collective
    when ``world > 1``."""
    owner, row = share.locate(nodes)
    return h[row] if world == 1 else fetch_rows(h, owner, row)


@torch.no_grad()
def layerwise_embeddings(
    model: Recommender,
    slices: GraphSlices,
    *,
    chunk_nodes: int = DEFAULT_CHUNK_NODES,
    device: str | torch.device = "cpu",
) -> ShardedEmbeddings:
    """This worker's share of the final node representations (see the module docstring).

    Runs the model in eval mode and restores its mode after. Collective under a process group.

    Args:
        model: any :class:`Recommender`, its ID tables replicated or row-sharded.
        slices: the graph's row blocks and feature rows.
        chunk_nodes: nodes per chunk.
        device: where the model and the computation live.
    """
    if chunk_nodes < 1:
        raise ValueError(f"chunk_nodes={chunk_nodes} must be at least 1")
    rank, world = _world()
    share = _Share(slices.num_users, slices.num_items, rank, world, chunk_nodes)
    chunks = share.chunks()
    was_training = model.training
    model.eval()
    try:
        # 1. layer 0 of the share, chunk by chunk
        h: Tensor | None = None
        for start, n, row in chunks:
            nodes = torch.arange(start, start + n)
            features = {m: f.to(device) for m, f in slices.item_features(nodes).items()}
            x = model.inference_inputs(nodes.to(device), features)
            if h is None:
                h = x.new_zeros((share.rows, x.shape[1]))
            h[row : row + n] = x
        assert h is not None  # there is at least one chunk of users
        total = h.clone()
        # 2. layers 1..L: each chunk fetches its source rows of the previous layer from their
        # owners, and computes the share's rows of the next
        for layer in range(model.num_inference_layers):
            nxt = torch.zeros_like(h)
            for start, n, row in chunks:
                block = slices.node_block(start, start + n).to(device) if n else None
                src = block.src_nodes if block is not None else torch.empty(0, dtype=torch.long)
                h_src = _fetch(h, src.to(device), share, world)
                if block is not None:
                    nxt[row : row + n] = model.inference_layer(layer, block, h_src)
            h = nxt
            total += h
        del h
        # 3. finished rows (every chunk runs: user weights are table lookups)
        emb: Tensor | None = None
        for start, n, row in chunks:
            nodes = torch.arange(start, start + n, device=device)
            e = model.inference_outputs(nodes, total[row : row + n])
            if emb is None:
                emb = e.new_zeros((share.rows, e.shape[1]))
            emb[row : row + n] = e
        assert emb is not None
        del total
        own_items = emb[share.user_block :]
        # 4. the item hop, one more sparse layer over items
        items: Tensor | None = None
        if model.item_hop and slices.item_hop is not None:
            items = _all_gather(own_items, None, world)
            hopped = torch.zeros_like(own_items)
            for lo in range(0, len(share.items), chunk_nodes):
                hi = min(lo + chunk_nodes, len(share.items))
                block = slices.item_block(share.items[lo], share.items[hi - 1] + 1).to(device)
                # Item ids are the gathered rows: item blocks are equal-sized and in rank order.
                hopped[lo:hi] = model.inference_item_hop(
                    block, items[block.src_nodes], own_items[lo:hi]
                )
            own_items = hopped
        # 5. every item's final row; the users stay sharded
        items = _all_gather(own_items, items, world)[: slices.num_items]
        users = emb[: len(share.users)]
    finally:
        model.train(was_training)
    return ShardedEmbeddings(share.users.start, users, items, slices.num_users)


def all_finite(emb: ShardedEmbeddings) -> bool:
    """Whether every worker's rows are finite (collective: the same answer on every rank)."""
    ok = torch.tensor(
        [float(bool(torch.isfinite(emb.users).all()) and bool(torch.isfinite(emb.items).all()))]
    )
    if _world()[1] > 1:
        ok = ok.to(emb.items.device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        _keep(ok)
    return bool(ok.item() > 0)


def gather_users(emb: ShardedEmbeddings, dst: int = 0) -> Tensor | None:
    """Every user's row ``[U, d]`` on rank ``dst`` (``None`` elsewhere), for the export.

    Collective under a process group.
    """
    rank, world = _world()
    if world == 1:
        return emb.users
    block = math.ceil(emb.num_users / world)
    local = emb.users.new_zeros((block, emb.users.shape[1]))
    local[: len(emb.users)] = emb.users
    out = local.new_empty((world * block, local.shape[1])) if rank == dst else None
    parts = [] if out is None else list(out.chunk(world))
    dist.gather(local, parts or None, dst=dst)
    _keep(local, *parts)
    return None if out is None else out[: emb.num_users]
