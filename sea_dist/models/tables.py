"""ID tables: one learnable row per user or item, read by calling the table.

Models never index a table's weight directly: ``table(ids)`` is the only read. That is what
lets the trainer replace a table by a row-sharded one (:mod:`sea_dist.train.sharding`), whose
rows live on the workers that own them, without the model knowing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class IdTable(nn.Module):
    """A ``[num_rows, dim]`` table of per-id rows.

    Args:
        num_rows: how many ids (rows) the table has.
        dim: width of a row.

    Shapes:
        ids: any shape of int64 ids in ``[0, num_rows)`` -> ``ids.shape + (dim,)``.
    """

    def __init__(self, num_rows: int, dim: int) -> None:
        super().__init__()
        self.num_rows, self.dim = num_rows, dim
        self.weight = nn.Parameter(torch.empty(num_rows, dim))

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids]

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}"
