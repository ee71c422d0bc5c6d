"""Per-rank peak memory of computing every node's representation for evaluation: the
full-graph forward every rank used to run, against layer-wise sharded inference.

Run from the repository root::

    python -m benchmarks.bench_inference --users 100000 --items 50000 --interactions 2000000

A generated catalogue (two 128-d modalities) is built once under ``--work`` with its kNN graph
cached; then, each case in fresh spawned processes (one per rank, gloo), SEA at 64-d
(``[N, 128]`` fused rows) computes every node's representation:

- ``full``: ``model.node_embeddings(full_graph_batch(...))``, what every rank ran before;
- ``layerwise`` at P = 1 and 2: :func:`sea_dist.eval.inference.layerwise_embeddings`, each rank
  its share, each chunk fetching its neighbours' rows of the previous layer.

Each process builds its data, graph and model, then resets its peak RSS
(``/proc/self/clear_refs``), so the recorded peak is what was resident plus the inference's
own peak; ``extra_mb`` is the difference, the inference's cost. Results go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sea_dist.bench.measure import machine
from sea_dist.io import atomic_write_text


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _case(rank: int, world: int, port: int, mode: str, work: str, chunk: int, out: str) -> None:
    from sea_dist.config import SEACfg
    from sea_dist.data.store import open_store
    from sea_dist.eval.inference import layerwise_embeddings
    from sea_dist.graph.build import build_graph
    from sea_dist.graph.knn import build_item_graph
    from sea_dist.graph.loader import full_graph_batch
    from sea_dist.graph.slices import GraphSlices
    from sea_dist.models.registry import build_model

    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    torch.set_num_threads(1)
    store = open_store(Path(work) / "store")
    graph = build_graph(store.num_users, store.num_items, *store.edges(0))
    features = {m: store.features(m) for m in store.modalities}
    item_graph = build_item_graph(
        features, weights=None, k=10, method="exact", exact_max_items=10**7,
        cache_dir=Path(work) / "knn", cache_key=store.checksum,
    )
    torch.manual_seed(0)
    cfg = SEACfg(embedding_dim=64)
    dims = {m: int(f.shape[1]) for m, f in features.items()}
    model = build_model(cfg, store.num_users, store.num_items, dims).eval()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    if mode == "full":
        batch = full_graph_batch(graph, item_graph, features, 1, num_layers=cfg.num_layers)
        with torch.no_grad():
            emb = model.node_embeddings(batch)
        rows = emb.shape[0]
    else:
        slices = GraphSlices(graph, item_graph, features, 1)
        sharded = layerwise_embeddings(model, slices, chunk_nodes=chunk)
        rows = len(sharded.users) + len(sharded.items)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM")
    result = {
        "mode": mode, "world": world, "rank": rank, "rows": rows, "seconds": seconds,
        "rss_before_mb": before / 1024, "peak_mb": peak / 1024, "extra_mb": (peak - before) / 1024,
    }
    Path(out, f"{mode}-{world}-{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--chunk-nodes", type=int, default=65536)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_inference"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()

    from sea_dist.data.synthetic import generate_store

    store_dir = args.work / "store"
    if not (store_dir / "meta.json").exists():
        generate_store(
            store_dir, num_users=args.users, num_items=args.items,
            num_interactions=args.interactions, modalities={"image": 128, "text": 128}, seed=0,
            progress=False,
        )
    cases: list[dict[str, Any]] = []
    for mode, world in (("full", 1), ("layerwise", 1), ("layerwise", 2)):
        work = str(args.work)
        port = _free_port()
        mp.spawn(
            _case, args=(world, port, mode, work, args.chunk_nodes, work), nprocs=world, join=True
        )
        files = [args.work / f"{mode}-{world}-{r}.json" for r in range(world)]
        ranks = [json.loads(f.read_text()) for f in files]
        cases.append({"mode": mode, "world": world, "ranks": ranks})
        print(mode, world, [f"{r['extra_mb']:.0f} MB extra, {r['peak_mb']:.0f} MB peak" for r in ranks])
    result = {
        "users": args.users, "items": args.items, "interactions": args.interactions,
        "model": "sea, 64-d, 2 layers, 2 modalities (fused rows 128 wide), item hop 1",
        "chunk_nodes": args.chunk_nodes, "cases": cases, "machine": machine(),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
