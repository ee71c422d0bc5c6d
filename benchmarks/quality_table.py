"""Markdown table of finished runs: test Recall/NDCG@K at each run's best-valid epoch.

Run from the repository root::

    python -m benchmarks.quality_table runs/tiktok          # every run directory under it
    python -m benchmarks.quality_table runs/tiktok/sea runs/tiktok/lightgcn
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="run directories or folders of them")
    print(table(parser.parse_args().paths))


if __name__ == "__main__":
    main()
