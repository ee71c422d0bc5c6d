"""Full-ranking evaluation across workers, and the best-epoch tracker that early stopping uses.

Protocol (MMRec, spec section 5): every item is ranked for every evaluated user; only the
user's *training* items are masked. A user is evaluated on a split when they have at least one
training interaction and at least one positive in that split; users without training
interactions (cold start) are dropped. Positives that are also training items are masked, so
they can never be hit, but they still count in ``num_pos``, as in MMRec. Duplicate
(user, item) rows count once. Equal scores rank the lower item id first
(:mod:`sea_dist.eval.ranking`), so lists are the same on every device and chunking.

Distribution: when a ``torch.distributed`` process group is initialised, every rank calls
:meth:`Evaluator.evaluate` together, with every item's embeddings and either

* its own users' rows (``user_start`` given, as layer-wise inference leaves them,
  :mod:`sea_dist.eval.inference`): each rank ranks the split's users among its rows, and the
  ranks' row ranges must tile all users; or
* every user's rows, the same on every rank: users are cut into the same chunks as in a single
  process and chunk ``c`` goes to rank ``c % world_size``.

Ranks then ``all_reduce`` float64 sums (and sums of squares, for confidence intervals) and user
counts. A user's list does not depend on which rank ranks it, so sharded and unsharded results
differ only by float64 summation order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from sea_dist.data.splits import user_item_csr
from sea_dist.eval.metrics import metric_names, per_user_metrics
from sea_dist.eval.ranking import (
    DEFAULT_TILE_ELEMENTS,
    csr_rows,
    match_hits,
    plan_tiles,
    topk_items,
)

# Two-sided 95 % quantile of the standard normal.
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class _SplitIndex:
    """One evaluation split on the evaluator's device."""

    users: np.ndarray  # [n] int64, sorted: the users evaluated on this split
    num_pos: Tensor  # [num_users] int64: distinct positives per user
    pos_keys: Tensor  # [nnz] int64, sorted: user * num_items + item of every positive


def _check_pairs(
    name: str, pairs: tuple[np.ndarray, np.ndarray], num_users: int, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray(pairs[0], dtype=np.int64)
    items = np.asarray(pairs[1], dtype=np.int64)
    if users.ndim != 1 or users.shape != items.shape:
        raise ValueError(
            f"{name}: user and item id arrays must be 1-D of equal length, "
            f"got {users.shape} and {items.shape}"
        )
    for what, ids, bound in (("user", users, num_users), ("item", items, num_items)):
        bad = np.flatnonzero((ids < 0) | (ids >= bound))
        if len(bad):
            raise ValueError(
                f"{name}: row {bad[0]} has {what} id {ids[bad[0]]}, outside 0..{bound - 1}"
            )
    return users, items


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Evaluator:
    """Exact top-K metrics (recall, ndcg, precision, hit, map at every K) over all items.

    Args:
        num_users: users ``0..num_users-1``.
        num_items: items ``0..num_items-1`` (item-local ids, not homogeneous node ids).
        train: ``(user_ids, item_ids)`` of the training split: the items masked per user.
        splits: evaluation splits by name, e.g. ``{"valid": (u, i), "test": (u, i)}``.
        ks: cut-offs; each metric is reported at every one.
        batch_users: most users scored in one tile.
        device: where scoring runs; embeddings are moved there.
        max_tile_elements: most scores held at once (float32), bounding memory.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        train: tuple[np.ndarray, np.ndarray],
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        *,
        ks: list[int],
        batch_users: int = 4096,
        device: str | torch.device = "cpu",
        max_tile_elements: int = DEFAULT_TILE_ELEMENTS,
    ) -> None:
        if num_users < 1 or num_items < 1:
            raise ValueError(f"num_users={num_users} and num_items={num_items} must be positive")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks={ks}: need at least one cut-off, each at least 1")
        if batch_users < 1 or max_tile_elements < 1:
            raise ValueError(
                f"batch_users={batch_users} and max_tile_elements={max_tile_elements} "
                "must be positive"
            )
        self.num_users = num_users
        self.num_items = num_items
        self.ks = list(dict.fromkeys(int(k) for k in ks))
        self.device = torch.device(device)
        self.plan = plan_tiles(num_items, batch_users, max_tile_elements)
        self._reduce_buffer: Tensor | None = None

        seen_indptr, seen_indices = user_item_csr(
            *_check_pairs("train", train, num_users, num_items), num_users
        )
        self._seen_indptr = torch.from_numpy(seen_indptr).to(self.device)
        self._seen_indices = torch.from_numpy(seen_indices).to(self.device)
        has_train = np.diff(seen_indptr) > 0
        self._splits: dict[str, _SplitIndex] = {}
        for name, pairs in splits.items():
            indptr, indices = user_item_csr(
                *_check_pairs(name, pairs, num_users, num_items), num_users
            )
            counts = np.diff(indptr)
            # CSR order (user, then item) makes these keys sorted, ready for searchsorted.
            keys = np.repeat(np.arange(num_users, dtype=np.int64), counts) * num_items + indices
            self._splits[name] = _SplitIndex(
                users=np.flatnonzero((counts > 0) & has_train).astype(np.int64),
                num_pos=torch.from_numpy(counts).to(self.device),
                pos_keys=torch.from_numpy(keys).to(self.device),
            )

    def users(self, split: str) -> np.ndarray:
        """The users evaluated on ``split`` (sorted): a positive there and a training item."""
        return self._split(split).users

    def sample_users(self, split: str, users_sample: int, seed: int = 0) -> np.ndarray:
        """A seeded sample of ``users_sample`` evaluated users, sorted; all of them if fewer."""
        if users_sample < 1:
            raise ValueError(f"users_sample={users_sample} must be at least 1")
        users = self.users(split)
        if users_sample >= len(users):
            return users
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(users, size=users_sample, replace=False))

    @torch.no_grad()
    def evaluate(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        split: str,
        *,
        user_start: int | None = None,
        users_sample: int | None = None,
        seed: int = 0,
    ) -> dict[str, float]:
        """Mean of every metric over the split's users (or a seeded sample of them).

        Scores are ``user_emb @ item_emb.T`` in float32. Collective when a process group is
        initialised: every rank must call it.

        Args:
            user_emb: ``[num_users, d]``, or with ``user_start`` this rank's ``[n, d]`` rows of
                users ``user_start .. user_start + n - 1``.
            item_emb: ``[num_items, d]``.
            split: a name given to the constructor, e.g. ``"valid"``.
            user_start: ``user_emb`` holds this rank's users only, from this one; the ranks'
                ranges must tile ``0 .. num_users - 1``.
            users_sample: evaluate this many users drawn without replacement (seeded); adds a
                ``<metric>_ci95`` half-width for every metric.
            seed: seed of the sample.

        Returns:
            ``{"recall@20": ..., "ndcg@20": ..., "precision@20": ..., "hit@20": ...,
            "map@20": ..., "num_users": n}`` and, with a sample, ``"recall@20_ci95"`` etc.
            The 95 % half-width is ``1.96 * s / sqrt(n) * sqrt((N - n) / (N - 1))``: ``s`` the
            per-user standard deviation in the sample, ``N`` the users of the split (the finite
            population correction makes it 0 when the sample is every user). It is NaN for a
            sample of one user out of several. Metrics are NaN when no user is evaluated.
        """
        index = self._split(split)
        rank, world = _world()
        if user_start is None:
            user_emb = self._embeddings("user_emb", user_emb, self.num_users)
            owned = self.num_users if rank == 0 else 0  # counted once for the coverage check
        else:
            owned = len(user_emb)
            if user_start < 0 or user_start + owned > self.num_users:
                raise ValueError(
                    f"user_emb rows {user_start}..{user_start + owned - 1} are outside "
                    f"0..{self.num_users - 1}"
                )
            user_emb = self._embeddings("user_emb", user_emb, owned)
        item_emb = self._embeddings("item_emb", item_emb, self.num_items)
        users = (
            index.users if users_sample is None else self.sample_users(split, users_sample, seed)
        )
        if user_start is None:
            rows, offset = self.plan.rows, 0
            # Every rank has every user: it ranks chunks rank, rank + world, ...
            chunks = [users[i : i + rows] for i in range(0, len(users), rows)][rank::world]
        else:
            mine = users[(users >= user_start) & (users < user_start + owned)]
            chunks = [mine[i : i + self.plan.rows] for i in range(0, len(mine), self.plan.rows)]
            offset = user_start

        totals = self._rank_sums(user_emb, item_emb, index, chunks, offset)
        totals[-1] = owned
        if world > 1:
            totals = self._all_reduce(totals)
        totals_list = totals.cpu().tolist()
        if totals_list[-1] != self.num_users:
            raise ValueError(
                f"the ranks' user_emb rows cover {int(totals_list[-1])} of {self.num_users} users"
            )
        sampled = users_sample is not None
        return self._summarise(totals_list[:-1], population=len(index.users), sampled=sampled)

    def _all_reduce(self, totals: Tensor) -> Tensor:
        """Sum ``totals`` over ranks in a buffer that this evaluator keeps alive.

        In torch < 2.8 a Gloo worker thread that drops the last reference to a tensor with a
        Python object must take the GIL, while ``destroy_process_group`` holds the GIL and
        joins that thread: a deadlock (pytorch/pytorch#56297, fixed by #154976). A buffer
        that outlives the collective is never freed by the worker thread.
        """
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        if self._reduce_buffer is None or self._reduce_buffer.device != device:
            self._reduce_buffer = torch.zeros_like(totals, device=device)
        self._reduce_buffer.copy_(totals)
        dist.all_reduce(self._reduce_buffer)
        return self._reduce_buffer

    def _split(self, split: str) -> _SplitIndex:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; the evaluator has {sorted(self._splits)}")
        return self._splits[split]

    def _embeddings(self, name: str, emb: Tensor, rows: int) -> Tensor:
        if emb.dim() != 2 or emb.shape[0] != rows:
            raise ValueError(f"{name} has shape {tuple(emb.shape)}, expected ({rows}, d)")
        emb = emb.detach().to(self.device, torch.float32)
        if not bool(torch.isfinite(emb).all()):
            raise ValueError(f"{name} has NaN or infinite values; the model diverged")
        return emb

    def _rank_sums(
        self,
        user_emb: Tensor,
        item_emb: Tensor,
        index: _SplitIndex,
        chunks: list[np.ndarray],
        user_start: int,
    ) -> Tensor:
        """This rank's ``[sum of each metric, sum of its squares, ..., user count, 0]`` float64
        over the users of ``chunks`` (ids; ``user_emb`` row ``r`` is user ``user_start + r``).
        The last slot is the caller's (the coverage check)."""
        names = metric_names(self.ks)
        totals = torch.zeros(2 * len(names) + 2, dtype=torch.float64, device=self.device)
        item_chunk = self.plan.item_chunk
        if not chunks:
            return totals
        k_max = max(self.ks)
        buffer = torch.empty(
            max(len(c) for c in chunks) * min(item_chunk, self.num_items),
            dtype=torch.float32,
            device=self.device,
        )
        for chunk in chunks:
            user_ids = torch.from_numpy(chunk).to(self.device)
            seen_rows, seen_cols = csr_rows(self._seen_indptr, self._seen_indices, user_ids)
            scores, items = topk_items(
                user_emb[user_ids - user_start],
                item_emb,
                k_max,
                seen_rows=seen_rows,
                seen_cols=seen_cols,
                item_chunk=item_chunk,
                buffer=buffer,
            )
            hits = match_hits(user_ids, items, scores, index.pos_keys, self.num_items)
            if hits.shape[1] < k_max:  # fewer items than k_max: the missing ranks are misses
                hits = torch.nn.functional.pad(hits, (0, k_max - hits.shape[1]), value=False)
            values = per_user_metrics(hits, index.num_pos[user_ids], self.ks)
            stacked = torch.stack([values[name] for name in names])  # [metrics, n]
            totals[: len(names)] += stacked.sum(dim=1)
            totals[len(names) : 2 * len(names)] += (stacked * stacked).sum(dim=1)
            totals[-2] += len(chunk)
        return totals

    def _summarise(
        self, totals: list[float], *, population: int, sampled: bool
    ) -> dict[str, float]:
        names = metric_names(self.ks)
        n = totals[-1]
        out: dict[str, float] = {}
        for j, name in enumerate(names):
            total, squares = totals[j], totals[len(names) + j]
            out[name] = total / n if n else math.nan
            if sampled:
                out[f"{name}_ci95"] = _ci95(total, squares, int(n), population)
        out["num_users"] = float(n)
        return out


def _ci95(total: float, squares: float, n: int, population: int) -> float:
    """Normal-approximation 95 % half-width of a sample mean, with finite population correction."""
    if n >= population:
        return 0.0
    if n < 2:
        return math.nan
    variance = max(squares - total * total / n, 0.0) / (n - 1)
    return _Z95 * math.sqrt(variance / n) * math.sqrt((population - n) / (population - 1))


class EarlyStopping:
    """Tracks the best value of one validation metric (higher is better) and when to stop.

    ``patience`` counts evaluations without improvement, as MMRec's ``stopping_step`` does;
    a tie with the best value is not an improvement, so the earliest best epoch is kept.

    Args:
        metric: key of the metrics dict, e.g. ``"recall@20"``.
        patience: evaluations without improvement after which :attr:`should_stop` is true.
    """

    def __init__(self, metric: str, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience={patience} must be at least 1")
        self.metric = metric
        self.patience = patience
        self.best_epoch: int | None = None
        self.best_value = -math.inf
        self.bad_evaluations = 0

    def update(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record one evaluation; returns whether ``epoch`` is the new best."""
        if self.metric not in metrics:
            raise KeyError(
                f"early-stopping metric {self.metric!r} not in the evaluation ({sorted(metrics)})"
            )
        value = float(metrics[self.metric])
        # NaN compares false, so a diverged model never becomes the best.
        if value > self.best_value:
            self.best_epoch, self.best_value, self.bad_evaluations = epoch, value, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row brought no improvement."""
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Plain values, for checkpoints."""
        return {
            "metric": self.metric,
            "patience": self.patience,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the metric must match this tracker's."""
        if state["metric"] != self.metric:
            raise ValueError(
                f"checkpoint tracks {state['metric']!r}, this run tracks {self.metric!r}"
            )
        self.best_epoch = state["best_epoch"]
        self.best_value = float(state["best_value"])
        self.bad_evaluations = int(state["bad_evaluations"])
