"""Message passing: the only graph operations models call. Plain torch, CPU or GPU."""

from __future__ import annotations

import torch
from torch import Tensor

from sea_dist.graph.batch import Block


def propagate(block: Block, h_src: Tensor) -> Tensor:
    """``adj @ h_src``: weighted sum of source rows into each destination row.

    Shapes:
        h_src: ``[N_src, d]`` -> ``[num_dst, d]``.
    """
    if h_src.shape[0] != block.adj.shape[1]:
        raise ValueError(f"h_src has {h_src.shape[0]} rows, block has {block.adj.shape[1]} sources")
    return torch.sparse.mm(block.adj, h_src)
