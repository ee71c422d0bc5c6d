"""Stage scenarios: one data set through the whole pipeline, each stage timed on its own.

    sea-dist bench million --out runs/bench/million

Stages, in order, each in a fresh spawned process so that its peak resident memory
(``ru_maxrss``) is its own and one stage's caches do not help the next:

    generate   generate_store: interactions, split, features (data.generate)
    export     the store written as an MMRec directory: the input of ``import``
    import     import_mmrec: parse, validate, copy features, checksums
    graph      build_graph: the training user-item graph (CSC, DGL)
    knn        build_item_graph: per-modality kNN (exact or HNSW), cached for ``train``
    partition  partition_seed_edges into ``stages.workers`` parts (graph rebuilt first;
               ``seconds`` is the partitioning alone, ``process_s`` the whole process)
    train      run_training: one epoch on ``stages.workers`` Ray workers, as configured
               (``max_steps_per_epoch`` caps the epoch; see ``notes``), validation on an
               ``eval_users_sample`` user sample; ``seconds`` is the whole run (Ray start,
               data loading in every worker, the epoch, evaluation, checkpoint, embeddings)
    evaluate   evaluate_run on the test split: the best checkpoint reloaded, full-graph
               embeddings, exact ranking of an ``eval_users_sample`` user sample

Peak memory of ``train`` is the driver's; each Ray worker's own peak is in ``notes`` and in
``results.json`` (``worker_peak_rss_mb``). Ray's own daemons are not counted.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from pathlib import Path
from typing import Any

from sea_dist.bench.scenario import StageScenario, resolve_relative
from sea_dist.errors import SeaDistError

log = logging.getLogger(__name__)

STAGES = ("generate", "export", "import", "graph", "knn", "partition", "train", "evaluate")


def _load(spec: dict[str, Any]) -> Any:
    from sea_dist.config import load_config

    return load_config(spec["config_file"], spec["overrides"])


def _stage(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one stage in this (child) process; returns its figures (``seconds`` included)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(spec["work"])
    start = time.perf_counter()
    notes: dict[str, Any] = {}
    if name == "generate":
        from sea_dist.data.synthetic import generate_store

        g = spec["generate"]
        store = generate_store(work / "generated", g["users"], g["items"], g["interactions"],
                               g["modalities"], g["seed"], progress=False,
                               feature_dtype=g["feature_dtype"])
        notes = {"interactions": store.meta["num_interactions"]}
    elif name == "export":
        from sea_dist.data.mmrec import export_mmrec
        from sea_dist.data.store import open_store

        export_mmrec(open_store(work / "generated"), work / "mmrec")
    elif name == "import":
        from sea_dist.data.mmrec import import_mmrec

        store = import_mmrec(work / "mmrec", work / "imported")
        notes = {"users": store.num_users, "items": store.num_items}
    elif name in ("graph", "knn", "partition"):
        from sea_dist.data.store import open_store
        from sea_dist.graph.build import build_graph

        store = open_store(work / "imported")
        if name == "knn":
            from sea_dist.train.loop import store_item_graph

            cfg = _load(spec)
            # The trainer's cache location and key, so that ``train`` finds this graph.
            item_graph = store_item_graph(store, cfg.data.modalities or list(store.modalities), cfg)
            notes = {"nnz": item_graph.nnz, "modalities": item_graph.info["modalities"]}
        else:
            graph = build_graph(store.num_users, store.num_items, *store.edges(0))
            notes = {"train_edges": graph.num_edges, "structure_bytes": graph.structure_bytes()}
            if name == "partition":
                from sea_dist.graph.partition import partition_seed_edges

                part_start = time.perf_counter()
                part = partition_seed_edges(graph, spec["workers"], method=spec["partition"], seed=0)
                notes = {"method": part.method, "parts": part.num_parts,
                         **{k: v for k, v in part.stats.items() if k != "seconds"}}
                seconds = time.perf_counter() - part_start
                return {"seconds": seconds, "process_s": time.perf_counter() - start, "notes": notes}
    elif name == "train":
        import ray

        from sea_dist.train.trainer import run_training

        try:
            report = run_training(_load(spec), work / "train", workers=spec["workers"], progress=False)
        finally:
            ray.shutdown()
        history = json.loads((work / "train" / "metrics.jsonl").read_text().splitlines()[-1])
        notes = {
            "steps_per_worker": history["steps"],
            "epoch_time_s": history["epoch_time_s"],
            "train_edges_per_s_total": history["train_edges_per_s"] * spec["workers"],
            **{k: history[k] for k in history if k.startswith("time_")},
            "embedding_bytes_per_step": history["embedding_bytes_per_step"],
            "dense_bytes_per_step": history["dense_bytes_per_step"],
            "step_sizes": history["step_sizes"],
            "worker_peak_rss_mb": report["peak_rss_mb_per_worker"],
            "valid_recall@20_sample": report["valid"].get("recall@20"),
            "wall_time_s_in_loop": report["wall_time_s"],
        }
    elif name == "evaluate":
        from sea_dist.train.loop import evaluate_run

        metrics = evaluate_run(work / "train", split="test", users_sample=spec["eval_users_sample"])
        notes = {"users": int(metrics["num_users"]), "recall@20": metrics.get("recall@20"),
                 "recall@20_ci95": metrics.get("recall@20_ci95")}
    else:
        raise ValueError(f"unknown stage {name!r}")
    return {"seconds": time.perf_counter() - start, "notes": notes}


def _child(name: str, spec: dict[str, Any], results: mp.Queue) -> None:
    import resource

    try:
        out = _stage(name, spec)
    except BaseException as exc:  # reported to the parent, which raises
        results.put({"error": f"{type(exc).__name__}: {exc}"})
        raise
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put(out)


def run_stage(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run stage ``name`` in a spawned process; its figures plus peak RSS."""
    from sea_dist.bench.measure import run_spawned

    wall = time.perf_counter()
    result = run_spawned(_child, (name, spec), f"stage {name}")
    if "error" in result:
        raise SeaDistError(f"stage {name} failed: {result['error']}")
    result.setdefault("process_s", time.perf_counter() - wall)
    return {"stage": name, **result}


def _notes_text(name: str, notes: dict[str, Any]) -> str:
    if name == "train":
        return (f"{notes['steps_per_worker']} steps/worker, epoch {notes['epoch_time_s']:.0f} s, "
                f"{notes['train_edges_per_s_total']:.0f} seed edges/s; worker peak RSS "
                f"{', '.join(f'{m:.0f}' for m in notes['worker_peak_rss_mb'])} MB")
    if name == "evaluate":
        return f"{notes['users']} users, Recall@20 {notes['recall@20']:.4f}"
    if name == "knn":
        return "; ".join(f"{m.get('method')} {m.get('seconds', 0):.0f} s"
                         + (f" recall {m['recall']:.3f}" if "recall" in m else "")
                         for m in notes["modalities"])
    if name == "partition":
        return (f"{notes['method']} x{notes['parts']}: edge cut {notes['edge_cut_fraction']:.3f}, "
                f"seed-edge balance {notes['seed_edge_balance']:.3f}")
    if name == "graph":
        return f"{notes['train_edges']} training edges, {notes['structure_bytes'] / 2**20:.0f} MiB"
    return ", ".join(f"{k} {v}" for k, v in notes.items())


def run_stages(
    scenario: StageScenario,
    scenario_file: Path,
    out: Path,
    *,
    workers: list[int] | None,
    device: str,
    overrides: list[str],
    address: str | None,
) -> dict[str, Any]:
    """All stages of ``scenario`` into ``out/work``; the data is removed unless keep_data."""
    if scenario.data.generate is None:
        raise SeaDistError(f"{scenario_file}: a stage scenario needs data.generate")
    if address:
        raise SeaDistError("stage scenarios run on a local Ray cluster; drop --address")
    spec_workers = max(workers) if workers else scenario.stages.workers
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)  # stages time fresh work: nothing may be reused
    work.mkdir(parents=True)
    train_sets = [
        *scenario.overrides,
        f"data.path={work / 'imported'}",
        f"data.cache_dir={work / 'cache'}",
        f"train.device={device}",
        "train.epochs=1",
        f"eval.users_sample={scenario.stages.eval_users_sample}",
        *overrides,
    ]
    spec = {
        "work": str(work),
        "generate": scenario.data.generate.model_dump(),
        "config_file": str(resolve_relative(scenario_file, scenario.config)),
        "overrides": train_sets,
        "workers": spec_workers,
        "partition": scenario.stages.partition,
        "eval_users_sample": scenario.stages.eval_users_sample,
    }
    rows = []
    try:
        for name in STAGES:
            log.info("stage %s", name)
            row = run_stage(name, spec)
            row["notes_text"] = _notes_text(name, row["notes"])
            print(f"{name}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB; "
                  f"{row['notes_text']}", flush=True)
            rows.append(row)
        sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                 for p in work.iterdir() if p.is_dir()}
    finally:
        if not scenario.stages.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row["notes"], row["notes_json"] = row.pop("notes_text"), row["notes"]
    g = scenario.data.generate
    return {
        "what": (f"{g.items:,} items, {g.users:,} users, {g.interactions:,} interactions "
                 f"(features {dict(g.modalities)}, {g.feature_dtype}); {spec_workers} worker(s); "
                 f"evaluation on a {scenario.stages.eval_users_sample:,}-user sample."),
        "config_file": spec["config_file"],
        "train_overrides": train_sets,
        "disk_bytes": sizes,
        "stages": rows,
    }
