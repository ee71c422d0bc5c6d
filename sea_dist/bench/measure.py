"""Measurements outside the training loop: sampler and evaluation throughput, the machine.

The training loop times itself (``time_*_s`` per epoch, see :mod:`sea_dist.train.loop`);
what is timed here runs in the benchmark's own process:

- :func:`sampler_throughput`: the sampled-mode :class:`~sea_dist.graph.loader.MiniBatchLoader`
  alone, nothing built ahead (prefetch 0), consumer doing nothing: seed edges per second of the
  sampler, blocks and feature gather included.
- :func:`eval_throughput`: :meth:`~sea_dist.eval.evaluator.Evaluator.evaluate` of given
  embeddings (exact full ranking): users per second and scored pairs per second.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import queue
import resource
import time
from importlib import metadata
from typing import Any, Callable

import numpy as np
import psutil
import torch

from sea_dist.bench.stats import spread
from sea_dist.errors import SeaDistError


def peak_rss_mib() -> float:
    """This process's peak resident memory (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU and library versions of the machine running the bench."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    versions = {}
    for package in ("torch", "dgl", "ray", "numpy", "pyarrow", "pydantic", "faiss-cpu", "sea-dist"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def sampler_throughput(
    graph: Any,
    item_graph: Any,
    features: dict[str, np.ndarray],
    *,
    fanouts: list[Any],
    num_layers: int,
    item_hops: int,
    batch_size: int,
    num_negatives: int,
    warmup: int,
    repeats: int,
    steps: int,
    threads: int = 1,
    seed: int = 0,
    sampler: str = "neighbor",
    item_fanout: Any = "all",
) -> dict[str, Any]:
    """Seed edges per second of the sampled loader: ``repeats`` windows of ``steps`` batches.

    The first ``warmup`` batches (thread start, DGL's id maps, page cache) are not timed.
    """
    from sea_dist.graph.loader import MiniBatchLoader

    loader = MiniBatchLoader(
        graph,
        item_graph,
        features,
        mode="sampled",
        fanouts=fanouts,
        num_layers=num_layers,
        item_hops=item_hops,
        batch_size=batch_size,
        num_negatives=num_negatives,
        seed=seed,
        prefetch=0,
        num_threads=threads,
        sampler=sampler,  # type: ignore[arg-type]
        item_fanout=item_fanout,
    )
    if len(loader) == 0:
        raise ValueError("the loader has no minibatches to time")
    needed = warmup + repeats * steps
    windows: list[float] = []
    input_nodes: list[int] = []
    done, epoch, in_window = 0, 0, 0
    window_start = time.perf_counter()
    while done < needed:  # as many (reshuffled) epochs as the windows need
        loader.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            done += 1
            if done <= warmup:
                window_start = time.perf_counter()
                continue
            in_window += 1
            input_nodes.append(len(batch.input_nodes))
            if in_window == steps:
                now = time.perf_counter()
                windows.append(batch_size * steps / (now - window_start))
                window_start, in_window = now, 0
            if done >= needed:
                break
    return {
        "seed_edges_per_s": spread(windows),
        "batch_size": batch_size,
        "steps_per_window": steps,
        "threads": threads,
        "mean_input_nodes": float(np.mean(input_nodes)) if input_nodes else float("nan"),
    }


def eval_throughput(
    evaluator: Any,
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    *,
    split: str,
    warmup: int,
    repeats: int,
    users_sample: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Users (and user-item pairs) ranked per second by exact full-ranking evaluation.

    ``recall@20`` is that of the last timed pass; ``cuda_peak_mib`` covers the timed passes.
    """
    device = evaluator.device

    def run() -> dict[str, float]:
        metrics = evaluator.evaluate(user_emb, item_emb, split, users_sample=users_sample, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return metrics

    for _ in range(warmup):
        run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds, metrics = [], {}
    for _ in range(repeats):
        start = time.perf_counter()
        metrics = run()
        seconds.append(time.perf_counter() - start)
    users = int(metrics["num_users"])
    return {
        "split": split,
        "users": users,
        "num_items": evaluator.num_items,
        "seconds": spread(seconds),
        "users_per_s": spread([users / s for s in seconds]),
        "pairs_per_s": spread([users * evaluator.num_items / s for s in seconds]),
        "recall@20": metrics.get("recall@20"),
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def run_spawned(target: Callable[..., None], args: tuple[Any, ...], what: str) -> dict[str, Any]:
    """Run ``target(*args, results)`` in a fresh spawned process and return the dict it puts
    on ``results``; a fresh process makes its peak RSS (``ru_maxrss``) its own."""
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    process = context.Process(target=target, args=(*args, results), name=what)
    process.start()
    # Read before join (a full pipe would block the child's exit), but notice a dead child.
    while True:
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                raise SeaDistError(f"{what} died with exit code {process.exitcode}") from None
    process.join()
    return result
