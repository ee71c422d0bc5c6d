"""Aggregation: median and spread over repeats, scaling efficiency, time-to-accuracy.

Pure functions over plain numbers, so the arithmetic is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles (linear interpolation, numpy's default) of ``values``.

    Returns:
        ``{"median", "min", "max", "q1", "q3", "iqr", "n", "values"}``; every figure is NaN
        (and ``n`` 0) for no values.
    """
    vals = [float(v) for v in values]
    if not vals:
        nan = math.nan
        return {"median": nan, "min": nan, "max": nan, "q1": nan, "q3": nan, "iqr": nan, "n": 0, "values": []}
    arr = np.asarray(vals, dtype=np.float64)
    q1, median, q3 = (float(x) for x in np.percentile(arr, [25, 50, 75]))
    return {
        "median": median,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "n": len(vals),
        "values": vals,
    }


def scaling_efficiency(throughput: Mapping[int, float]) -> dict[int, float]:
    """Parallel efficiency of each worker count against the smallest one.

    ``eff(W) = (X(W) / X(W0)) / (W / W0)`` with ``X`` the total throughput (seed edges per
    second, all workers) and ``W0`` the smallest worker count measured. For strong scaling
    (fixed total work per epoch) this equals ``T(W0) W0 / (T(W) W)`` with ``T`` the epoch time;
    for weak scaling (fixed work per worker) it equals ``T(W0) / T(W)``. 1.0 is perfect.
    """
    if not throughput:
        return {}
    base_workers = min(throughput)
    base = throughput[base_workers]
    out = {}
    for workers, value in sorted(throughput.items()):
        if base > 0 and math.isfinite(base) and math.isfinite(value):
            out[workers] = (value / base) / (workers / base_workers)
        else:
            out[workers] = math.nan
    return out


def speedup(throughput: Mapping[int, float]) -> dict[int, float]:
    """Total throughput of each worker count over that of the smallest one."""
    if not throughput:
        return {}
    base = throughput[min(throughput)]
    return {w: (v / base if base > 0 else math.nan) for w, v in sorted(throughput.items())}


def time_to_target(
    curve: Sequence[tuple[float, float]], target: float
) -> float | None:
    """First elapsed time at which the metric reaches ``target``; None if it never does.

    Args:
        curve: ``(elapsed_s, metric)`` points in epoch order.
    """
    for elapsed, value in curve:
        if value is not None and math.isfinite(value) and value >= target:
            return float(elapsed)
    return None


def auto_target(curves: Sequence[Sequence[tuple[float, float]]], fraction: float = 0.9) -> float:
    """``fraction`` of the lowest best value among the curves: a target every curve reaches."""
    bests = [max((v for _, v in c if math.isfinite(v)), default=math.nan) for c in curves]
    finite = [b for b in bests if math.isfinite(b)]
    return fraction * min(finite) if finite else math.nan
