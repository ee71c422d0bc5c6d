"""Bytes moved per step for the ID embedding tables, against the tables' size.

Run from the repository root::

    python -m benchmarks.bench_sync                          # 10k, 100k and 1M items
    python -m benchmarks.bench_sync --items 10000 --steps 10

For each catalogue size, a generated store (users = items, 10 interactions per user, no
features) is trained for one short epoch of LightGCN in sampled mode with two Ray workers
(batch 2048, fanouts 10/10), through the real ``sea-dist train``. LightGCN's parameters are
all ID tables, so every byte it communicates is embedding-table traffic: the row-sparse
all-gather of the rows a step touched (``sea_dist.train.sparse_sync``). A dense all-reduce of
the same tables would move about ``2 (P-1)/P`` times the tables per worker and step (ring
all-reduce), which is the column the sparse figure is compared against.

Results go to ``benchmarks/results/sync.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sea_dist.bench.measure import machine
from sea_dist.data.synthetic import generate_store
from sea_dist.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SEA_DIST = str(Path(sys.executable).with_name("sea-dist"))


def _train(store: Path, out: Path, workers: int, steps: int) -> dict[str, Any]:
    cmd = [
        SEA_DIST, "--log-level", "WARNING", "train", "--config", "configs/lightgcn.yaml",
        "--output", str(out), "--quiet",
        "--set", f"data.path={store}",
        "--set", "train.epochs=1", "--set", "train.batch_size=2048",
        "--set", "train.mode=sampled", "--set", "train.fanouts=[10, 10]",
        "--set", f"train.workers={workers}", "--set", f"train.max_steps_per_epoch={steps}",
        "--set", "eval.users_sample=1000",
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench_sync")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sync.json")
    args = parser.parse_args()

    cases = []
    for items in args.items:
        store = args.work_dir / f"store_{items}"
        if not (store / "meta.json").exists():
            generate_store(store, items, items, 10 * items, {}, seed=0, progress=False)
        out = args.work_dir / f"run_{items}"
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        started = time.perf_counter()
        report = _train(store, out, args.workers, args.steps)
        table = report["embedding_table_bytes"]
        sparse = report["embedding_bytes_per_step"]
        dense = 2 * (args.workers - 1) / args.workers * table
        cases.append({
            "items": items,
            "users": items,
            "interactions": 10 * items,
            "embedding_table_bytes": table,
            "embedding_bytes_per_step": sparse,
            "sparse_over_table": sparse / table,
            "dense_allreduce_bytes_per_step": dense,
            "dense_over_sparse": dense / max(sparse, 1.0),
            "train_edges_per_s": report.get("train_edges_per_s"),
            "peak_rss_mb_per_worker": report.get("peak_rss_mb_per_worker"),
            "run_seconds": time.perf_counter() - started,
        })
        print(json.dumps(cases[-1]))

    result = {
        "benchmark": "sync",
        "command": "python -m benchmarks.bench_sync " + " ".join(sys.argv[1:]),
        "params": {"workers": args.workers, "steps": args.steps, "batch_size": 2048,
                   "fanouts": [10, 10], "model": "lightgcn", "embedding_dim": 64},
        "machine": machine(),
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
