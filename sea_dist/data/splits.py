"""Per-user item lists as CSR arrays: seen (training) items, evaluation positives."""

from __future__ import annotations

import numpy as np


def user_item_csr(
    users: np.ndarray, items: np.ndarray, num_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """Group ``items`` by user: ``indices[indptr[u]:indptr[u+1]]`` are user u's items, sorted.

    Duplicate (user, item) pairs are kept once.

    Returns:
        ``(indptr [num_users + 1] int64, indices [nnz] int64)``.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    if len(users):
        keep = np.ones(len(users), dtype=bool)
        keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
        users, items = users[keep], items[keep]
    counts = np.bincount(users, minlength=num_users)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, items
