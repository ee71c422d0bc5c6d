"""Top-K ranking metrics as pure functions of a hit matrix, with MMRec's definitions.

Every function takes

- ``hits`` ``[num_users, K_max]`` bool: ``hits[u, r]`` is true when the item ranked at position
  ``r`` (0-based) for user ``u`` is one of the user's positives in the evaluated split;
- ``num_pos`` ``[num_users]`` int: the user's number of positives in that split, at least 1
  (positives that are also training items count, although masking means they can never be hit,
  as in MMRec's ``EvalDataLoader.get_eval_len_list``);
- ``k``: the cut-off, ``1 <= k <= K_max``;

and returns the per-user values ``[num_users]`` float64, so callers can take means, sums across
workers and confidence intervals. With ``h_r = hits[u, r - 1]`` at rank ``r = 1..k`` and
``P(r) = (1 / r) sum_{j <= r} h_j``:

- ``recall@k    = sum_r h_r / num_pos``
- ``precision@k = sum_r h_r / k``
- ``hit@k       = 1 if any h_r else 0``
- ``ndcg@k      = (sum_r h_r / log2(r + 1)) / (sum_{r <= min(num_pos, k)} 1 / log2(r + 1))``
- ``map@k       = (sum_r P(r) h_r) / min(num_pos, k)``

These match MMRec's ``src/utils/metrics.py`` (``recall_``, ``precision_``, ``ndcg_``, ``map_``);
MMRec has no hit rate, so ``hit@k`` follows RecBole's ``Hit``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MetricFn = Callable[[Tensor, Tensor, int], Tensor]


def _check(hits: Tensor, num_pos: Tensor, k: int) -> None:
    if hits.dim() != 2 or hits.dtype != torch.bool:
        raise ValueError(f"hits must be a 2-D bool tensor, got {hits.dtype} {tuple(hits.shape)}")
    if num_pos.shape != hits.shape[:1]:
        raise ValueError(f"num_pos has shape {tuple(num_pos.shape)}, expected ({hits.shape[0]},)")
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} outside 1..{hits.shape[1]} (the hit matrix width)")
    if bool((num_pos < 1).any()):
        raise ValueError("num_pos must be at least 1 for every user (drop users without positives)")


def _num_hits(hits: Tensor, k: int) -> Tensor:
    return hits[:, :k].sum(dim=1, dtype=torch.float64)


def _discounts(k: int, device: torch.device) -> Tensor:
    """``1 / log2(r + 1)`` for ranks ``r = 1..k``."""
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    return torch.log2(ranks + 1.0).reciprocal()


def recall_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    """Fraction of the user's positives found in the top ``k``."""
    _check(hits, num_pos, k)
    return _num_hits(hits, k) / num_pos.to(torch.float64)


def precision_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    """Fraction of the top ``k`` that are positives (``num_pos`` unused: one signature for all)."""
    _check(hits, num_pos, k)
    return _num_hits(hits, k) / k


def hit_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    """1 if any of the top ``k`` is a positive, else 0 (``num_pos`` is unused)."""
    _check(hits, num_pos, k)
    return hits[:, :k].any(dim=1).to(torch.float64)


def ndcg_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    """Binary-relevance NDCG; the ideal list puts ``min(num_pos, k)`` positives first."""
    _check(hits, num_pos, k)
    disc = _discounts(k, hits.device)
    dcg = (hits[:, :k].to(torch.float64) * disc).sum(dim=1)
    ideal = torch.cumsum(disc, dim=0)  # ideal[n - 1] = IDCG with n positives in the list
    idcg = ideal[num_pos.clamp(max=k).long() - 1]
    return dcg / idcg


def map_at_k(hits: Tensor, num_pos: Tensor, k: int) -> Tensor:
    """Average precision over hit positions, normalised by ``min(num_pos, k)`` (MMRec ``map_``)."""
    _check(hits, num_pos, k)
    h = hits[:, :k].to(torch.float64)
    ranks = torch.arange(1, k + 1, dtype=torch.float64, device=hits.device)
    precision_at_rank = torch.cumsum(h, dim=1) / ranks
    return (precision_at_rank * h).sum(dim=1) / num_pos.clamp(max=k).to(torch.float64)


METRICS: dict[str, MetricFn] = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "precision": precision_at_k,
    "hit": hit_at_k,
    "map": map_at_k,
}


def metric_names(ks: list[int]) -> list[str]:
    """Keys of :func:`per_user_metrics`, in its order: ``["recall@10", "recall@20", ...]``."""
    return [f"{name}@{k}" for name in METRICS for k in ks]


def per_user_metrics(hits: Tensor, num_pos: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Every metric at every ``k``: ``{"recall@20": [num_users] float64, ...}``."""
    return {f"{name}@{k}": fn(hits, num_pos, k) for name, fn in METRICS.items() for k in ks}
