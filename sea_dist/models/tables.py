"""ID tables: one learnable row per user or item, read by calling the table.

Models never index a table's weight directly: ``table(ids)`` is the only read. That is what
lets the trainer replace a table by a row-sharded one (:mod:`sea_dist.train.sharding`), whose
rows live on the workers that own them, without the model knowing.

A table's initial rows are a function of one seed (drawn from torch's global generator, so a
seeded run builds the same tables) and of the row range alone: rows are drawn in fixed blocks
of :data:`ROWS_PER_DRAW`, each from its own generator. A worker that keeps only some rows draws
only their blocks (:meth:`IdTable.initial_rows`), and under :func:`deferred_tables` a model is
built without filling its tables at all, so a row-sharded run never allocates a whole table.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Rows drawn from one generator; the blocks do not depend on how the table is split.
ROWS_PER_DRAW = 1 << 16

#: ``xavier_normal`` / ``xavier_uniform`` as torch.nn.init computes them for a ``[rows, dim]``
#: matrix; ``softmax`` rows are the softmax of xavier-normal logits (per-user fusion weights).
TableInit = Literal["xavier_normal", "xavier_uniform", "softmax"]

_DEFER = False


@contextlib.contextmanager
def deferred_tables() -> Iterator[None]:
    """Build models whose :class:`IdTable` s draw their seed but write no rows.

    The weights stay unwritten ``torch.empty`` tensors (no memory is touched) until they are
    replaced by row shards built from :meth:`IdTable.initial_rows`; calling a table that was
    never filled raises.
    """
    global _DEFER
    previous, _DEFER = _DEFER, True
    try:
        yield
    finally:
        _DEFER = previous


class IdTable(nn.Module):
    """A ``[num_rows, dim]`` table of per-id rows.

    Args:
        num_rows: how many ids (rows) the table has.
        dim: width of a row.
        init: how the rows start (:data:`TableInit`).

    Shapes:
        ids: any shape of int64 ids in ``[0, num_rows)`` -> ``ids.shape + (dim,)``.

    The rows are written by :meth:`reset_parameters`, which the owning model's
    ``reset_parameters`` calls (once: filling here too would write every table twice).
    """

    def __init__(self, num_rows: int, dim: int, init: TableInit = "xavier_normal") -> None:
        super().__init__()
        self.num_rows, self.dim, self.init = num_rows, dim, init
        self.weight = nn.Parameter(torch.empty(num_rows, dim))
        self.seed: int | None = None  # drawn by reset_parameters
        self.filled = False
        self.sparse_grad = False  # see sparse_table_gradients

    def reset_parameters(self) -> None:
        self.seed = int(torch.randint(2**62, (), device="cpu"))
        self.filled = not _DEFER
        if self.filled and not self.weight.is_meta:  # meta: a dry build, nothing to write
            with torch.no_grad():
                for start in range(0, self.num_rows, ROWS_PER_DRAW):
                    stop = min(start + ROWS_PER_DRAW, self.num_rows)
                    self.weight[start:stop] = self.initial_rows(start, stop)

    def initial_rows(self, start: int, stop: int) -> Tensor:
        """Rows ``[start, stop)`` as :meth:`reset_parameters` writes them."""
        if self.seed is None:
            raise RuntimeError("this IdTable has no initial rows yet: call reset_parameters()")
        first, last = start // ROWS_PER_DRAW, -(-stop // ROWS_PER_DRAW)
        blocks = [self._draw(self.seed, b) for b in range(first, last)]
        rows = torch.cat(blocks) if blocks else torch.empty(0, self.dim, device="cpu")
        offset = first * ROWS_PER_DRAW
        return rows[start - offset : stop - offset]

    def _draw(self, seed: int, block: int) -> Tensor:
        rows = min(ROWS_PER_DRAW, self.num_rows - block * ROWS_PER_DRAW)
        generator = torch.Generator().manual_seed(seed + block)
        fan = self.num_rows + self.dim
        values = torch.empty(rows, self.dim, device="cpu")
        if self.init == "xavier_uniform":
            bound = math.sqrt(6.0 / fan)
            return values.uniform_(-bound, bound, generator=generator)
        values.normal_(0.0, math.sqrt(2.0 / fan), generator=generator)
        return F.softmax(values, dim=1) if self.init == "softmax" else values

    def forward(self, ids: Tensor) -> Tensor:
        if not self.filled:
            raise RuntimeError(
                "this IdTable was never filled: call reset_parameters() (its model's does) "
                "outside deferred_tables(), or shard it"
            )
        return F.embedding(ids, self.weight, sparse=self.sparse_grad)

    def extra_repr(self) -> str:
        return f"{self.num_rows}, {self.dim}, init={self.init}"


def sparse_table_gradients(model: nn.Module) -> None:
    """Make every :class:`IdTable` of ``model`` produce a row-sparse gradient (the rows looked
    up, as ``torch.sparse_coo_tensor``), for a ``SparseAdam``.

    A dense gradient of a 3M-row table is the whole table, zero-filled, scattered into and
    scanned for touched rows at every step, however few rows the batch read.
    """
    for module in model.modules():
        if isinstance(module, IdTable):
            module.sparse_grad = True
