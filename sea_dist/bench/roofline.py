"""Each phase of a training step against the machine's limit (a roofline).

Three parts:

- :func:`measure_peaks`: the machine's own ceilings, measured once per bench: fp32 GEMM
  FLOP/s (``torch.matmul`` of two ``n x n`` matrices, ``2 n^3`` FLOP) and memory bandwidth
  (STREAM triad ``a = b + s c`` over tensors far larger than the caches, 12 bytes per element:
  two reads and a write), on the CPU at each thread count asked for, and on the GPU when
  CUDA is visible. The best of a few repeats is the peak.
- :func:`step_work`: an analytic count of the FLOPs and bytes of each phase of one training
  step, from the model config, the feature widths and the batch's sizes
  (:meth:`~sea_dist.graph.batch.MiniBatch.sizes`, averaged over an epoch by the training
  loop). The formulas are in its docstring.
- :func:`phase_table`: each timed phase of the loop (``time_*_s``) against its counts: time,
  share of the step, achieved FLOP/s and bytes/s, and the fraction of the limit,
  ``max(FLOP/s / GEMM peak, bytes/s / bandwidth peak)``, naming the bound that gives it.

The counts are the work the algorithm must do, not what today's code happens to move: e.g.
an ID table's gradient is counted as the rows a step touched, although autograd builds it
dense. A phase far below its limit is therefore either latency- or overhead-bound (Python,
kernel launches, collectives) or doing more than the algorithm needs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sea_dist.models.sea import folds_map

F32 = 4  # bytes per fp32 value
INDEX = 8  # bytes per int64 index
CSR_EDGE = F32 + INDEX  # a sparse entry: its weight and its column index
ADAM_BYTES = 7 * F32  # per parameter: read param, grad, m, v; write param, m, v
ADAM_FLOPS = 10  # per parameter: two moment updates, bias correction, sqrt, divide, update

# Loop timers (``time_<name>_s``) and the counted phases each one covers.
TIMER_PHASES: dict[str, tuple[str, ...]] = {
    "sample": (),
    "move": (),
    "forward_backward": ("inputs", "propagation", "item_hop", "losses"),
    "estimator": ("estimator",),
    "sync": ("sync",),
    "optimizer": ("optimizer",),
}


def _timed_best(
    run: Callable[[], None], device: torch.device, seconds: float, least: int = 3
) -> float:
    """Fastest of at least ``least`` runs (and more while ``seconds`` last), warm-up excluded."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run()
    sync()
    best, spent, count = float("inf"), 0.0, 0
    while count < least or spent < seconds:
        start = time.perf_counter()
        run()
        sync()
        took = time.perf_counter() - start
        best, spent, count = min(best, took), spent + took, count + 1
    return best


def gemm_peak(device: torch.device, n: int, seconds: float = 0.5) -> float:
    """fp32 FLOP/s of ``a @ b`` for ``n x n`` matrices: ``2 n^3 / t`` (TF32 is left off)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    return 2.0 * n**3 / _timed_best(lambda: torch.matmul(a, b, out=out), device, seconds)


def bandwidth_peak(device: torch.device, elements: int, seconds: float = 0.5) -> float:
    """Bytes/s of the STREAM triad ``a = b + 3 c`` on fp32 tensors: ``12 elements / t``."""
    b = torch.full((elements,), 1.0, device=device)
    c = torch.full((elements,), 2.0, device=device)
    a = torch.empty(elements, device=device)
    best = _timed_best(lambda: torch.add(b, c, alpha=3.0, out=a), device, seconds)
    return 3.0 * F32 * elements / best


def measure_peaks(
    threads: Iterable[int],
    *,
    cuda: bool | None = None,
    cpu_n: int = 512,
    cpu_elements: int = 2**24,
    cuda_n: int = 8192,
    cuda_elements: int = 2**28,
) -> dict[str, Any]:
    """The machine's fp32 GEMM and memory-bandwidth peaks (a few seconds in all).

    Every timing is a lower bound of the ceiling (contention only slows a run down), so the
    best of many short runs is kept, and a thread count's peak is at least that of fewer
    threads (the best over ``t <= threads``). Short runs matter on a shared machine: a
    512-wide GEMM (~3 ms) fits in one scheduler slice where a 2048-wide one is interrupted.

    Args:
        threads: torch intra-op thread counts to measure the CPU at (the threads each run's
            workers use, and all cores); the process's own setting is restored.
        cuda: also measure the GPU (default: when CUDA is visible).
        cpu_n, cpu_elements, cuda_n, cuda_elements: problem sizes (tests shrink them).

    Returns:
        ``{"cpu": [{"threads", "gemm_flop_per_s", "bandwidth_bytes_per_s"}, ...],
        "cuda": {"device", "gemm_flop_per_s", "bandwidth_bytes_per_s"} | None,
        "load_average": the 1-minute load when measured, "method"}``.
    """
    before = torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpu: list[dict[str, Any]] = []
    host = torch.device("cpu")
    try:
        for t in sorted(set(threads)):
            torch.set_num_threads(t)
            gemm, triad = gemm_peak(host, cpu_n), bandwidth_peak(host, cpu_elements)
            if cpu:  # more threads can always do what fewer did
                gemm = max(gemm, cpu[-1]["gemm_flop_per_s"])
                triad = max(triad, cpu[-1]["bandwidth_bytes_per_s"])
            cpu.append({"threads": t, "gemm_flop_per_s": gemm, "bandwidth_bytes_per_s": triad})
    finally:
        torch.set_num_threads(before)
    gpu = None
    if torch.cuda.is_available() if cuda is None else cuda:
        device = torch.device("cuda")
        gpu = {
            "device": torch.cuda.get_device_name(device),
            "gemm_flop_per_s": gemm_peak(device, cuda_n),
            "bandwidth_bytes_per_s": bandwidth_peak(device, cuda_elements),
        }
        torch.cuda.empty_cache()
    return {
        "cpu": cpu,
        "cuda": gpu,
        "load_average": load,
        "method": (
            f"best of >= 3 runs: fp32 torch.matmul {cpu_n}x{cpu_n} (GPU {cuda_n}), "
            f"2n^3 FLOP; STREAM triad a = b + 3c over {cpu_elements:,} fp32 "
            f"(GPU {cuda_elements:,}), 12 bytes per element"
        ),
    }


def peak_for(peaks: dict[str, Any], device: str, threads: int) -> dict[str, Any]:
    """The peak a run on ``device`` with ``threads`` torch threads per worker is held to."""
    if device == "cuda":
        if peaks.get("cuda") is None:
            raise ValueError("no CUDA peak was measured")
        return {"where": peaks["cuda"]["device"], **peaks["cuda"]}
    row = min(peaks["cpu"], key=lambda r: (abs(r["threads"] - threads), -r["threads"]))
    return {"where": f"CPU, {row['threads']} thread(s)", **row}


@dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one phase of one step."""

    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k: float) -> Work:
        return Work(self.flops * k, self.bytes * k)

    __rmul__ = __mul__


def linear(rows: float, fan_in: int, fan_out: int) -> Work:
    """Forward of ``Linear(fan_in, fan_out)`` on ``rows`` rows: ``2 rows in out`` FLOP; reads
    the input and the weight, writes the output: ``4 (rows in + in out + rows out)`` bytes."""
    moved = F32 * (rows * fan_in + fan_in * fan_out + rows * fan_out)
    return Work(2.0 * rows * fan_in * fan_out, moved)


def spmm(edges: float, dst: float, width: int) -> Work:
    """``adj @ h`` with ``edges`` entries into ``dst`` rows of ``width`` columns: ``2 E w``
    FLOP; bytes: each entry's weight and index (12), the gathered source row (``4 w``) per
    entry, the written destination rows (``4 dst w``)."""
    return Work(2.0 * edges * width, edges * (CSR_EDGE + F32 * width) + F32 * dst * width)


def _adam(params: float) -> Work:
    return Work(ADAM_FLOPS * params, ADAM_BYTES * params)


def _club_params(mi_dim: int, hidden: int) -> int:
    """CLUB's two nets (mu, logvar), each ``Linear(r, h) -> Linear(h, r)``."""
    return 2 * (mi_dim * hidden + hidden + hidden * mi_dim + mi_dim)


def sea_dense_params(cfg: Any, feature_dims: dict[str, int]) -> int:
    """Dense (DDP, Adam) parameters of SEA / SAND: maps, encoders, heads, split projections."""
    total = 0
    H, d, r = cfg.feature_hidden, cfg.embedding_dim, cfg.mi_dim
    ph, pd = cfg.proj_hidden, cfg.proj_dim
    for f in feature_dims.values():
        w = cfg.map_dim or f
        g, u = w // 2, w - w // 2
        total += f * w + w + w * H + H + H * d + d  # map, FeatureMLP
        if cfg.use_solo:  # Linear, BN, Linear, BN, Linear
            total += g * ph + ph + 2 * ph + ph * ph + ph + 2 * ph + ph * pd + pd
        if cfg.distancing != "none":
            total += g * r + r + u * r + r
    return total


def sea_estimator_params(cfg: Any, feature_dims: dict[str, int]) -> int:
    if cfg.distancing != "club":
        return 0
    estimators = 1 if cfg.estimator_cross_modal else len(feature_dims)
    return estimators * _club_params(cfg.mi_dim, cfg.club_hidden)


def step_work(
    cfg: Any,
    feature_dims: dict[str, int],
    sizes: dict[str, float],
    *,
    sync_bytes: float = 0.0,
    world: int = 1,
) -> dict[str, Work] | None:
    r"""FLOPs and bytes of one training step, per phase; ``None`` for models without a count.

    ``cfg`` is the model config (SEA / SAND or LightGCN), ``sizes`` the batch's sizes
    (:meth:`~sea_dist.graph.batch.MiniBatch.sizes`), ``sync_bytes`` what the loop measured a
    rank send per step (``embedding_bytes_per_step + dense_bytes_per_step``), ``world`` the
    worker count. Notation: batch B, negatives K, input nodes N_in of which I_in items and
    U_in = N_in - I_in users, output nodes n_out of which U_out users, block edges E and
    destination rows D (summed over the L blocks), item-graph edges E_s, loss items N;
    modalities m with raw width F_m, mapped width w_m (``map_dim`` or F_m), generic / unique
    halves g_m = w_m // 2, u_m = w_m - g_m; hidden H, embedding d, propagated width
    W = M d (LightGCN: d).

    A Linear(a, b) on n rows costs ``2 n a b`` FLOP and ``4 (n a + a b + n b)`` bytes forward;
    forward + backward is 3x that (the input's and the weight's gradient), 2x where the input
    needs no gradient (raw features, the estimator's detached samples). Sparse propagation
    ``adj @ h`` costs ``2 E W`` FLOP and ``E (12 + 4 W) + 4 D W`` bytes (weight and index per
    entry, the gathered source row, the written rows); with its backward ``adj^T g`` 2x.
    Adam moves 28 bytes and ~10 FLOP per parameter it updates. Phases (SEA):

    - ``inputs``: per modality 2 Linear(F_m, w_m) + 3 Linear(w_m, H) + 3 Linear(H, d) on
      I_in rows; ID rows read and their gradient scattered, ``2 * 4 U_in M d`` bytes. When
      the model folds ``L_m`` into the encoder (N < I_in and I_in > H, as sampled batches),
      2 Linear(F_m, H) + 3 Linear(H, d) on I_in rows, 2 Linear(F_m, w_m) on the N loss rows
      and 3 x ``2 H w_m F_m`` for the folded weight.
    - ``propagation``: 2 spmm(E, D, W).  ``item_hop``: 2 spmm(E_s, n_out, W).
    - ``losses``: BPR 3 x (``2 B (1 + K) W`` FLOP, ``4 B (2 + K) W`` bytes); SoloSim heads
      3 [Linear(g_m, P_h) + Linear(P_h, P_h) + Linear(P_h, P_d)] on N rows per modality and
      InfoNCE 3 x (``2 N G P_d`` FLOP, ``4 (2 N P_d + N G)`` bytes) per non-anchor modality,
      G = min(N, ``solo_group``);
      distancing 3 [Linear(g_m, r) + Linear(u_m, r)] on N rows per modality, and for CLUB
      3 x 2 nets [Linear(r, h) + Linear(h, r)] on N rows per modality.
    - ``estimator``: ``estimator_steps`` x (per fitted pair, M of them or 2 (M - 1) when
      cross-modal: 2 nets [2 Linear(r, h) + 3 Linear(h, r)] on N rows; Adam over the CLUB
      parameters P_q); with ``world`` > 1 workers one all-reduce per model step of the
      parameters and both moments, ``2 (world - 1) / world * 4 * 3 P_q`` bytes.
    - ``sync``: ``sync_bytes``, no FLOPs.
    - ``optimizer``: Adam over the dense parameters (:func:`sea_dense_params`) and over
      the table rows the step touched, ``U_in M d + U_out M`` values (all of them in
      full-graph mode, where every user is an input).

    LightGCN: ``inputs`` = 2 x 4 N_in d bytes (one table of users and items), propagation as
    above at width d, ``losses`` = BPR and the L2 term, ``optimizer`` = Adam over N_in d rows.
    """
    s = {k: float(v) for k, v in sizes.items()}
    B, K, N = s["batch_size"], s["negatives"], s["loss_items"]
    n_in, i_in, n_out = s["input_nodes"], s["input_items"], s["output_nodes"]
    u_in, u_out = n_in - i_in, s["output_users"]
    name = cfg.name
    if name == "lightgcn":
        d = cfg.embedding_dim
        bpr = Work(2.0 * B * (1 + K) * d, F32 * B * (2 + K) * d)
        return {
            "inputs": Work(0.0, 2 * F32 * n_in * d),
            "propagation": 2 * spmm(s["block_edges"], s["block_dst"], d),
            "item_hop": Work(),
            "losses": 3 * bpr + Work(2.0 * B * (2 + K) * d, F32 * B * (2 + K) * d),
            "estimator": Work(),
            "sync": Work(0.0, sync_bytes),
            "optimizer": _adam(n_in * d),
        }
    if name not in ("sea", "sand") or getattr(cfg, "sgfd", None) is not None:
        return None
    M, d, H = len(feature_dims), cfg.embedding_dim, cfg.feature_hidden
    W = M * d
    r, h, ph, pd = cfg.mi_dim, cfg.club_hidden, cfg.proj_hidden, cfg.proj_dim
    inputs, losses = Work(0.0, 2 * F32 * u_in * M * d), Work()
    for f in feature_dims.values():
        w = cfg.map_dim or f
        g, u = w // 2, w - w // 2
        if folds_map(i_in, N, H):
            fold = Work(3 * 2.0 * H * w * f, 3 * F32 * (H * w + w * f + H * f))
            inputs += 2 * linear(i_in, f, H) + 2 * linear(N, f, w) + fold
        else:
            inputs += 2 * linear(i_in, f, w) + 3 * linear(i_in, w, H)
        inputs += 3 * linear(i_in, H, d)
        if cfg.use_solo and N >= 2:
            losses += 3 * (linear(N, g, ph) + linear(N, ph, ph) + linear(N, ph, pd))
        if cfg.distancing != "none":
            losses += 3 * (linear(N, g, r) + linear(N, u, r))
        if cfg.distancing == "club":
            losses += 3 * 2 * (linear(N, r, h) + linear(N, h, r))
    if cfg.use_solo and N >= 2:
        G = min(N, getattr(cfg, "solo_group", None) or N)
        losses += 3 * (M - 1) * Work(2.0 * N * G * pd, F32 * (2 * N * pd + N * G))
    losses += 3 * Work(2.0 * B * (1 + K) * W, F32 * B * (2 + K) * W)
    estimator = Work()
    steps = getattr(cfg, "estimator_steps", 0)
    if cfg.distancing == "club" and steps > 0:
        pairs = 2 * (M - 1) if cfg.estimator_cross_modal else M
        fit = pairs * 2 * (2 * linear(N, r, h) + 3 * linear(N, h, r))
        p_est = sea_estimator_params(cfg, feature_dims)
        # one all-reduce per model step, of the parameters and both Adam moments
        all_reduce = Work(0.0, 2 * (world - 1) / world * F32 * 3 * p_est)
        estimator = steps * (fit + _adam(p_est)) + all_reduce
    touched = u_in * M * d + u_out * M
    return {
        "inputs": inputs,
        "propagation": 2 * spmm(s["block_edges"], s["block_dst"], W),
        "item_hop": 2 * spmm(s["item_graph_edges"], n_out, W) if s["item_graph_edges"] else Work(),
        "losses": losses,
        "estimator": estimator,
        "sync": Work(0.0, sync_bytes),
        "optimizer": _adam(sea_dense_params(cfg, feature_dims) + touched),
    }


def _bound(work: Work, seconds: float, peak: dict[str, Any]) -> dict[str, Any]:
    """Achieved rates over ``seconds`` and the fraction of the limit, naming the bound."""
    flop_s = work.flops / seconds if seconds > 0 else None
    byte_s = work.bytes / seconds if seconds > 0 else None
    row: dict[str, Any] = {
        "flop_per_s": flop_s,
        "bytes_per_s": byte_s,
        "fraction_of_limit": None,
        "bound": None,
    }
    if flop_s is not None and (work.flops or work.bytes):
        compute = flop_s / peak["gemm_flop_per_s"]
        memory = byte_s / peak["bandwidth_bytes_per_s"]
        row["fraction_of_limit"] = max(compute, memory)
        row["bound"] = "compute" if compute >= memory else "memory"
    return row


def ideal_seconds(work: Work, peak: dict[str, Any]) -> float:
    """The time ``work`` would take at the limit: ``max(FLOP / GEMM peak, bytes / bandwidth)``."""
    return max(work.flops / peak["gemm_flop_per_s"], work.bytes / peak["bandwidth_bytes_per_s"])


def phase_table(
    work: dict[str, Work] | None,
    seconds: dict[str, float],
    epoch_seconds: float,
    steps: float,
    peak: dict[str, Any],
    labels: dict[str, str],
) -> dict[str, Any]:
    """One epoch's phases against the limit.

    Args:
        work: per-step counts from :func:`step_work` (``None``: times and shares only).
        seconds: each loop timer's seconds in the epoch (``time_<timer>_s``, by timer name).
        epoch_seconds: the epoch's wall time; a phase's share of the step is its part of it.
        steps: steps in the epoch.
        peak: from :func:`peak_for`.
        labels: what each timer is called in the results.

    Returns:
        ``{"peak", "phases": [per timer: time_s, share, flops_per_step, bytes_per_step,
        flop_per_s, bytes_per_s, fraction_of_limit, bound], "components": [per counted phase
        of the forward-backward: flops_per_step, bytes_per_step, ideal_s_per_step]}``.
    """
    phases = []
    for timer, parts in TIMER_PHASES.items():
        if timer not in seconds:
            continue
        t = seconds[timer]
        row: dict[str, Any] = {
            "phase": labels.get(timer, timer),
            "time_s": t,
            "share": t / epoch_seconds if epoch_seconds > 0 else None,
        }
        if work is not None and parts:
            total = sum((work[p] for p in parts), Work())
            row.update(
                {
                    "flops_per_step": total.flops,
                    "bytes_per_step": total.bytes,
                    **_bound(total * steps, t, peak),
                }
            )
        phases.append(row)
    components = []
    if work is not None:
        for part in TIMER_PHASES["forward_backward"]:
            w = work[part]
            components.append(
                {
                    "component": part,
                    "flops_per_step": w.flops,
                    "bytes_per_step": w.bytes,
                    "ideal_s_per_step": ideal_seconds(w, peak),
                }
            )
    total = sum(work.values(), Work()) if work is not None else None
    return {
        "peak": peak,
        "phases": phases,
        "components": components,
        "step_ideal_s": ideal_seconds(total, peak) if total is not None else None,
        "step_s": epoch_seconds / steps if steps else None,
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_roofline(
    history: list[dict[str, Any]],
    model_cfg: Any,
    feature_dims: dict[str, int],
    peak: dict[str, Any],
    workers: int,
    labels: dict[str, str],
) -> dict[str, Any]:
    """:func:`phase_table` of the medians over a run's measured epochs (rank 0's records).

    Records without ``step_sizes`` (older runs) give times and shares only.
    """
    seconds = {
        t: _median([h[f"time_{t}_s"] for h in history])
        for t in TIMER_PHASES
        if all(f"time_{t}_s" in h for h in history)
    }
    steps = _median([h["steps"] for h in history])
    work, sizes = None, None
    if all("step_sizes" in h for h in history):
        keys = history[0]["step_sizes"]
        sizes = {k: _median([h["step_sizes"][k] for h in history]) for k in keys}
        sync = _median([h["embedding_bytes_per_step"] + h["dense_bytes_per_step"] for h in history])
        work = step_work(model_cfg, feature_dims, sizes, sync_bytes=sync, world=workers)
    epoch_s = _median([h["epoch_time_s"] for h in history])
    table = phase_table(work, seconds, epoch_s, steps, peak, labels)
    return {
        **table,
        "step_sizes": sizes,
        "counted": work is not None,
        "model": getattr(model_cfg, "name", None),
    }


def eval_roofline(pairs_per_s: float, width: int, peak: dict[str, Any]) -> dict[str, Any]:
    """Exact evaluation as a GEMM: each scored (user, item) pair is one ``width``-long dot
    product, ``2 width`` FLOP, held to the GEMM peak."""
    flop_s = pairs_per_s * 2 * width
    return {
        "flop_per_pair": 2 * width,
        "flop_per_s": flop_s,
        "peak": peak,
        "fraction_of_gemm_peak": flop_s / peak["gemm_flop_per_s"],
    }
