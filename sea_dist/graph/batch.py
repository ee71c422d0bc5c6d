"""What the graph layer hands to models: message-passing blocks and minibatches.

Node ids are homogeneous: users are ``0 .. U-1`` and items ``U .. U+I-1``. Everything here is
plain torch (no DGL objects), so batches pickle cheaply, pin, and move to any device.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor


@dataclass
class Block:
    """One propagation step from ``src_nodes`` to the first ``num_dst`` of them.

    As in DGL's blocks, the destination nodes are a prefix of the source nodes, so a node's
    own input row is ``h_src[:num_dst]``.

    Attributes:
        src_nodes: global node ids of the source side, ``[N_src]`` (int64).
        num_dst: number of destination nodes (the first ``num_dst`` of ``src_nodes``).
        adj: sparse CSR matrix ``[num_dst, N_src]`` whose entries are the edge weights
            (under sampling already rescaled so that ``adj @ h`` is unbiased).
    """

    src_nodes: Tensor
    num_dst: int
    adj: Tensor

    @classmethod
    def from_edges(
        cls,
        src_nodes: Tensor,
        num_dst: int,
        edge_src: Tensor,
        edge_dst: Tensor,
        edge_weight: Tensor,
        distinct: bool = False,
    ) -> Block:
        """Build from local edge lists (``edge_src`` indexes ``src_nodes``, ``edge_dst`` the dst).

        Repeated ``(dst, src)`` pairs are summed. ``distinct=True`` promises there are none
        (a sampled block), and the CSR rows are laid out directly: no sort when the edges
        already come grouped by destination, as DGL's blocks do.
        """
        shape = (num_dst, len(src_nodes))
        dst, src, weight = edge_dst.long(), edge_src.long(), edge_weight.float()
        if not distinct:
            coo = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, shape).coalesce()
            return cls(src_nodes=src_nodes.long(), num_dst=num_dst, adj=coo.to_sparse_csr())
        if len(dst) > 1 and not bool((dst[1:] >= dst[:-1]).all()):
            order = torch.argsort(dst, stable=True)
            dst, src, weight = dst[order], src[order], weight[order]
        crow = torch.zeros(num_dst + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(dst, minlength=num_dst), 0)
        adj = torch.sparse_csr_tensor(crow, src, weight, shape)
        return cls(src_nodes=src_nodes.long(), num_dst=num_dst, adj=adj)

    @property
    def dst_nodes(self) -> Tensor:
        return self.src_nodes[: self.num_dst]

    @property
    def num_edges(self) -> int:
        return int(self.adj.values().numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Block:
        return replace(
            self,
            src_nodes=self.src_nodes.to(device, non_blocking=non_blocking),
            adj=self.adj.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Block:
        # Sparse CSR tensors cannot be pinned in torch 2.2; the dense ids can.
        return replace(self, src_nodes=self.src_nodes.pin_memory())


@dataclass
class MiniBatch:
    """A BPR minibatch (or, in full-graph mode, the whole graph plus the batch's triples).

    ``blocks[0].src_nodes`` are the input nodes; ``blocks[-1].dst_nodes`` are the output nodes,
    a prefix of every earlier block's nodes. ``users``, ``pos_items``, ``neg_items`` and
    ``loss_items`` are POSITIONS in the output nodes, not ids.

    Attributes:
        blocks: one block per propagation layer, input side first. With zero layers the list
            is empty and ``output_nodes`` equals ``input_nodes``.
        input_nodes: global ids of the nodes whose input representations the model computes.
        output_nodes: global ids of the nodes whose final representations the batch needs.
        users: ``[B]`` positions of the batch users.
        pos_items: ``[B]`` positions of their positive items.
        neg_items: ``[B, num_negatives]`` positions of the sampled negatives.
        loss_items: positions of the items that item-level losses (SoloSim, CLUB) cover: the
            batch's unique items when sampled, every item in full-graph mode.
        item_graph: item-item semantic hop on the output nodes (``num_dst`` = all output
            nodes, edges only into item rows), or ``None`` when there is none.
        item_features: per modality, the raw feature rows of the input nodes that are items,
            in the order of ``input_nodes[input_nodes >= num_users]``.
        num_users: U, to tell user ids from item ids.
    """

    blocks: list[Block]
    input_nodes: Tensor
    output_nodes: Tensor
    users: Tensor
    pos_items: Tensor
    neg_items: Tensor
    loss_items: Tensor
    num_users: int
    item_graph: Block | None = None
    item_features: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.users.numel())

    @property
    def input_is_item(self) -> Tensor:
        return self.input_nodes >= self.num_users

    def sizes(self) -> dict[str, int]:
        """The counts a step's FLOPs and bytes follow (:mod:`sea_dist.bench.roofline`).

        ``block_edges`` / ``block_dst`` are summed over the blocks; ``output_users`` are the
        rows the per-user tables read at the output (SEA's user weights).
        """
        return {
            "batch_size": self.batch_size,
            "negatives": int(self.neg_items.shape[1]) if self.neg_items.dim() == 2 else 1,
            "input_nodes": int(self.input_nodes.numel()),
            "input_items": int(self.input_is_item.sum()),
            "output_nodes": int(self.output_nodes.numel()),
            "output_users": int((self.output_nodes < self.num_users).sum()),
            "block_edges": sum(b.num_edges for b in self.blocks),
            "block_dst": sum(b.num_dst for b in self.blocks),
            "item_graph_edges": self.item_graph.num_edges if self.item_graph is not None else 0,
            "loss_items": int(self.loss_items.numel()),
        }

    def ids(self, positions: Tensor) -> Tensor:
        """Global node ids at output ``positions`` (item ids stay offset by ``num_users``)."""
        return self.output_nodes[positions]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MiniBatch:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Block)):
                value = value.to(device, non_blocking=non_blocking)
            elif isinstance(value, list):
                value = [b.to(device, non_blocking=non_blocking) for b in value]
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=non_blocking) for k, v in value.items()}
            out[f.name] = value
        return MiniBatch(**out)

    def pin_memory(self) -> MiniBatch:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, Block)):
                value = value.pin_memory()
            elif isinstance(value, list):
                value = [b.pin_memory() for b in value]
            elif isinstance(value, dict):
                value = {k: v.pin_memory() for k, v in value.items()}
            out[f.name] = value
        return MiniBatch(**out)
