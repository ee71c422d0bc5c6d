"""Per-worker memory of the read-only training data: built by every worker, or shared per node.

Run from the repository root::

    sea-dist data generate runs/data/mid --users 200000 --items 50000 --interactions 2000000 \\
        --modalities image:128,text:64
    python -m benchmarks.bench_shared runs/data/mid --mode shared   # the driver shares (now)
    python -m benchmarks.bench_shared runs/data/mid --mode build    # every worker builds (before)

``P`` Ray actors (default 2) on one node each do the set-up part of a training worker, SEA in
sampled mode: ``build`` as workers did before :mod:`sea_dist.train.shared` (``prepare_data``
and the seed-edge partition in every worker), ``shared`` as they do now (the driver builds and
``ray.put`` s once, each worker ``receive_training_data``). Then each builds the minibatch
loader and the evaluation's full-graph batch, samples ``--steps`` batches and multiplies the
full ``A_hat`` and item-hop blocks by a vector, so every page of the structures is touched, as
training and evaluation touch them. ``build`` only uses functions that exist before and after
the change, so running it with ``PYTHONPATH`` on an older checkout measures the old code.

Per worker, the growth over its state before set-up (all workers alive, so PSS splits shared
pages between them): RSS (counts shared pages once touched), USS (pages only this process maps:
the private cost) and PSS (private + shared / number of mappers), from psutil's
``memory_full_info``. Results go to ``--out`` (JSON) and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import psutil
import ray
import torch

from sea_dist.config import load_config
from sea_dist.graph.loader import MiniBatchLoader, full_graph_batch
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.train.loop import prepare_data

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


def _memory() -> dict[str, float]:
    info = psutil.Process().memory_full_info()
    return {
        "rss_mb": info.rss / MB,
        "uss_mb": info.uss / MB,
        "pss_mb": info.pss / MB,
        "shared_mb": info.shared / MB,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


@ray.remote(num_cpus=0)
class _Worker:
    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.keep: list[Any] = []
        self.start = _memory()
        self.stages: dict[str, dict[str, float]] = {}

    def setup(self, mode: str, cfg_json: dict, shared: Any, rank: int, world: int, steps: int) -> float:
        from sea_dist.config import RunCfg

        cfg = RunCfg.model_validate(cfg_json)
        began = time.perf_counter()
        if mode == "shared":
            from sea_dist.train.shared import receive_training_data

            received = receive_training_data(cfg, shared, rank, world)
            data, seeds, max_edges = received.data, received.seed_edges, received.max_part_edges
        else:
            data = prepare_data(cfg)
            parts = partition_seed_edges(data.graph, world, method=cfg.train.partition, seed=cfg.train.seed)
            seeds, max_edges = parts.seed_edges(rank), parts.max_part_edges
        self.stages["data"] = _memory()
        loader = MiniBatchLoader(
            data.graph, data.item_graph, data.features, mode="sampled", fanouts=cfg.train.fanouts,
            num_layers=cfg.model.num_layers, item_hops=cfg.graph.item_hops,
            batch_size=cfg.train.batch_size, num_negatives=1, seed=rank, seed_edges=seeds,
            max_steps=steps, num_threads=1, steps_per_epoch=-(-max_edges // cfg.train.batch_size),
        )
        full = full_graph_batch(data.graph, data.item_graph, data.features, cfg.graph.item_hops,
                                num_layers=cfg.model.num_layers)
        setup_s = time.perf_counter() - began
        self.stages["loader_and_eval_batch"] = _memory()
        for _ in loader:
            pass
        self.stages["sampled"] = _memory()
        ones = torch.ones(data.graph.num_nodes, 1)
        torch.sparse.mm(full.blocks[0].adj, ones)  # evaluation reads all of A_hat
        if full.item_graph is not None:
            torch.sparse.mm(full.item_graph.adj, ones)
        self.stages["eval_blocks_read"] = _memory()
        self.keep = [data, loader, full]
        return setup_s

    def measure(self) -> dict[str, Any]:
        now = _memory()
        stages = {name: {k: m[k] - self.start[k] for k in m} for name, m in self.stages.items()}
        return {"start": self.start, "end": now, "growth": {k: now[k] - self.start[k] for k in now},
                "growth_by_stage": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--mode", choices=("shared", "build"), required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg = load_config(ROOT / "configs" / "sea.yaml", [
        f"data.path={args.store.resolve()}", f"data.cache_dir={args.cache.resolve()}",
        "train.mode=sampled", f"train.workers={args.workers}",
    ])
    data = prepare_data(cfg)  # the import, verification and kNN caches, as the driver does
    from sea_dist.train.trainer import _connect

    _connect(None, args.workers)
    shared, shared_bytes = None, 0
    if args.mode == "shared":
        from sea_dist.train.shared import share_training_data

        shared = share_training_data(cfg, data)
        arrays = ray.get(shared.arrays)
        shared_bytes = sum(a.nbytes for a in arrays["graph"].values())
        if arrays["item_graph"] is not None:
            shared_bytes += sum(a.nbytes for a in arrays["item_graph"].values())
        shared_bytes += sum(ray.get(ref).nbytes for ref in shared.seed_edges)
        del arrays
    sizes = {"users": data.store.num_users, "items": data.store.num_items,
             "train_edges": data.graph.num_edges, "structure_bytes": data.graph.structure_bytes()}
    del data
    workers = [_Worker.remote() for _ in range(args.workers)]
    cfg_json = cfg.model_dump(mode="json")
    setup_s = ray.get([w.setup.remote(args.mode, cfg_json, shared, r, args.workers, args.steps)
                       for r, w in enumerate(workers)])
    per_worker = ray.get([w.measure.remote() for w in workers])
    result = {
        "mode": args.mode, "workers": args.workers, "steps": args.steps, **sizes,
        "shared_object_bytes": shared_bytes, "setup_s": setup_s, "per_worker": per_worker,
        "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
    }
    for rank, w in enumerate(per_worker):
        g = w["growth"]
        print(f"rank {rank}: growth RSS {g['rss_mb']:.0f} MB, USS {g['uss_mb']:.0f} MB, "
              f"PSS {g['pss_mb']:.0f} MB, peak RSS {g['peak_rss_mb']:.0f} MB; setup {setup_s[rank]:.1f} s")
        for stage, m in w["growth_by_stage"].items():
            print(f"  after {stage}: RSS {m['rss_mb']:.0f}, USS {m['uss_mb']:.0f}, PSS {m['pss_mb']:.0f} MB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
