"""Training scenarios: throughput and scaling, sampler, evaluation, time-to-accuracy.

Flow of ``sea-dist bench SCENARIO --workers 1,2 --out DIR``::

    scenario YAML -> data (cached) -> run config (config + overrides + --set)
      -> the machine's peaks: GEMM FLOP/s and memory bandwidth (roofline.py), before Ray starts
      -> one Ray cluster for the whole bench
      -> throughput runs, one per (workers, steps per worker) needed by
           strong scaling: total_steps / W steps per worker per epoch
           weak scaling:   steps_per_worker steps per worker per epoch
         each: warmup_epochs + repeats epochs; per-epoch records of rank 0
         (metrics.jsonl) -> median and spread over the repeats; each timed phase's
         FLOPs and bytes (from the epoch's batch sizes) against the peaks
      -> sampler throughput (this process), evaluation throughput (a run's embeddings)
      -> time-to-accuracy: sampled on N workers vs full-graph on 1, validating every epoch
      -> DIR/results.json, results.md, *.png   (see report.py)

Each training run is an ordinary ``sea-dist train`` run directory under ``DIR/runs/<label>``;
a rerun of the same bench into the same DIR reuses finished runs (their ``report.json``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sea_dist.bench import stats
from sea_dist.bench.data import prepare_scenario_data
from sea_dist.bench.measure import eval_throughput, machine, sampler_throughput
from sea_dist.bench.roofline import eval_roofline, measure_peaks, peak_for, run_roofline
from sea_dist.bench.scenario import (
    StageScenario,
    TrainingScenario,
    load_scenario,
    resolve_relative,
)
from sea_dist.config import RunCfg, load_config
from sea_dist.errors import SeaDistError

log = logging.getLogger(__name__)

TIMERS = ("sample", "move", "forward_backward", "sync", "estimator", "optimizer")
# What each loop timer is called in the results (the loop's names are its own).
TIMER_LABELS = {
    "sample": "sampling",
    "move": "data movement",
    "forward_backward": "forward-backward",
    "sync": "communication",
    "estimator": "estimator",
    "optimizer": "optimizer",
}
METRIC = "valid/recall@20"


def worker_threads(workers: int) -> int:
    """Torch threads each of ``workers`` local Ray Train workers gets (as the trainer splits
    a local cluster's CPUs)."""
    return max(1, (os.cpu_count() or 1) // workers)


def parse_workers(text: str | None) -> list[int] | None:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique); None stays None."""
    if text is None:
        return None
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SeaDistError(f"--workers {text!r}: expected comma-separated integers") from None
    if not values or values[0] < 1:
        raise SeaDistError(f"--workers {text!r}: worker counts must be >= 1")
    return values


def run_bench(
    scenario_name: str,
    out: str | Path,
    *,
    workers: list[int] | None = None,
    device: str = "cpu",
    quick: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    address: str | None = None,
) -> dict[str, Any]:
    """Run one scenario into ``out``; returns what ``results.json`` holds."""
    from sea_dist.bench.report import write_results

    scenario, scenario_file = load_scenario(scenario_name, quick=quick)
    out = Path(out).resolve()
    if (out / "results.json").exists():
        raise SeaDistError(f"{out}: bench already finished (results.json exists); choose another --out")
    if device == "cuda" and not torch.cuda.is_available():
        raise SeaDistError("--device cuda: no CUDA device visible to torch")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    counts = workers or ([scenario.stages.workers] if isinstance(scenario, StageScenario) else scenario.workers)
    # Before Ray starts: the ceilings each run is held to (its workers' threads, all cores).
    peaks = measure_peaks([*(worker_threads(w) for w in counts), os.cpu_count() or 1,
                           torch.get_num_threads()], cuda=device == "cuda")
    if isinstance(scenario, StageScenario):
        from sea_dist.bench.stages import run_stages

        body = run_stages(scenario, scenario_file, out, workers=workers, device=device,
                          overrides=list(overrides), address=address)
        _stage_roofline(body, scenario, peaks, device)
    else:
        body = _run_training_scenario(scenario, scenario_file, out, workers, device, list(overrides),
                                      address, peaks)
    results = {
        "scenario": scenario.name,
        "kind": scenario.kind,
        "description": scenario.description,
        "scenario_file": str(scenario_file),
        "quick": quick,
        "device": device,
        "overrides": list(overrides),
        "machine": {**machine(), "peaks": peaks},
        "bench_wall_s": time.perf_counter() - started,
        **body,
    }
    write_results(out, results)
    return results


class _Runs:
    """Training runs of one bench: config building, Ray, reuse of finished runs."""

    def __init__(self, config_file: Path, base: list[str], out: Path, address: str | None) -> None:
        self.config_file = config_file
        self.base = base
        self.root = out / "runs"
        self.address = address

    def config(self, extra: list[str] | None = None) -> RunCfg:
        return load_config(self.config_file, [*self.base, *(extra or [])])

    def train(self, label: str, workers: int, extra: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        from sea_dist.train.run_files import REPORT, RunFiles
        from sea_dist.train.trainer import run_training

        run_dir = self.root / label
        if (run_dir / REPORT).exists():
            log.info("%s: reusing the finished run", label)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # a partial run would resume, skewing times
            log.info("%s: training on %d worker(s)", label, workers)
            run_training(self.config(extra), run_dir, workers=workers, address=self.address, progress=False)
        return json.loads((run_dir / REPORT).read_text()), RunFiles(run_dir).read_metrics()


def _connect(address: str | None, max_workers: int) -> None:
    """One Ray cluster for every run of the bench (a local one unless ``address``)."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, max_workers), include_dashboard=False, log_to_driver=False)


def _run_training_scenario(
    scenario: TrainingScenario,
    scenario_file: Path,
    out: Path,
    workers: list[int] | None,
    device: str,
    cli_overrides: list[str],
    address: str | None,
    peaks: dict[str, Any],
) -> dict[str, Any]:
    config_file = resolve_relative(scenario_file, scenario.config)
    probe = load_config(config_file, [*scenario.overrides, *cli_overrides])
    data_path = prepare_scenario_data(scenario.data, scenario_file, Path(probe.data.cache_dir))
    base = [
        *scenario.overrides,
        f"data.path={data_path}",
        f"train.device={device}",
        *cli_overrides,
    ]
    runs = _Runs(config_file, base, out, address)
    cfg = runs.config()
    worker_counts = workers or sorted(set(scenario.workers))
    _connect(address, max(worker_counts))

    body: dict[str, Any] = {
        "workers": worker_counts,
        "config": {"file": str(config_file), "overrides": base, "model": cfg.model.name,
                   "mode": cfg.train.mode, "batch_size": cfg.train.batch_size,
                   "fanouts": cfg.train.fanouts, "sampler": cfg.train.sampler,
                   "item_fanout": cfg.train.item_fanout, "data": str(data_path)},
    }
    dims = _feature_dims(cfg)

    def roofline(w: int, kept: list[dict[str, Any]]) -> dict[str, Any]:
        peak = peak_for(peaks, device, worker_threads(w))
        return run_roofline(kept, cfg.model, dims, peak, w, TIMER_LABELS)

    body["throughput"] = _throughput(runs, scenario, worker_counts, roofline)
    if scenario.sampler is not None:
        body["sampler"] = _sampler(cfg, scenario)
    if scenario.eval is not None:
        first = body["throughput"]["runs"][0]
        body["eval"] = _evaluation(cfg, out / "runs" / first["label"], scenario, device, peaks)
    if scenario.time_to_accuracy is not None:
        body["time_to_accuracy"] = _time_to_accuracy(runs, scenario, worker_counts)
    return body


def _throughput(
    runs: _Runs,
    scenario: TrainingScenario,
    worker_counts: list[int],
    roofline: Callable[[int, list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec = scenario.throughput
    epochs = spec.warmup_epochs + spec.repeats
    plan = {
        "strong": {w: max(1, math.ceil(spec.total_steps / w)) for w in worker_counts},
        "weak": {w: spec.steps_per_worker for w in worker_counts},
    }
    measured: dict[tuple[int, int], dict[str, Any]] = {}
    for regime in ("strong", "weak"):
        for w, steps in plan[regime].items():
            if (w, steps) in measured:
                continue  # e.g. strong and weak ask for the same run at the smallest W
            label = f"throughput-w{w}-s{steps}"
            report, history = runs.train(label, w, [
                f"train.epochs={epochs}",
                f"train.max_steps_per_epoch={steps}",
                f"eval.every={epochs}",
                f"train.checkpoint_every={epochs}",
                f"train.patience={epochs + 1}",
            ])
            row = summarise_run(label, w, steps, report, history, spec.warmup_epochs)
            if roofline is not None:
                row["roofline"] = roofline(w, history[spec.warmup_epochs:] or history[-1:])
            measured[(w, steps)] = row
    out: dict[str, Any] = {"warmup_epochs": spec.warmup_epochs, "repeats": spec.repeats,
                           "runs": list(measured.values())}
    for regime in ("strong", "weak"):
        rows = {w: measured[(w, steps)] for w, steps in plan[regime].items()}
        total = {w: r["edges_per_s_total"]["median"] for w, r in rows.items()}
        out[regime] = {
            "steps_per_worker": plan[regime],
            "runs": {w: r["label"] for w, r in rows.items()},
            "edges_per_s_total": total,
            "speedup": stats.speedup(total),
            "efficiency": stats.scaling_efficiency(total),
        }
    return out


def summarise_run(
    label: str, workers: int, steps: int, report: dict[str, Any], history: list[dict[str, Any]], warmup: int
) -> dict[str, Any]:
    """Median and spread of one run's measured epochs (the first ``warmup`` are dropped)."""
    kept = history[warmup:] or history[-1:]
    per_worker = [h["train_edges_per_s"] for h in kept]
    row: dict[str, Any] = {
        "label": label,
        "workers": workers,
        "steps_per_worker_requested": steps,
        "steps_per_worker": int(np.median([h["steps"] for h in kept])),
        "epochs_measured": len(kept),
        "edges_per_s_per_worker": stats.spread(per_worker),
        "edges_per_s_total": stats.spread([v * workers for v in per_worker]),
        "epoch_time_s": stats.spread([h["epoch_time_s"] for h in kept]),
        # Records from before the estimator had its own timer counted it in the optimizer's.
        "time_s": {TIMER_LABELS[t]: stats.spread([h.get(f"time_{t}_s", 0.0) for h in kept]) for t in TIMERS},
        "bytes_per_step": {
            "embedding": stats.spread([h["embedding_bytes_per_step"] for h in kept]),
            "dense": stats.spread([h["dense_bytes_per_step"] for h in kept]),
            "total": stats.spread([h["embedding_bytes_per_step"] + h["dense_bytes_per_step"] for h in kept]),
        },
        "peak_rss_mb_per_worker": report.get("peak_rss_mb_per_worker", []),
        "valid_recall@20": report.get("valid", {}).get("recall@20"),
    }
    gpu = [h["peak_gpu_mb"] for h in kept if h.get("peak_gpu_mb") is not None]
    row["peak_gpu_mb_rank0"] = max(gpu) if gpu else None
    return row


def _feature_dims(cfg: RunCfg) -> dict[str, int]:
    """Raw feature width of each modality the run uses."""
    from sea_dist.data.store import resolve_store

    store = resolve_store(cfg.data.path, cfg.data.cache_dir)
    return {m: int(store.features(m).shape[1]) for m in cfg.data.modalities or store.modalities}


def _stage_roofline(body: dict[str, Any], scenario: StageScenario, peaks: dict[str, Any], device: str) -> None:
    """The train stage's epoch against the limit, from the record it kept."""
    train = next(s for s in body["stages"] if s["stage"] == "train")
    notes = train["notes_json"]
    cfg = load_config(body["config_file"], body["train_overrides"])
    generated = scenario.data.generate
    assert generated is not None  # a stage scenario generates its data
    dims = {m: w for m, w in generated.modalities.items() if not cfg.data.modalities or m in cfg.data.modalities}
    workers = len(notes["worker_peak_rss_mb"])
    peak = peak_for(peaks, device, worker_threads(workers))
    record = {"steps": notes["steps_per_worker"], **notes}
    train["roofline"] = run_roofline([record], cfg.model, dims, peak, workers, TIMER_LABELS)


def _sampler(cfg: RunCfg, scenario: TrainingScenario) -> dict[str, Any]:
    from sea_dist.train.loop import prepare_data

    spec = scenario.sampler
    assert spec is not None
    data = prepare_data(cfg)
    fanouts = cfg.train.fanouts if cfg.train.mode == "sampled" else [10] * cfg.model.num_layers
    return sampler_throughput(
        data.graph,
        data.item_graph,
        data.features,
        fanouts=list(fanouts),
        sampler=cfg.train.sampler,
        item_fanout=cfg.train.item_fanout,
        num_layers=cfg.model.num_layers,
        item_hops=cfg.graph.item_hops if data.item_graph is not None else 0,
        batch_size=cfg.train.batch_size,
        num_negatives=cfg.train.num_negatives,
        warmup=spec.warmup,
        repeats=spec.repeats,
        steps=spec.steps,
        threads=spec.threads,
        seed=cfg.train.seed,
    )


def _read_embeddings(path: Path) -> torch.Tensor:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    width = column.type.list_size
    return torch.from_numpy(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width).copy())


def _evaluation(
    cfg: RunCfg, run_dir: Path, scenario: TrainingScenario, device: str, peaks: dict[str, Any]
) -> dict[str, Any]:
    """Evaluation throughput on a finished run's final embeddings."""
    from sea_dist.data.store import resolve_store
    from sea_dist.train.loop import store_evaluator

    spec = scenario.eval
    assert spec is not None
    evaluator = store_evaluator(resolve_store(cfg.data.path, cfg.data.cache_dir), cfg, device)
    users = _read_embeddings(run_dir / "embeddings" / "users.parquet")
    items = _read_embeddings(run_dir / "embeddings" / "items.parquet")
    measured = eval_throughput(evaluator, users, items, split=spec.split, warmup=spec.warmup,
                               repeats=spec.repeats, users_sample=spec.users_sample)
    peak = peak_for(peaks, device, torch.get_num_threads())
    return {
        "embeddings_from": run_dir.name,
        **measured,
        "roofline": eval_roofline(measured["pairs_per_s"]["median"], int(items.shape[1]), peak),
    }


def _time_to_accuracy(runs: _Runs, scenario: TrainingScenario, worker_counts: list[int]) -> dict[str, Any]:
    spec = scenario.time_to_accuracy
    assert spec is not None
    common = [
        f"train.epochs={spec.max_epochs}",
        "eval.every=1",
        f"train.patience={spec.max_epochs + 1}",
        f"train.checkpoint_every={spec.max_epochs}",
    ]
    if spec.max_steps_per_epoch is not None:
        common.append(f"train.max_steps_per_epoch={spec.max_steps_per_epoch}")
    sampled_workers = spec.workers or max(worker_counts)
    settings = {"sampled": (sampled_workers, [*common, "train.mode=sampled"])}
    if spec.full_baseline:
        settings["full"] = (1, [*common, "train.mode=full", *spec.full_overrides])
    curves: dict[str, dict[str, Any]] = {}
    for mode, (w, extra) in settings.items():
        label = f"tta-{mode}-w{w}"
        _, history = runs.train(label, w, extra)
        curves[mode] = {
            "label": label,
            "workers": w,
            "epochs": [h["epoch"] for h in history],
            "elapsed_s": [h["elapsed_s"] for h in history],
            "recall@20": [h.get(METRIC, math.nan) for h in history],
            "epoch_time_s": stats.spread([h["epoch_time_s"] for h in history]),
        }
    points = {m: list(zip(c["elapsed_s"], c["recall@20"])) for m, c in curves.items()}
    target = (stats.auto_target(list(points.values())) if spec.target_recall == "auto"
              else float(spec.target_recall))
    reached = {m: stats.time_to_target(p, target) for m, p in points.items()}
    for mode, curve in curves.items():
        curve["time_to_target_s"] = reached[mode]
        curve["best_recall@20"] = max((v for v in curve["recall@20"] if math.isfinite(v)), default=None)
    ratio = (reached["full"] / reached["sampled"]
             if reached.get("full") is not None and reached["sampled"] else None)
    return {
        "metric": METRIC,
        "target": target,
        "target_rule": "auto: 0.9 x the lowest best of the runs" if spec.target_recall == "auto" else "fixed",
        "max_epochs": spec.max_epochs,
        "max_steps_per_epoch": spec.max_steps_per_epoch,
        "clock": "elapsed_s of the per-epoch records: training wall time from the first epoch's "
                 "start, validation included; worker start-up and data loading excluded",
        "runs": curves,
        "full_over_sampled": ratio,
    }
