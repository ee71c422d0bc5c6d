"""Brute-force ranking metrics in plain Python loops, written independently of sea_dist.eval,
and a random evaluation case that contains every awkward kind of user."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Case:
    """Integer-valued embeddings (exact float32 scores, many ties) and interaction splits."""

    num_users: int
    num_items: int
    user_emb: np.ndarray
    item_emb: np.ndarray
    train: tuple[np.ndarray, np.ndarray]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    cold_users: list[int]
    all_masked_users: list[int]
    single_positive_users: list[int]


def make_case(seed: int, num_users: int = 90, num_items: int = 40, dim: int = 6) -> Case:
    """Random splits with: cold-start users (no training item), users whose valid positives
    are all training items, users with one positive, users without positives, duplicate rows,
    and embeddings in {-2..2} so that many scores tie."""
    rng = np.random.default_rng(seed)
    cold = list(range(num_users - 6, num_users))
    all_masked = [0, 1, 2, 3]
    single = [4, 5, 6, 7]
    no_valid = [8, 9]
    train_u: list[int] = []
    train_i: list[int] = []
    valid_u: list[int] = []
    valid_i: list[int] = []
    for user in range(num_users):
        seen = (
            [] if user in cold else list(rng.choice(num_items, rng.integers(1, 16), replace=False))
        )
        train_u += [user] * len(seen)
        train_i += seen
        if user in no_valid:
            continue
        if user in all_masked:
            positives = seen[: max(1, len(seen) // 2)]
        elif user in single:
            positives = [int(rng.integers(num_items))]
        else:
            positives = list(rng.choice(num_items, rng.integers(1, 25), replace=False))
        valid_u += [user] * len(positives)
        valid_i += positives
    # Duplicate rows must count once.
    train_u += train_u[:5]
    train_i += train_i[:5]
    valid_u += valid_u[:5]
    valid_i += valid_i[:5]
    test_u = rng.integers(0, num_users, 3 * num_users)
    test_i = rng.integers(0, num_items, 3 * num_users)
    return Case(
        num_users=num_users,
        num_items=num_items,
        user_emb=rng.integers(-2, 3, (num_users, dim)).astype(np.float32),
        item_emb=rng.integers(-2, 3, (num_items, dim)).astype(np.float32),
        train=(np.array(train_u), np.array(train_i)),
        splits={"valid": (np.array(valid_u), np.array(valid_i)), "test": (test_u, test_i)},
        cold_users=cold,
        all_masked_users=all_masked,
        single_positive_users=single,
    )


def _groups(pairs: tuple[np.ndarray, np.ndarray]) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for user, item in zip(pairs[0].tolist(), pairs[1].tolist(), strict=True):
        out.setdefault(user, set()).add(item)
    return out


def reference_users(case: Case, split: str) -> list[int]:
    """Users with a training item and a positive in ``split``."""
    seen, positives = _groups(case.train), _groups(case.splits[split])
    return sorted(u for u in positives if u in seen)


def reference_ranking(case: Case, user: int, k: int) -> list[int]:
    """The user's top ``k`` unseen items: score descending, then item id ascending."""
    seen = _groups(case.train).get(user, set())
    scores = {}
    for item in range(case.num_items):
        if item not in seen:
            scores[item] = sum(
                float(a) * float(b)
                for a, b in zip(case.user_emb[user], case.item_emb[item], strict=True)
            )
    return sorted(scores, key=lambda item: (-scores[item], item))[:k]


def reference_user_metrics(ranked: list[int], positives: set[int], k: int) -> dict[str, float]:
    """Textbook definitions for one user and one cut-off."""
    rel = [1 if item in positives else 0 for item in ranked[:k]]
    found = sum(rel)
    dcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(rel))
    idcg = sum(1 / math.log2(rank + 2) for rank in range(min(len(positives), k)))
    ap, so_far = 0.0, 0
    for rank, r in enumerate(rel):
        if r:
            so_far += 1
            ap += so_far / (rank + 1)
    return {
        "recall": found / len(positives),
        "ndcg": dcg / idcg,
        "precision": found / k,
        "hit": 1.0 if found else 0.0,
        "map": ap / min(len(positives), k),
    }


def reference_per_user(
    case: Case, split: str, ks: list[int], users: list[int]
) -> dict[str, list[float]]:
    """``{"recall@5": [value of each user in users], ...}``."""
    positives = _groups(case.splits[split])
    out: dict[str, list[float]] = {}
    for user in users:
        ranked = reference_ranking(case, user, max(ks))
        for k in ks:
            for name, value in reference_user_metrics(ranked, positives[user], k).items():
                out.setdefault(f"{name}@{k}", []).append(value)
    return out


def reference_means(
    case: Case, split: str, ks: list[int], users: list[int] | None = None
) -> dict[str, float]:
    """Mean of every metric over ``users`` (default: every evaluated user)."""
    users = reference_users(case, split) if users is None else users
    return {
        key: sum(values) / len(values)
        for key, values in reference_per_user(case, split, ks, users).items()
    }
