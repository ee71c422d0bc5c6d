"""One model step's CLUB estimator fit: compiled and fused in torch, against the autograd loop.

Run from the repository root::

    python -m benchmarks.bench_estimator                 # TikTok's sizes, 1 thread
    python -m benchmarks.bench_estimator --rows 2700 6710 --repeat 5
    python -m benchmarks.bench_estimator --targets native x86-64-v3 x86-64   # each build

SEA fits its estimators ``model.estimator_steps`` (50) times per model step on the step's
detached (generic, unique) pairs: one pair set per modality, ``N`` rows each (the unique items
of a sampled batch, about 2,700 per worker on TikTok at batch 2048; all 6,710 items in
full-graph mode). Both sides fit the same SEA-shaped estimators (``mi_dim`` 32, hidden 8, two
modalities) on the same pairs from the same start:

- ``autograd``: ``CLUB.learning_loss`` summed over modalities, ``backward``, ``Adam.step``,
  the loop ``fit_estimator`` ran before (under DDP it also all-reduced the gradients at every
  one of the 50 steps; here one process, so the figure is compute only);
- ``fused``: ``fit_estimator``'s torch route (``sea_dist.losses.mi.CLUBStack``: packed
  buffer, analytic gradient, Adam on the buffer; what runs on a GPU or without a compiler);
- ``compiled``: ``fit_estimator`` today on the CPU: the whole inner loop in one call into
  ``sea_dist/losses/club_nll.c`` (``sea_dist.losses.native``), once per ``--targets`` build
  (``SEA_DIST_KERNEL_TARGET``, a ``-march`` value), recorded as ``compiled:<target>``.

Each figure is the median over ``--repeat`` model steps after one warm-up, on ``--threads``
torch threads (a worker's, with 2 workers on this 2-core machine), with the GEMM peak measured
at the same threads (``sea_dist.bench.roofline``) and the fit's FLOPs counted as in its
``step_work``. Results go to ``benchmarks/results/estimator.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sea_dist.bench.measure import machine
from sea_dist.bench.roofline import linear, measure_peaks
from sea_dist.io import atomic_write_text
from sea_dist.losses import native
from sea_dist.losses.mi import CLUB, CLUBTerms
from sea_dist.train.optim import fit_estimator

RESULTS = Path(__file__).resolve().parent / "results"
MI_DIM, HIDDEN, MODALITIES = 32, 8, 2


class _Estimators(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.clubs = nn.ModuleList([CLUB(MI_DIM, MI_DIM, HIDDEN) for _ in range(MODALITIES)])

    def estimator_terms(self, out: dict[str, Any]) -> CLUBTerms:
        return out["terms"]


def _autograd_fit(
    model: _Estimators, terms: CLUBTerms, opt: torch.optim.Optimizer, steps: int
) -> None:
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.stack(
            [model.clubs[t].learning_loss(terms.x[t], terms.y[t]) for t in range(MODALITIES)]
        ).sum()
        loss.backward()
        opt.step()


def _median_seconds(run: Any, repeat: int) -> float:
    run()  # warm-up: first-touch allocations, Adam state
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(rows: int, steps: int, repeat: int, targets: list[str]) -> dict[str, Any]:
    torch.manual_seed(0)
    models = {"autograd": _Estimators()}
    models["fused"] = copy.deepcopy(models["autograd"])
    for target in targets:
        models[f"compiled:{target}"] = copy.deepcopy(models["autograd"])
    x = torch.randn(MODALITIES, rows, MI_DIM)
    y = 0.8 * x.flip(2) + 0.6 * torch.randn(MODALITIES, rows, MI_DIM)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    terms = {k: CLUBTerms(list(m.clubs), torch.arange(MODALITIES), x, y) for k, m in models.items()}

    def fit(kind: str) -> None:
        os.environ["SEA_DIST_NATIVE"] = "1" if kind.startswith("compiled") else "0"
        if kind.startswith("compiled:"):
            os.environ["SEA_DIST_KERNEL_TARGET"] = kind.split(":", 1)[1]
        fit_estimator(models[kind], {"terms": terms[kind]}, opts[kind], steps)

    seconds = {
        "autograd": _median_seconds(
            lambda: _autograd_fit(models["autograd"], terms["autograd"], opts["autograd"], steps),
            repeat,
        ),
        "fused": _median_seconds(lambda: fit("fused"), repeat),
    }
    for target in targets:
        kind = f"compiled:{target}"
        seconds[kind] = _median_seconds(lambda kind=kind: fit(kind), repeat)
    # 2 nets x [2 Linear(r, h) + 3 Linear(h, r)] per pair and step: forward, input and weight grads
    flops = (
        steps
        * MODALITIES
        * 2
        * (2 * linear(rows, MI_DIM, HIDDEN) + 3 * linear(rows, HIDDEN, MI_DIM)).flops
    )
    return {
        "rows": rows,
        "pairs": MODALITIES,
        "steps": steps,
        "seconds_per_model_step": seconds,
        "ms_per_inner_step": {k: 1e3 * v / steps for k, v in seconds.items()},
        "speedup_over_autograd": {k: seconds["autograd"] / v for k, v in seconds.items()},
        "flops_per_model_step": flops,
        "gflop_per_s": {k: flops / v / 1e9 for k, v in seconds.items()},
        "collectives_per_model_step_under_ddp": {"autograd": steps, "fused": 1, "compiled": 1},
        "isa": {t: _isa(t) for t in targets},
    }


def _isa(target: str) -> str:
    """The instruction set the ``target`` build vectorises with."""
    os.environ["SEA_DIST_KERNEL_TARGET"] = target
    kernel = native.club_kernel(MI_DIM, MI_DIM, HIDDEN)
    return kernel.isa if kernel is not None else "not built"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2700, 6710])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--targets", nargs="+", default=["native"], help="-march of each build")
    parser.add_argument("--out", type=Path, default=RESULTS / "estimator.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = measure_peaks([args.threads], cuda=False)
    gemm = peaks["cpu"][0]["gemm_flop_per_s"]
    runs = [measure(rows, args.steps, args.repeat, args.targets) for rows in args.rows]
    for run in runs:
        run["fraction_of_gemm_peak"] = {k: v * 1e9 / gemm for k, v in run["gflop_per_s"].items()}
        ms, peak = run["seconds_per_model_step"], run["fraction_of_gemm_peak"]
        builds = ", ".join(
            f"{k} {ms[k] * 1e3:.1f} ({peak[k]:.0%})" for k in ms if k.startswith("compiled")
        )
        print(
            f"N={run['rows']}, ms per model step (fraction of the {gemm / 1e9:.0f} GFLOP/s GEMM "
            f"peak): autograd {ms['autograd'] * 1e3:.1f}, fused {ms['fused'] * 1e3:.1f} "
            f"({peak['fused']:.0%}), {builds}",
            flush=True,
        )
    result = {"machine": machine(), "threads": args.threads, "peaks": peaks, "runs": runs}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
