"""Valid Recall@20 at equal training wall time, for named sets of training settings.

Run from the repository root::

    python -m benchmarks.bench_equal_time --scenario synth_100k --budget 420 \
        --variant "base=" \
        --variant "fast=train.sampler=labor,train.fanouts=[5,5],train.batch_size=16384" \
        --out benchmarks/results/equal_time_synth_100k.json

Each variant is a real ``sea-dist train`` run (one worker) on the scenario's data, model config
and overrides, plus the variant's own overrides (comma-separated ``key=value``; brackets keep
their commas). Training is cut into short epochs (``--chunk-edges`` seed edges each, through
``train.max_steps_per_epoch``) so validation samples the curve often, and stops when the
cumulative training time (``epoch_time_s``: sampling, steps, estimator, sync, optimizer;
validation excluded, as it does not depend on the training settings) passes ``--budget``
seconds. A variant may set ``train.max_steps_per_epoch`` itself, so that fast ones validate
about as often in time as slow ones; ``--reuse`` keeps a variant whose run already spent the
budget. The figure for a variant is the best valid Recall@20 reached within the budget, on
the scenario's evaluation sample; the JSON keeps every epoch's point.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sea_dist.bench.data import prepare_scenario_data
from sea_dist.bench.measure import machine
from sea_dist.bench.report import machine_line
from sea_dist.bench.scenario import TrainingScenario, load_scenario, resolve_relative
from sea_dist.config import load_config


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=k1=v1,k2=[a,b]`` -> ``(name, ["k1=v1", "k2=[a,b]"])``."""
    name, _, rest = text.partition("=")
    if not name:
        raise ValueError(f"variant {text!r} has no name (NAME=key=value,...)")
    return name, [part for part in re.split(r",(?![^\[]*\])", rest) if part]


def best_within(points: list[dict[str, float]], budget: float) -> dict[str, float] | None:
    """The point with the best recall among those whose cumulative time is within ``budget``."""
    inside = [p for p in points if p["train_s"] <= budget]
    return max(inside, key=lambda p: p["recall@20"]) if inside else None


def _run(
    name: str,
    overrides: list[str],
    scenario: TrainingScenario,
    scenario_file: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    data = prepare_scenario_data(scenario.data, scenario_file, Path(args.cache_dir))
    config = resolve_relative(scenario_file, scenario.config)
    settings = [
        f"data.path={data}",
        f"data.cache_dir={args.cache_dir}",
        *scenario.overrides,
        *overrides,
    ]
    cfg = load_config(config, settings)  # refused here, with its key, before anything runs
    # A variant may set its own epoch length (fast variants: fewer validations per budget).
    steps = cfg.train.max_steps_per_epoch or math.ceil(args.chunk_edges / cfg.train.batch_size)
    run_dir = Path(args.work) / name
    metrics = run_dir / "metrics.jsonl"
    points = _points(metrics)
    if args.reuse and points and points[-1]["train_s"] >= args.budget:
        return _result(overrides, steps, cfg.train.batch_size, points, args.budget, None)
    command = [
        sys.executable, "-m", "sea_dist", "--log-level", "WARNING", "train",
        "--config", str(config), "--output", str(run_dir), "--workers", "1", "--quiet",
        *(x for s in settings for x in ("--set", s)),
        "--set", f"train.max_steps_per_epoch={steps}",
        "--set", f"train.epochs={args.max_epochs}",
        "--set", f"train.patience={args.max_epochs + 1}",
        "--set", f"train.checkpoint_every={args.max_epochs}",
    ]  # fmt: skip
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a cut run cannot resume: its budget check would be off
    started = time.perf_counter()
    process = subprocess.Popen(command)
    while process.poll() is None:
        time.sleep(2)
        points = _points(metrics)
        if points and points[-1]["train_s"] >= args.budget:
            process.terminate()  # the budget is spent; later epochs would not count
            process.wait()
    return _result(
        overrides, steps, cfg.train.batch_size, _points(metrics), args.budget,
        time.perf_counter() - started,
    )  # fmt: skip


def _result(
    overrides: list[str],
    steps: int,
    batch_size: int,
    points: list[dict[str, float]],
    budget: float,
    wall_s: float | None,
) -> dict[str, Any]:
    return {
        "overrides": overrides,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "points": points,
        "best_within_budget": best_within(points, budget),
        "wall_s": wall_s,
    }


def _points(metrics: Path) -> list[dict[str, float]]:
    if not metrics.is_file():
        return []
    points, total = [], 0.0
    for line in metrics.read_text().splitlines():
        row = json.loads(line)
        if "epoch_time_s" not in row:
            continue
        total += float(row["epoch_time_s"])
        if "valid/recall@20" in row:
            points.append(
                {
                    "epoch": int(row["epoch"]),
                    "train_s": total,
                    "recall@20": float(row["valid/recall@20"]),
                    "recall@20_ci95": float(row.get("valid/recall@20_ci95", float("nan"))),
                    "train_edges_per_s": float(row["train_edges_per_s"]),
                }
            )
    return points


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Valid Recall@20 at equal training time: {result['scenario']}",
        "",
        f"Budget {result['budget_s']:.0f} s of training per variant, one worker, "
        f"`{result['command']}`; {machine_line(result['machine'])}.",
        "",
        "| variant | batch | seed edges/s (median) | best valid R@20 within budget | at s "
        "| validations run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, run in result["variants"].items():
        best, points = run["best_within_budget"], run["points"]
        rates = sorted(p["train_edges_per_s"] for p in points)
        rate = rates[len(rates) // 2] if rates else float("nan")
        if best is None:
            lines.append(f"| {name} | {run['batch_size']} | {rate:,.0f} | none | | 0 |")
            continue
        ci = best["recall@20_ci95"]  # NaN when every user is evaluated: no sampling error
        spread = "" if math.isnan(ci) else f" ± {ci:.4f}"
        lines.append(
            f"| {name} | {run['batch_size']} | {rate:,.0f} | {best['recall@20']:.4f}{spread} "
            f"| {best['train_s']:.0f} | {len(points)} |"
        )
    lines += ["", "Overrides:", ""]
    lines += [f"- {n}: `{' '.join(r['overrides']) or '(the scenario as it is)'}`"
              for n, r in result["variants"].items()]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, help="a training scenario name or file")
    parser.add_argument("--variant", action="append", required=True, help="NAME=key=value,...")
    parser.add_argument("--budget", type=float, required=True, help="training seconds each")
    parser.add_argument("--chunk-edges", type=int, default=200_000, help="seed edges per epoch")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--work", default="runs/equal_time")
    parser.add_argument(
        "--reuse", action="store_true", help="keep a variant whose run already spent the budget"
    )
    parser.add_argument("--out", required=True, help="results JSON (a .md is written beside it)")
    args = parser.parse_args()
    scenario, scenario_file = load_scenario(args.scenario)
    if not isinstance(scenario, TrainingScenario):
        raise SystemExit(f"error: {scenario_file}: not a training scenario")
    variants = dict(parse_variant(v) for v in args.variant)
    result = {
        "scenario": scenario.name,
        "budget_s": args.budget,
        "chunk_edges": args.chunk_edges,
        "command": " ".join(["python -m benchmarks.bench_equal_time", *sys.argv[1:]]),
        "machine": machine(),
        "variants": {},
    }
    out = Path(args.out)
    for name, overrides in variants.items():
        result["variants"][name] = _run(name, overrides, scenario, scenario_file, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))  # after each variant: a cut run keeps some
        out.with_suffix(".md").write_text(_markdown(result))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
