"""Summary statistics of a store: what ``sea-dist data inspect`` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from sea_dist.data.schema import ITEM_ID, SPLIT, SPLIT_NAMES, USER_ID
from sea_dist.data.store import Store

QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
# Feature statistics use at most this many evenly spaced rows, so a million-item matrix
# costs a few tens of megabytes of reads, not a full pass.
MAX_FEATURE_ROWS = 1 << 16


def inspect_store(store: Store) -> dict[str, Any]:
    """Counts, density, degree quantiles, splits, cold-start counts and feature statistics.

    Returns:
        A JSON-serialisable dict (plain ints, floats, strings, lists and dicts).
    """
    table = store.interactions([USER_ID, ITEM_ID, SPLIT])
    users = table[USER_ID].to_numpy()
    items = table[ITEM_ID].to_numpy()
    split = table[SPLIT].to_numpy()
    del table
    num_users, num_items = store.num_users, store.num_items
    train = split == 0
    user_degree = np.bincount(users, minlength=num_users)
    item_degree = np.bincount(items, minlength=num_items)
    user_train = np.bincount(users[train], minlength=num_users)
    item_train = np.bincount(items[train], minlength=num_items)
    evaluated = ~train
    eval_users = np.zeros(num_users, dtype=bool)
    eval_users[users[evaluated]] = True
    return {
        "path": str(store.path),
        "num_users": num_users,
        "num_items": num_items,
        "num_interactions": len(users),
        "density": len(users) / (num_users * num_items),
        "splits": {
            name: int(n)
            for name, n in zip(SPLIT_NAMES, np.bincount(split, minlength=3), strict=True)
        },
        "user_degree": _quantiles(user_degree),
        "item_degree": _quantiles(item_degree),
        "cold_start": {
            "users_without_interactions": int((user_degree == 0).sum()),
            "users_without_train": int((user_train == 0).sum()),
            "evaluated_users_without_train": int((eval_users & (user_train == 0)).sum()),
            "items_without_interactions": int((item_degree == 0).sum()),
            "items_without_train": int((item_train == 0).sum()),
            "eval_rows_with_untrained_item": int((item_train[items[evaluated]] == 0).sum()),
        },
        "duplicates": store.meta["duplicates"],
        "id_maps": store.meta.get("id_maps"),
        "features": {name: _feature_stats(store, name) for name in store.modalities},
        "labels": _label_stats(store),
        "checksum": store.checksum,
    }


def _quantiles(degree: np.ndarray) -> dict[str, float]:
    values = np.quantile(degree, QUANTILES) if len(degree) else np.zeros(len(QUANTILES))
    stats = {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, values, strict=True)}
    stats["mean"] = float(degree.mean()) if len(degree) else 0.0
    return stats


def _feature_stats(store: Store, modality: str) -> dict[str, Any]:
    matrix = store.features(modality)
    rows = np.unique(
        np.linspace(0, len(matrix) - 1, min(len(matrix), MAX_FEATURE_ROWS)).astype(int)
    )
    sample = np.asarray(matrix[rows], dtype=np.float64)
    norms = np.linalg.norm(sample, axis=1)
    return {
        "shape": list(matrix.shape),
        "dtype": matrix.dtype.name,
        "rows_sampled": len(rows),
        "mean": float(sample.mean()),
        "std": float(sample.std()),
        "min": float(sample.min()),
        "max": float(sample.max()),
        "mean_row_norm": float(norms.mean()),
        "zero_rows": int((norms == 0).sum()),
    }


def _label_stats(store: Store) -> dict[str, Any] | None:
    labels = store.labels()
    if labels is None:
        return None
    names = store.meta["labels"]["names"]
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    return {
        "num_classes": len(names),
        "unlabelled_items": int((labels < 0).sum()),
        "largest_class": names[int(counts.argmax())] if len(names) else None,
        "largest_class_items": int(counts.max()) if len(names) else 0,
    }
