"""Markdown table of finished runs: test Recall/NDCG@K at each run's best-valid epoch.

Run from the repository root::

    python -m benchmarks.quality_table runs/tiktok          # every run directory under it
    python -m benchmarks.quality_table runs/tiktok/sea runs/tiktok/lightgcn
    python -m benchmarks.quality_table runs/tiktok --seeds  # NAME and NAME_seedN pooled

``--seeds`` pools a run ``NAME`` (the config's seed) with its repeats ``NAME_seed1``,
``NAME_seed2``, ... and prints each metric's mean and sample standard deviation over them.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from sea_dist.train.run_files import REPORT


def _reports(paths: list[Path]) -> list[tuple[str, dict]]:
    """``(run name, report)`` of every finished run in ``paths``, folders expanded in name order."""
    runs = []
    for path in paths:
        if (path / REPORT).is_file():
            runs.append(path)
        else:
            runs.extend(sorted(p.parent for p in path.glob(f"*/{REPORT}")))
    return [(run.name, json.loads((run / REPORT).read_text())) for run in runs]


def _metrics(ks: tuple[int, ...]) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")]


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def table(paths: list[Path], ks: tuple[int, ...] = (10, 20)) -> str:
    metrics = _metrics(ks)
    rows = [
        [
            name,
            report["model"],
            *[f"{report['test'][m]:.4f}" for m in metrics],
            str(report["best_epoch"]),
            str(report["epochs_run"]),
            f"{report['wall_time_s'] / report['epochs_run']:.0f}",
        ]
        for name, report in _reports(paths)
    ]
    head = ["run", "model", *[f"test {m}" for m in metrics], "best epoch", "epochs", "s/epoch"]
    return _markdown(head, rows)


def seed_table(paths: list[Path], ks: tuple[int, ...] = (10, 20)) -> str:
    metrics = _metrics(ks)
    groups: dict[str, list[dict]] = {}
    for name, report in _reports(paths):
        groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(report)
    rows = []
    for name, reports in groups.items():
        if len(reports) < 2:
            continue
        spreads = [[r["test"][m] for r in reports] for m in metrics]
        rows.append([
            name,
            str(len(reports)),
            *[f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" for v in spreads],
            ", ".join(str(r["best_epoch"]) for r in reports),
        ])
    return _markdown(["run", "seeds", *[f"test {m}" for m in metrics], "best epochs"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="run directories or folders of them")
    parser.add_argument("--seeds", action="store_true", help="pool NAME with NAME_seedN: mean ± std")
    args = parser.parse_args()
    print(seed_table(args.paths) if args.seeds else table(args.paths))


if __name__ == "__main__":
    main()
