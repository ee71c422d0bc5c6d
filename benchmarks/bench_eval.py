"""Exact full-ranking evaluation: scored user-item pairs per second and peak memory.

    python -m benchmarks.bench_eval --device cpu --out benchmarks/results/eval.json

Cases (each in a fresh spawned process, so its peak resident memory is its own):

- ``full``: ``Evaluator.evaluate`` of every user (``--users``) against ``--items`` items
  (10k, 100k and 1M by default), d = ``--dim``.
- ``sample``: a seeded ``--sample-users`` sample out of ``--sample-population`` users against
  ``--sample-items`` items, with confidence intervals.

Embeddings are Gaussian; each user has ``--train-per-user`` masked training items and
``--test-per-user`` test positives, drawn uniformly. A case runs ``--warmup`` untimed and
``--repeat`` timed evaluations; pairs per second use the median time. Peak memory is the
process's ``ru_maxrss`` (``peak_rss_mib``) next to its RSS after the inputs were built
(``setup_rss_mib``); on CUDA also ``torch.cuda.max_memory_allocated`` over the timed runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from sea_dist.io import atomic_write_text


@dataclass
class CaseResult:
    """One case's timings and memory."""

    case: str
    num_items: int
    num_users: int
    evaluated_users: int
    dim: int
    tile_rows: int
    tile_items: int
    seconds: list[float]
    seconds_p50: float
    seconds_p90: float
    pairs_per_s: float
    setup_rss_mib: float
    peak_rss_mib: float
    cuda_peak_mib: float | None
    recall_at_20: float


def _pairs(rng: Any, num_users: int, num_items: int, per_user: int) -> tuple[Any, Any]:
    import numpy as np

    users = np.repeat(np.arange(num_users, dtype=np.int64), per_user)
    return users, rng.integers(0, num_items, len(users))


def _case(spec: dict[str, Any]) -> CaseResult:
    """Build one case's inputs and time its evaluations (runs in the child process)."""
    import numpy as np
    import torch

    from sea_dist.bench.measure import eval_throughput
    from sea_dist.eval.evaluator import Evaluator

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    rng = np.random.default_rng(spec["seed"])
    num_users, num_items, dim = spec["num_users"], spec["num_items"], spec["dim"]
    evaluator = Evaluator(
        num_users,
        num_items,
        train=_pairs(rng, num_users, num_items, spec["train_per_user"]),
        splits={"test": _pairs(rng, num_users, num_items, spec["test_per_user"])},
        ks=spec["ks"],
        batch_users=spec["batch_users"],
        device=device,
    )
    gen = torch.Generator().manual_seed(spec["seed"])
    user_emb = torch.randn(num_users, dim, generator=gen).to(device)
    item_emb = torch.randn(num_items, dim, generator=gen).to(device)
    setup_rss = psutil.Process().memory_info().rss / 2**20

    timed = eval_throughput(evaluator, user_emb, item_emb, split="test", warmup=spec["warmup"],
                            repeats=spec["repeat"], users_sample=spec["users_sample"], seed=spec["seed"])
    seconds = timed["seconds"]["values"]
    p50 = statistics.median(seconds)
    evaluated = timed["users"]
    return CaseResult(
        case=spec["case"],
        num_items=num_items,
        num_users=num_users,
        evaluated_users=evaluated,
        dim=dim,
        tile_rows=evaluator.plan.rows,
        tile_items=evaluator.plan.item_chunk,
        seconds=seconds,
        seconds_p50=p50,
        seconds_p90=statistics.quantiles(seconds, n=10)[-1] if len(seconds) > 1 else p50,
        pairs_per_s=evaluated * num_items / p50,
        setup_rss_mib=setup_rss,
        # ru_maxrss is in KiB on Linux.
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        cuda_peak_mib=timed["cuda_peak_mib"],
        recall_at_20=timed["recall@20"] if timed["recall@20"] is not None else float("nan"),
    )


def _child(spec: dict[str, Any], results: mp.Queue[dict[str, Any]]) -> None:
    results.put(asdict(_case(spec)))


def _run_case(spec: dict[str, Any]) -> dict[str, Any]:
    from sea_dist.bench.measure import run_spawned

    return run_spawned(_child, (spec,), f"case {spec['case']} ({spec['num_items']} items)")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    # Imported here, not at the top: spawned children re-import this module.
    from sea_dist.bench.measure import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--items", type=_ints, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=_ints, default=[10, 20, 50])
    parser.add_argument("--train-per-user", type=int, default=20)
    parser.add_argument("--test-per-user", type=int, default=5)
    parser.add_argument("--batch-users", type=int, default=4096)
    parser.add_argument("--sample-users", type=int, default=10_000)
    parser.add_argument("--sample-population", type=int, default=100_000)
    parser.add_argument("--sample-items", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval.json"))
    args = parser.parse_args(argv)

    common = {
        "device": args.device,
        "dim": args.dim,
        "ks": args.k,
        "train_per_user": args.train_per_user,
        "test_per_user": args.test_per_user,
        "batch_users": args.batch_users,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "threads": args.threads,
        "seed": args.seed,
    }
    specs = [
        {
            **common,
            "case": "full",
            "num_items": items,
            "num_users": args.users,
            "users_sample": None,
        }
        for items in args.items
    ]
    if args.sample_users > 0:
        specs.append(
            {
                **common,
                "case": "sample",
                "num_items": args.sample_items,
                "num_users": args.sample_population,
                "users_sample": args.sample_users,
            }
        )
    results = []
    for spec in specs:
        result = _run_case(spec)
        print(
            f"{result['case']:>6} items={result['num_items']:>8}"
            f" users={result['evaluated_users']:>6}"
            f"  p50 {result['seconds_p50']:7.2f} s  {result['pairs_per_s'] / 1e6:7.1f} M pairs/s"
            f"  peak RSS {result['peak_rss_mib']:7.0f} MiB",
            flush=True,
        )
        results.append(result)
    report = {
        "benchmark": "eval",
        "command": " ".join(
            ["python -m benchmarks.bench_eval", *(sys.argv[1:] if argv is None else argv)]
        ),
        "params": vars(args) | {"out": str(args.out)},
        "machine": machine(),
        "cases": results,
    }
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
