"""Per-worker memory of a sampled SEA run as the workers grow, replicated or row-sharded tables.

Run from the repository root::

    python -m benchmarks.bench_memory                       # P = 1, 2, 4, both layouts
    python -m benchmarks.bench_memory --workers 1 2 4 --tables row_sharded --batch-size 256
    python -m benchmarks.bench_memory --store runs/data/million --cache-dir runs/cache ...

A catalogue (generated: default 800k users, 100k items, 4M interactions, 128-d image and 64-d
text features in float16; or ``--store``) is trained for a few sampled steps of SEA at 64-d
through the real ``sea-dist train``, at each worker count with each ``--tables`` layout (one
worker: replicated). Recorded per case, from the run's report:

- the bytes of ID tables each worker holds (``embedding_table_bytes``) and of their SparseAdam
  moments (two per row, so twice the tables);
- every rank's peak RSS up to its first step, up to the end of training (validation included)
  and for the whole run (the final validation, test and rank 0's export included). Pages of
  the node's shared object store count in every worker that touched them.

A run Ray's memory monitor killed is recorded with its error. Results go to ``--out``
(default ``benchmarks/results/memory.json``); cases measured before with the same parameters
are kept, so worker counts can be rerun one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sea_dist.bench.measure import machine
from sea_dist.data.store import open_store
from sea_dist.data.synthetic import generate_store
from sea_dist.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SEA_DIST = str(Path(sys.executable).with_name("sea-dist"))


def _train(
    store: Path, out: Path, workers: int, tables: str, args: argparse.Namespace
) -> dict[str, Any]:
    sets = [
        f"data.path={store}",
        f"data.cache_dir={args.cache_dir or out.parent / 'cache'}",
        "train.epochs=1",
        f"train.batch_size={args.batch_size}",
        "train.lr=1e-3",
        "train.mode=sampled",
        f"train.workers={workers}",
        f"train.max_steps_per_epoch={args.steps}",
        f"train.tables={tables}",
        "model.embedding_dim=64",
        "model.estimator_steps=5",
        "graph.knn_method=ann",
        f"eval.users_sample={args.eval_users}",
        *args.set,
    ]
    cmd = [
        SEA_DIST,
        "train",
        "--config",
        "configs/sea.yaml",
        "--output",
        str(out),
        "--quiet",
        "--json",
    ]
    for item in sets:
        cmd += ["--set", item]
    run = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if run.returncode != 0:  # e.g. Ray's memory monitor killed a worker: that is a result too
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
    report = json.loads((out / "report.json").read_text())
    epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {**report, "epoch_time_s": epoch["epoch_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=800_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=4_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2048, help="seed edges per worker")
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument(
        "--tables", nargs="+", default=["replicated", "row_sharded"],
        choices=["replicated", "row_sharded"], help="layouts to measure at P > 1",
    )
    parser.add_argument("--store", type=Path, help="an existing store instead of a generated one")
    parser.add_argument("--set", action="append", default=[], help="more KEY=VALUE overrides")
    parser.add_argument("--cache-dir", type=Path, help="kNN cache (default: beside the runs)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench_memory")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args()

    store = args.store or args.work_dir / f"store_{args.users}_{args.items}_{args.interactions}"
    if args.store is None and not (store / "meta.json").exists():
        generate_store(
            store,
            args.users,
            args.items,
            args.interactions,
            {"image": 128, "text": 64},
            seed=0,
            progress=False,
            feature_dtype="float16",
        )
    opened = open_store(store)
    params = {
        "store": str(args.store) if args.store else "generated",
        "users": opened.num_users,
        "items": opened.num_items,
        "interactions": int(opened.meta["num_interactions"]),
        "model": "sea",
        "embedding_dim": 64,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "eval_users_sample": args.eval_users,
        "overrides": args.set,
        "features": dict(opened.modalities),
        "feature_dtype": str(opened.features(next(iter(opened.modalities))).dtype),
    }
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    kept = previous.get("cases", []) if previous.get("params") == params else []
    cases = [c for c in kept if c["workers"] not in args.workers]
    for workers in args.workers:
        for tables in args.tables if workers > 1 else ("replicated",):
            out = args.work_dir / f"run_{workers}_{tables}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            report = _train(store, out, workers, tables, args)
            if "error" in report:
                cases.append({"workers": workers, "tables": tables, **report})
                print(json.dumps(cases[-1]), flush=True)
                continue
            table = report["embedding_table_bytes"]
            cases.append(
                {
                    "workers": workers,
                    "tables": tables,
                    "table_bytes_per_worker": table,
                    "optimizer_state_bytes_per_worker": 2 * table,
                    "setup_peak_rss_mb_per_worker": report["setup_peak_rss_mb_per_worker"],
                    "train_peak_rss_mb_per_worker": report["train_peak_rss_mb_per_worker"],
                    "peak_rss_mb_per_worker": report["peak_rss_mb_per_worker"],
                    "embedding_bytes_per_step": report["embedding_bytes_per_step"],
                    "epoch_time_s": report["epoch_time_s"],
                    "run_seconds": time.perf_counter() - started,
                }
            )
            print(json.dumps(cases[-1]), flush=True)

    result = {
        "benchmark": "memory",
        "command": "python -m benchmarks.bench_memory " + " ".join(sys.argv[1:]),
        "params": params,
        "machine": machine(),
        "cases": sorted(cases, key=lambda c: (c["workers"], c["tables"])),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
