"""Data-layer throughput and memory: generate a catalogue, export it as MMRec, import it back.

    python -m benchmarks.bench_data --users 3000000 --items 1000000 --interactions 30000000 \\
        --modalities image:512,text:384 --feature-dtype float16 --out benchmarks/results/data.json

Each stage runs in a fresh (spawned) process, so its peak resident memory
(``ru_maxrss``) is its own:

- ``generate``: ``generate_store`` (interactions, split, features, checksums).
- ``export``: the store written back as an MMRec directory (``.inter`` + ``*_feat.npy``),
  the input of the next stage; timed for reference.
- ``import``: ``import_mmrec`` of that directory: CSV parse, validation, duplicate check,
  feature copy with NaN/Inf checks, checksums.
- ``inspect``: ``inspect_store`` on the imported store.

Rows per second are interactions per wall-clock second of the stage. Results go to a JSON
file together with the machine description.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """One stage's timings over its repeats and its largest peak RSS."""

    stage: str
    rows: int
    seconds: list[float]
    seconds_p50: float
    rows_per_s: float
    peak_rss_mib: float


def _stage(name: str, args: dict[str, Any], work: str) -> float:
    """Run one stage in this (child) process; return its wall-clock seconds."""
    from sea_dist.data.inspect import inspect_store
    from sea_dist.data.mmrec import export_mmrec, import_mmrec
    from sea_dist.data.store import open_store
    from sea_dist.data.synthetic import generate_store

    root = Path(work)
    start = time.perf_counter()
    if name == "generate":
        generate_store(
            root / "generated",
            args["users"],
            args["items"],
            args["interactions"],
            args["modalities"],
            args["seed"],
            progress=args["progress"],
            feature_dtype=args["feature_dtype"],
        )
    elif name == "export":
        export_mmrec(open_store(root / "generated"), root / "mmrec")
    elif name == "import":
        import_mmrec(root / "mmrec", root / "imported")
    elif name == "inspect":
        inspect_store(open_store(root / "imported"))
    else:
        raise ValueError(name)
    return time.perf_counter() - start


def _child(name: str, args: dict[str, Any], work: str, queue: mp.Queue) -> None:
    seconds = _stage(name, args, work)
    # ru_maxrss is in KiB on Linux.
    queue.put((seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def _run_stage(name: str, args: dict[str, Any], work: Path) -> tuple[float, float]:
    context = mp.get_context("spawn")
    queue: mp.Queue = context.Queue()
    process = context.Process(target=_child, args=(name, args, str(work), queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"stage {name} failed with exit code {process.exitcode}")
    return queue.get()


def _clean(work: Path, name: str) -> None:
    outputs = {"generate": "generated", "export": "mmrec", "import": "imported"}
    if name in outputs:
        shutil.rmtree(work / outputs[name], ignore_errors=True)


def main() -> None:
    # Imported here, not at the top: spawned children re-import this module.
    from sea_dist.bench.measure import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--interactions", type=int, default=3_000_000)
    parser.add_argument("--modalities", default="image:512,text:384")
    parser.add_argument("--feature-dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per stage")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data.json"))
    parser.add_argument("--progress", action="store_true", help="show the generator's bars")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    options = parser.parse_args()
    modalities = {
        name: int(width)
        for name, width in (pair.split(":") for pair in options.modalities.split(",") if pair)
    }
    args = {
        "users": options.users,
        "items": options.items,
        "interactions": options.interactions,
        "modalities": modalities,
        "seed": options.seed,
        "feature_dtype": options.feature_dtype,
        "progress": options.progress,
    }
    work = options.workdir
    if work.exists():
        raise SystemExit(f"{work} exists; remove it or pass another --workdir")
    work.mkdir(parents=True)
    results = []
    try:
        for name in ("generate", "export", "import", "inspect"):
            runs = []
            for attempt in range(options.repeat):
                if attempt:
                    _clean(work, name)
                runs.append(_run_stage(name, args, work))
                print(f"{name}: {runs[-1][0]:.1f} s, peak RSS {runs[-1][1]:.0f} MiB", flush=True)
            seconds = [run[0] for run in runs]
            p50 = statistics.median(seconds)
            results.append(
                StageResult(
                    stage=name,
                    rows=options.interactions,
                    seconds=seconds,
                    seconds_p50=p50,
                    rows_per_s=options.interactions / p50,
                    peak_rss_mib=max(run[1] for run in runs),
                )
            )
        sizes = {
            p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            for p in work.iterdir()
        }
    finally:
        if not options.keep:
            shutil.rmtree(work, ignore_errors=True)
    report = {
        "benchmark": "data",
        "command": "python -m benchmarks.bench_data "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(options).items()
            if k
            in ("users", "items", "interactions", "modalities", "feature_dtype", "seed", "repeat")
        ),
        "params": args,
        "machine": machine(),
        "disk_bytes": sizes,
        "stages": [asdict(r) for r in results],
    }
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
