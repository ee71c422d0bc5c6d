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


def _runs(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if (path / REPORT).is_file():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob(f"*/{REPORT}")))
    return found


def table(paths: list[Path], ks: tuple[int, ...] = (10, 20)) -> str:
    metrics = [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")]
    head = ["run", "model", *[f"test {m}" for m in metrics], "best epoch", "epochs", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in _runs(paths):
        report = json.loads((run / REPORT).read_text())
        cells = [
            run.name,
            report["model"],
            *[f"{report['test'][m]:.4f}" for m in metrics],
            str(report["best_epoch"]),
            str(report["epochs_run"]),
            f"{report['wall_time_s'] / report['epochs_run']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(paths: list[Path], ks: tuple[int, ...] = (10, 20)) -> str:
    metrics = [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")]
    groups: dict[str, list[dict]] = {}
    for run in _runs(paths):
        name = re.sub(r"_seed\d+$", "", run.name)
        groups.setdefault(name, []).append(json.loads((run / REPORT).read_text()))
    head = ["run", "seeds", *[f"test {m}" for m in metrics], "best epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, reports in groups.items():
        if len(reports) < 2:
            continue
        cells = [name, str(len(reports))]
        for m in metrics:
            values = [r["test"][m] for r in reports]
            cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
        cells.append(", ".join(str(r["best_epoch"]) for r in reports))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="run directories or folders of them")
    parser.add_argument("--seeds", action="store_true", help="pool NAME with NAME_seedN: mean ± std")
    args = parser.parse_args()
    print(seed_table(args.paths) if args.seeds else table(args.paths))


if __name__ == "__main__":
    main()
