"""Item-item semantic graphs (spec section 1): per-modality cosine top-k, combined.

For each modality the k most cosine-similar items of every item are kept, the item itself
always included (it is forced into its own row, so exact ties or a zero feature row cannot push
it out). Every row then has k entries of weight ``1/k`` (``D^-1/2 A D^-1/2`` of a 0/1 graph
with k entries per row). Modalities are combined as ``S = sum_m w_m S_m`` with weights given by
modality NAME (:func:`modality_weights`): by default the reference's, image 0.1 and the other
modality 0.9 (text on the Amazon sets, audio on TikTok), whatever order the modalities come in.

Two ways to find the neighbours:

* ``exact``: cosine similarity in float32 torch, query chunk x key chunk, with a running top-k,
  so memory stays bounded (``_BLOCK_ELEMENTS`` similarities at a time) whatever the catalogue.
* ``ann``: a faiss HNSW index over the unit rows (inner product). Its recall@k against the
  exact search is measured on a sample of items and returned in :attr:`ItemGraph.info`.

Neighbour lists are cached on disk per modality, keyed by the caller's key (the store checksum
and modality names), the modality's position, k, the method and its parameters.

An :class:`ItemGraph` is three arrays (:meth:`ItemGraph.to_arrays`), which the training driver
shares with its workers through Ray's object store; ``S^1`` is ``S`` itself, on the same
arrays, so the default one-hop runs hold the item graph once per node.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sea_dist.data.schema import IMAGE
from sea_dist.graph.build import tensor_view

log = logging.getLogger(__name__)

# Similarities held at once by the exact search (256 MiB of float32).
_BLOCK_ELEMENTS = 1 << 26
_QUERY_CHUNK = 4096
# Rows read from a (possibly memory-mapped, float16) feature matrix at a time.
_READ_CHUNK = 1 << 16
# HNSW parameters: 32 links per node; search beam at least 4k. Measured recall is reported.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
RECALL_SAMPLE = 2000


@dataclass
class ItemGraph:
    """Sparse ``[I, I]`` item-item hop matrix ``S`` in CSR form (rows: destination items).

    Attributes:
        num_items: I.
        indptr: ``[I + 1]`` int64 row offsets.
        indices: ``[nnz]`` int64 column item ids (0-based).
        weights: ``[nnz]`` float32 entries.
        info: how it was built: per modality the method, seconds, and ANN recall if any.
    """

    num_items: int
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    _powers: dict[int, ItemGraph] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def nnz(self) -> int:
        return int(len(self.indices))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The CSR arrays, for :meth:`from_arrays`."""
        return {"indptr": self.indptr, "indices": self.indices, "weights": self.weights}

    @classmethod
    def from_arrays(
        cls, num_items: int, arrays: Mapping[str, np.ndarray], info: dict[str, Any] | None = None
    ) -> ItemGraph:
        """The graph over ``arrays`` from :meth:`to_arrays`, used as they are (read-only or not)."""
        indptr, indices, weights = arrays["indptr"], arrays["indices"], arrays["weights"]
        if indptr.shape != (num_items + 1,) or indices.shape != weights.shape:
            raise ValueError(
                f"item graph arrays of shapes {indptr.shape}, {indices.shape} and "
                f"{weights.shape} do not form a CSR matrix over {num_items} items"
            )
        return cls(num_items, indptr, indices, weights, dict(info or {}))

    def to_torch(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(
            tensor_view(self.indptr),
            tensor_view(self.indices),
            tensor_view(self.weights),
            (self.num_items, self.num_items),
        )

    def power(self, hops: int) -> ItemGraph:
        """``S^hops`` (``hops >= 1``): the operator a ``hops``-step item propagation applies.

        ``S^1`` shares this graph's arrays; a higher power is computed once per graph object
        (the loader and evaluation share it).
        """
        if hops < 1:
            raise ValueError(f"hops must be >= 1, got {hops}")
        if hops == 1:
            info = {**self.info, "hops": 1}
            return ItemGraph(self.num_items, self.indptr, self.indices, self.weights, info)
        if hops not in self._powers:
            self._powers[hops] = self._power(hops)
        return self._powers[hops]

    def _power(self, hops: int) -> ItemGraph:
        s = self.to_torch().to_sparse_coo().double()
        out = s
        for _ in range(hops - 1):
            out = torch.sparse.mm(out, s).coalesce()
        csr = out.to_sparse_csr()
        return ItemGraph(
            self.num_items,
            csr.crow_indices().numpy().astype(np.int64),
            csr.col_indices().numpy().astype(np.int64),
            csr.values().numpy().astype(np.float32),
            {**self.info, "hops": hops},
        )


# The reference's item-graph weight of the image graph (MMRec ``mm_image_weight``).
REFERENCE_IMAGE_WEIGHT = 0.1


def modality_weights(
    modalities: Sequence[str], named: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Weight of each modality's graph in ``S``, by name.

    Args:
        modalities: the run's modalities.
        named: modality -> weight; the modalities it does not name share what is left
            equally. ``None``: the reference's roles, ``{"image": 0.1}`` when the run has an
            image modality and another (so image 0.1, text or audio 0.9); otherwise equal
            weights.

    Returns:
        modality -> weight for every modality in ``modalities``, in their order; the weights
        are non-negative and sum to 1, so ``S`` keeps rows that sum to 1.

    Raises:
        ValueError: a name that is not one of ``modalities``, or weights that cannot sum to 1.
    """
    if named is None:
        both = IMAGE in modalities and len(modalities) > 1
        named = {IMAGE: REFERENCE_IMAGE_WEIGHT} if both else {}
    unknown = [m for m in named if m not in modalities]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)} not among the run's modalities ({', '.join(modalities)})"
        )
    if not modalities:
        return {}
    rest = [m for m in modalities if m not in named]
    share = (1.0 - sum(named.values())) / len(rest) if rest else 0.0
    weights = {m: float(named[m]) if m in named else share for m in modalities}
    if min(weights.values()) < 0 or not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        shown = ", ".join(f"{m} {w:g}" for m, w in weights.items())
        raise ValueError(f"weights ({shown}) must be non-negative and sum to 1")
    return weights


def build_item_graph(
    features: Mapping[str, np.ndarray],
    weights: Mapping[str, float] | None,
    k: int,
    method: str,
    exact_max_items: int,
    cache_dir: Path | None = None,
    cache_key: str | None = None,
) -> ItemGraph:
    """Per-modality top-k graphs from the raw features, combined into ``S``.

    Args:
        features: modality -> ``[I, d_m]`` matrix (memory-mapped is fine).
        weights: modality -> weight in ``S``, resolved by :func:`modality_weights` (a partial
            mapping, or ``None`` for the reference's).
        k: neighbours per item, the item itself included.
        method: ``"exact"``, ``"ann"`` or ``"auto"`` (exact up to ``exact_max_items`` items).
        exact_max_items: the ``"auto"`` threshold.
        cache_dir: where neighbour lists are cached; ``None`` disables the cache.
        cache_key: identifies the data (store checksum and modality names); required for caching.
    """
    if not features:
        raise ValueError("build_item_graph needs at least one feature matrix")
    shapes = {m: f.shape for m, f in features.items()}
    num_items = next(iter(shapes.values()))[0]
    if any(shape[0] != num_items for shape in shapes.values()):
        raise ValueError(f"feature matrices disagree on the number of items: {shapes}")
    if not 1 <= k <= num_items:
        raise ValueError(f"k must be in [1, {num_items}], got {k}")
    if method not in ("auto", "exact", "ann"):
        raise ValueError(f"method must be auto, exact or ann, got {method!r}")
    resolved = method if method != "auto" else ("exact" if num_items <= exact_max_items else "ann")
    resolved_weights = modality_weights(list(features), weights)
    rows, cols, vals, info = [], [], [], {"method": resolved, "k": k, "modalities": []}
    for index, (name, feat) in enumerate(features.items()):
        weight = resolved_weights[name]
        neighbours, stats = _cached_neighbours(feat, k, resolved, cache_dir, cache_key, index)
        info["modalities"].append({"name": name, "weight": weight, **stats})
        rows.append(np.repeat(np.arange(num_items, dtype=np.int64), k))
        cols.append(neighbours.reshape(-1).astype(np.int64))
        vals.append(np.full(num_items * k, weight / k, dtype=np.float64))
    s = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)])),
        torch.from_numpy(np.concatenate(vals)),
        (num_items, num_items),
    ).coalesce().to_sparse_csr()  # coalesce sums an item found by several modalities
    return ItemGraph(
        num_items,
        s.crow_indices().numpy().astype(np.int64),
        s.col_indices().numpy().astype(np.int64),
        s.values().numpy().astype(np.float32),
        info,
    )


def _cached_neighbours(
    features: np.ndarray, k: int, method: str, cache_dir: Path | None, cache_key: str | None, index: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Neighbour lists ``[I, k]`` from the cache, or computed and then cached."""
    path = None
    if cache_dir is not None and cache_key is not None:
        params = f"k{k}-exact" if method == "exact" else (
            f"k{k}-hnsw{HNSW_M}-efc{HNSW_EF_CONSTRUCTION}-efs{HNSW_EF_SEARCH}"
        )
        path = Path(cache_dir) / f"{cache_key}-m{index}-{params}.npz"
        if path.is_file():
            try:
                with np.load(path) as cached:
                    neighbours = cached["neighbours"]
                    stats = {key[len("stat_"):]: cached[key].item() for key in cached.files if key.startswith("stat_")}
                if neighbours.shape == (features.shape[0], k):
                    return neighbours, {**stats, "cached": True}
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unreadable kNN cache %s: %s", path, exc)
            log.warning("kNN cache %s does not match the features; rebuilding", path)
    start = time.perf_counter()
    if method == "exact":
        neighbours = exact_knn(features, k)
        stats: dict[str, Any] = {"method": "exact"}
    else:
        neighbours = ann_knn(features, k)
        stats = {"method": "ann-hnsw", "recall": knn_recall(features, neighbours, RECALL_SAMPLE)}
    stats["seconds"] = time.perf_counter() - start
    if path is not None:
        _save_npz_atomic(path, neighbours=neighbours, **{f"stat_{key}": np.asarray(v) for key, v in stats.items()})
    return neighbours, {**stats, "cached": False}


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an ``.npz`` beside ``path`` and rename it in: concurrent readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unit_rows(features: np.ndarray, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo:hi`` as float32 with unit L2 norm (a zero row stays zero)."""
    # A copy: a slice of a read-only memory map would make a read-only tensor (torch warns).
    rows = torch.from_numpy(np.array(features[lo:hi], dtype=np.float32))
    return torch.nn.functional.normalize(rows, dim=1)


def exact_knn(features: np.ndarray, k: int, queries: np.ndarray | None = None) -> np.ndarray:
    """Exact cosine top-k of each query item among all items, the item itself forced first.

    Args:
        features: ``[I, d]`` (any float dtype; memory-mapped is fine).
        k: neighbours per row, self included.
        queries: item ids to answer (default: all items).

    Returns:
        ``[Q, k]`` int64 neighbour ids, most similar first (self in column 0).
    """
    num_items = features.shape[0]
    queries = np.arange(num_items) if queries is None else np.asarray(queries, dtype=np.int64)
    key_chunk = max(1, min(num_items, _BLOCK_ELEMENTS // _QUERY_CHUNK))
    out = np.empty((len(queries), k), dtype=np.int64)
    for q0 in range(0, len(queries), _QUERY_CHUNK):
        qids = torch.from_numpy(queries[q0 : q0 + _QUERY_CHUNK])
        q = torch.nn.functional.normalize(
            torch.from_numpy(np.asarray(features[qids.numpy()], dtype=np.float32)), dim=1
        )
        best_val = torch.full((len(qids), k), -math.inf)
        best_idx = torch.zeros((len(qids), k), dtype=torch.int64)
        for lo in range(0, num_items, key_chunk):
            hi = min(num_items, lo + key_chunk)
            sims = q @ _unit_rows(features, lo, hi).T  # [q, hi - lo]
            # Self beats everything, even an identical or all-zero feature row.
            own = torch.nonzero((qids >= lo) & (qids < hi), as_tuple=True)[0]
            sims[own, qids[own] - lo] = math.inf
            val, idx = sims.topk(min(k, hi - lo), dim=1)
            merged_val = torch.cat([best_val, val], dim=1)
            merged_idx = torch.cat([best_idx, idx + lo], dim=1)
            best_val, pick = merged_val.topk(k, dim=1)
            best_idx = merged_idx.gather(1, pick)
        out[q0 : q0 + len(qids)] = best_idx.numpy()
    return out


def ann_knn(features: np.ndarray, k: int) -> np.ndarray:
    """Approximate cosine top-k with a faiss HNSW index; self forced into column 0.

    Returns:
        ``[I, k]`` int64 neighbour ids. Rows where HNSW returned too few distinct neighbours
        (``-1`` padding) are answered exactly.
    """
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    num_items, dim = features.shape
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    for lo in range(0, num_items, _READ_CHUNK):
        index.add(_unit_rows(features, lo, min(num_items, lo + _READ_CHUNK)).numpy())
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 4 * k)
    out = np.empty((num_items, k), dtype=np.int64)
    for lo in range(0, num_items, _READ_CHUNK):
        hi = min(num_items, lo + _READ_CHUNK)
        _, found = index.search(_unit_rows(features, lo, hi).numpy(), k)
        out[lo:hi] = _force_self(found, np.arange(lo, hi))
    short = np.flatnonzero((out < 0).any(axis=1))
    if len(short):
        log.warning("HNSW returned fewer than %d neighbours for %d items; searching them exactly",
                    k, len(short))
        out[short] = exact_knn(features, k, short)
    return out


def _force_self(found: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """Put each row's own id first and keep the first ``k - 1`` other neighbours in order."""
    k = found.shape[1]
    others = found != self_ids[:, None]
    # Stable sort on "is self" moves self (if present) to the back, others keep their order.
    order = np.argsort(~others, axis=1, kind="stable")
    rest = np.take_along_axis(found, order, axis=1)[:, : k - 1]
    return np.concatenate([self_ids[:, None], rest], axis=1)


def knn_recall(features: np.ndarray, neighbours: np.ndarray, sample: int, seed: int = 0) -> float:
    """Recall of ``neighbours`` against exact search on a random sample of items.

    Self is excluded from both sides (it is forced into both), so this is the recall of the
    ``k - 1`` true neighbours; with ``k = 1`` it is 1 by definition.
    """
    num_items, k = neighbours.shape
    if k == 1:
        return 1.0
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(num_items, size=min(sample, num_items), replace=False))
    truth = exact_knn(features, k, ids)[:, 1:]
    approx = neighbours[ids, 1:]
    hits = (approx[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits / truth.size)
