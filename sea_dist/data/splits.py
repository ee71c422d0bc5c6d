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


def mmrec_split(user_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Assign each interaction to train (0), valid (1) or test (2) with MMRec's per-user rule.

    Each user's interactions are shuffled. A user with ``n >= 10`` interactions holds out
    ``floor(n / 5)`` of them, ``floor(held / 2)`` as valid and the rest as test; a user with
    fewer than 10 keeps ``n - 2`` for training and holds out one valid and one test
    interaction (n = 2: one train, one test; n = 1: train only). The rounding is the one
    found in the ml-100k split of ``../shared/data`` (made with MMRec's rule): n = 25 holds
    out 5, 2 valid and 3 test.

    Args:
        user_ids: ``[E]`` the user of each interaction, in any order.
        rng: the source of the shuffle.

    Returns:
        ``[E]`` int8 split labels, aligned with ``user_ids``.
    """
    user_ids = np.asarray(user_ids)
    order = np.lexsort((rng.random(len(user_ids)), user_ids))
    sorted_users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    lengths = np.diff(np.r_[starts, len(sorted_users)])
    count = np.repeat(lengths, lengths)
    rank = np.arange(len(sorted_users)) - np.repeat(starts, lengths)
    held = np.where(count < 10, np.minimum(count - 1, 2), count // 5)
    num_valid = held // 2
    first_held = count - held
    labels_sorted = np.where(rank < first_held, 0, np.where(rank < first_held + num_valid, 1, 2))
    labels = np.empty(len(user_ids), dtype=np.int8)
    labels[order] = labels_sorted
    return labels
