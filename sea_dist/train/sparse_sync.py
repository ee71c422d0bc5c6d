"""Row-sparse gradient synchronisation for ID embedding tables.

DDP all-reduces every parameter densely, so a step that touches 4,000 rows of a 3M-row user
table would still move the whole table. ID tables are therefore kept out of DDP and synced
here: each rank sends only the rows its batch touched (row ids plus values), every rank
sums what it receives into the same row-sparse gradient, and a sparse optimizer
(``torch.optim.SparseAdam``) updates only those rows. Communication per step is
``O(touched rows x width)``, independent of the table size, on gloo and NCCL alike.

This is the ``train.tables=replicated`` layout: every worker holds the full tables. With
``train.tables=row_sharded`` each worker holds 1/P of them instead
(:mod:`sea_dist.train.sharding`), which uses only :func:`nonzero_rows` from here, so that both
layouts leave out the same rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def nonzero_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """Ids (sorted, distinct) and gradient rows of the rows with a non-zero gradient; sends
    nothing.

    A dense gradient is scanned whole; a sparse one (:func:`~sea_dist.models.tables.
    sparse_table_gradients`) only over the rows it holds. Rows whose gradient is zero are left
    out either way, so SparseAdam's moments of a row move only when its gradient does.
    """
    if grad.is_sparse:
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        nonzero = values.abs().sum(dim=1) != 0
        return rows[nonzero], values[nonzero]
    rows = torch.nonzero(grad.abs().sum(dim=1), as_tuple=True)[0]
    return rows, grad.index_select(0, rows)


def _gather_rows(rows: Tensor, values: Tensor, world_size: int) -> tuple[Tensor, Tensor]:
    """All-gather variable-length (rows, values) pairs: pad to the longest, then trim."""
    count = torch.tensor([rows.numel()], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded_rows = torch.zeros(longest, dtype=rows.dtype, device=rows.device)
    padded_rows[: rows.numel()] = rows
    padded_vals = values.new_zeros((longest, values.shape[1]))
    padded_vals[: rows.numel()] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world_size)]
    all_vals = [torch.empty_like(padded_vals) for _ in range(world_size)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_vals, padded_vals)
    keep = [slice(0, int(c.item())) for c in counts]
    return (
        torch.cat([r[k] for r, k in zip(all_rows, keep)]),
        torch.cat([v[k] for v, k in zip(all_vals, keep)]),
    )


def sync_sparse_grads(tables: list[nn.Parameter]) -> int:
    """Replace each table's gradient by the row-sparse mean over ranks.

    Works without a process group too (one process): the gradient just becomes sparse.

    Returns:
        Bytes this rank sent for the tables (row ids + values, counted once per peer).
    """
    distributed = dist.is_available() and dist.is_initialized()
    world_size = dist.get_world_size() if distributed else 1
    sent = 0
    for table in tables:
        if table.grad is None:
            continue
        rows, values = nonzero_rows(table.grad)
        gathered = distributed and world_size > 1
        if gathered:
            sent += (rows.numel() * rows.element_size() + values.numel() * values.element_size()) * (
                world_size - 1
            )
            rows, values = _gather_rows(rows, values, world_size)
            values = values / world_size  # DDP averages dense gradients; match it
        grad = torch.sparse_coo_tensor(
            rows.unsqueeze(0), values, table.shape, is_coalesced=not gathered
        )
        table.grad = grad.coalesce() if gathered else grad  # SparseAdam coalesces otherwise
    return sent
