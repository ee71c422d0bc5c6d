"""Sampler throughput, block sizes, partition quality and graph memory on real and generated data.

Run from the repository root::

    python -m benchmarks.bench_sampler                       # baby, gowalla, synth-1m
    python -m benchmarks.bench_sampler --datasets baby --steps 20

For each data set: build the training graph (and an item kNN graph where there are item
features), then time sampled BPR minibatches (batch 2048, one negative, fanouts 10/10, one
item hop) end to end through :class:`MiniBatchLoader`, with one and two DGL sampling threads,
plus a per-stage breakdown; record block sizes; partition with METIS and at random into 2 and 4
parts. ``--ray-share`` also measures what a second Ray worker on the node pays for the graph
structure when it is shared through the object store.

Data: baby and gowalla are read from ``../shared/data``; baby has no item features on this
machine, so it gets random stand-in features (128-d "image", 64-d "text") for the item graph;
gowalla is a check-in graph and is sampled without an item graph. ``synth-1m`` is a generated
store (1M items, 300k users, 6M interactions, 128-d image + 64-d text features, float16), made
once with :func:`sea_dist.data.synthetic.generate_store` under ``--data-dir``; its item graph
is built with the HNSW index; its build time and recall against exact search are recorded
under the data set's ``data.item_graph``.

Results go to ``benchmarks/results/sampler.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.csv as pv
import torch

from sea_dist.bench.measure import machine
from sea_dist.graph.build import UserItemGraph, build_graph
from sea_dist.graph.knn import ItemGraph, build_item_graph
from sea_dist.graph.loader import MiniBatchLoader, gather_rows
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.graph.sampler import BlockSampler, negative_pool, output_nodes_for, sample_negatives
from sea_dist.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def read_mmrec(name: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``(num_users, num_items, train users, train items)`` of a shared MMRec data set."""
    table = pv.read_csv(SHARED / name / f"{name}.inter", parse_options=pv.ParseOptions(delimiter="\t"),
                        convert_options=pv.ConvertOptions(include_columns=["userID", "itemID", "x_label"]))
    users = table["userID"].to_numpy().astype(np.int64)
    items = table["itemID"].to_numpy().astype(np.int64)
    train = table["x_label"].to_numpy() == 0
    return int(users.max()) + 1, int(items.max()) + 1, users[train], items[train]


def synthetic_store(data_dir: Path) -> Any:
    from sea_dist.data.store import open_store
    from sea_dist.data.synthetic import generate_store

    path = data_dir / "synth-1m"
    if (path / "meta.json").is_file():
        return open_store(path)
    return generate_store(path, num_users=300_000, num_items=1_000_000, num_interactions=6_000_000,
                          modalities={"image": 128, "text": 64}, seed=0, progress=False,
                          feature_dtype="float16")


def load(name: str, data_dir: Path, knn_cache: Path) -> tuple[UserItemGraph, ItemGraph | None, dict[str, np.ndarray], dict[str, Any]]:
    """The graph, item graph and features of one benchmark data set, with build timings."""
    info: dict[str, Any] = {}
    if name == "synth-1m":
        store = synthetic_store(data_dir)
        num_users, num_items = store.num_users, store.num_items
        users, items = store.edges(0)
        features = {m: store.features(m) for m in store.modalities}
        cache_key = f"{store.checksum}-{'+'.join(features)}"
    else:
        num_users, num_items, users, items = read_mmrec(name)
        features, cache_key = {}, None
        if name == "baby":  # stand-in features: the real ones are not on this machine
            rng = np.random.default_rng(0)
            features = {"image": rng.standard_normal((num_items, 128), dtype=np.float32),
                        "text": rng.standard_normal((num_items, 64), dtype=np.float32)}
    start = time.perf_counter()
    graph = build_graph(num_users, num_items, users, items)
    info["graph_build_s"] = time.perf_counter() - start
    item_graph = None
    if features:
        start = time.perf_counter()
        item_graph = build_item_graph(features, None, 10, "auto", 200_000,
                                      cache_dir=knn_cache, cache_key=cache_key)
        info["item_graph_build_s"] = time.perf_counter() - start
        info["item_graph"] = item_graph.info
    info.update(num_users=num_users, num_items=num_items, train_interactions=graph.num_edges,
                structure_bytes=graph.structure_bytes(),
                structure_bytes_per_interaction=graph.structure_bytes() / graph.num_edges)
    return graph, item_graph, features, info


def percentiles(times: list[float]) -> dict[str, float]:
    return {"p50_s": float(np.percentile(times, 50)), "p90_s": float(np.percentile(times, 90))}


def time_loader(graph: UserItemGraph, item_graph: ItemGraph | None, features: dict[str, np.ndarray],
                threads: int, prefetch: int, steps: int, batch_size: int) -> dict[str, Any]:
    """End-to-end minibatches per second through the loader (the consumer does nothing)."""
    loader = MiniBatchLoader(graph, item_graph, features, mode="sampled", fanouts=[10, 10], num_layers=2,
                             item_hops=1 if item_graph is not None else 0, batch_size=batch_size,
                             num_negatives=1, seed=0, prefetch=prefetch, max_steps=steps + 2,
                             num_threads=threads)
    times, sizes = [], []
    tick = time.perf_counter()
    for step, batch in enumerate(loader):
        now = time.perf_counter()
        if step >= 2:  # warm-up: DGL's id map, page cache
            times.append(now - tick)
            sizes.append({
                "output_nodes": len(batch.output_nodes),
                "input_nodes": len(batch.input_nodes),
                "input_items": int(batch.input_is_item.sum()),
                "block_edges": [b.num_edges for b in batch.blocks],
                "block_src_dst": [[len(b.src_nodes), b.num_dst] for b in batch.blocks],
                "item_graph_edges": batch.item_graph.num_edges if batch.item_graph is not None else 0,
                "feature_bytes": sum(f.numel() * f.element_size() for f in batch.item_features.values()),
            })
        tick = time.perf_counter()
    mean_sizes = {key: np.mean([s[key] for s in sizes], axis=0).tolist() for key in sizes[0]}
    return {"threads": threads, "prefetch": prefetch, "steps": len(times), "batch_size": batch_size,
            "seed_edges_per_s": batch_size * len(times) / sum(times), **percentiles(times),
            "mean_sizes": mean_sizes}


def time_stages(graph: UserItemGraph, item_graph: ItemGraph | None, features: dict[str, np.ndarray],
                steps: int, batch_size: int) -> dict[str, float]:
    """Mean seconds per batch of each sampling stage (one thread)."""
    import dgl

    dgl.utils.set_num_threads(1)
    sampler = BlockSampler(graph, [10, 10])
    rng = np.random.default_rng(0)
    pool = negative_pool(graph, "train_items")  # the training default
    totals = dict.fromkeys(("negatives", "output_nodes", "blocks", "features"), 0.0)
    for _ in range(steps):
        edge_ids = rng.choice(graph.num_edges, batch_size, replace=False)
        t0 = time.perf_counter()
        users = graph.edge_users(edge_ids)
        neg = sample_negatives(graph, users, 1, rng, pool)
        t1 = time.perf_counter()
        output, _ = output_nodes_for(graph.num_users, users, graph.edge_items(edge_ids), neg, item_graph)
        t2 = time.perf_counter()
        input_nodes, _ = sampler.sample(output)
        t3 = time.perf_counter()
        rows = (input_nodes[input_nodes >= graph.num_users] - graph.num_users).numpy()
        for feat in features.values():
            gather_rows(feat, rows)
        t4 = time.perf_counter()
        for key, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[key] += dt
    return {f"{key}_s": value / steps for key, value in totals.items()}


def partitions(graph: UserItemGraph) -> list[dict[str, Any]]:
    out = []
    for parts in (2, 4):
        for method in ("random", "metis"):
            result = partition_seed_edges(graph, parts, method=method, seed=0)
            out.append({"method": method, "parts": parts, **result.stats})
            print(f"  partition {method} x{parts}: cut {result.stats['edge_cut_fraction']:.3f}, "
                  f"seed-edge balance {result.stats['seed_edge_balance']:.3f}, {result.stats['seconds']:.1f}s",
                  flush=True)
    return out


def ray_share(graph: UserItemGraph) -> dict[str, Any]:
    """Per-worker private memory for the graph when it comes from Ray's object store."""
    import ray

    @ray.remote(num_cpus=1)
    def worker(ref_list: list[Any]) -> dict[str, Any]:
        proc = psutil.Process()
        before = proc.memory_full_info().uss
        shared = ray.get(ref_list[0])
        after_get = proc.memory_full_info().uss
        sampler = BlockSampler(shared, [10, 10])
        sampler.sample(np.arange(0, shared.num_nodes, max(1, shared.num_nodes // 4096)))
        after_sample = proc.memory_full_info().uss
        return {"read_only": not shared.indices.flags.writeable,
                "uss_after_get_mb": (after_get - before) / 2**20,
                "uss_after_dgl_graph_and_sample_mb": (after_sample - before) / 2**20}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ref = ray.put(graph)
        results = ray.get([worker.remote([ref]) for _ in range(2)])
    finally:
        ray.shutdown()
    return {"structure_mb": graph.structure_bytes() / 2**20, "workers": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["baby", "gowalla", "synth-1m"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "runs" / "bench_sampler")
    parser.add_argument("--ray-share", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "sampler.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = {"batch_size": args.batch_size, "fanouts": [10, 10], "num_negatives": 1, "knn_k": 10, "item_hops": 1}
    # Data sets measured earlier on this machine with this config are kept, so that one data
    # set can be (re)measured alone.
    report: dict[str, Any] = {"machine": machine(), "config": config, "datasets": {}}
    if args.out.is_file():
        earlier = json.loads(args.out.read_text())
        if earlier.get("config") == config and earlier.get("machine") == report["machine"]:
            report["datasets"] = earlier["datasets"]
    for name in args.datasets:
        print(f"{name}: loading", flush=True)
        graph, item_graph, features, info = load(name, args.data_dir, args.data_dir / "knn")
        entry: dict[str, Any] = {"data": info}
        entry["loader"] = [time_loader(graph, item_graph, features, threads, prefetch, args.steps, args.batch_size)
                           for threads, prefetch in ((1, 0), (2, 0), (1, 2))]
        for run in entry["loader"]:
            print(f"  threads {run['threads']} prefetch {run['prefetch']}: {run['seed_edges_per_s']:.0f} "
                  f"seed edges/s, p50 {run['p50_s'] * 1e3:.0f} ms", flush=True)
        entry["stages"] = time_stages(graph, item_graph, features, args.steps, args.batch_size)
        print(f"  stages: {entry['stages']}", flush=True)
        entry["partitions"] = partitions(graph)
        if args.ray_share:
            entry["ray_share"] = ray_share(graph)
            print(f"  ray share: {entry['ray_share']}", flush=True)
        entry["peak_rss_mb_so_far"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        entry["measured"] = time.strftime("%Y-%m-%d")
        report["datasets"][name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
