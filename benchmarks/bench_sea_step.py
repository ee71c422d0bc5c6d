"""One SEA training step (forward and backward) on sampled batches: time, sizes and page faults.

Run from the repository root::

    python -m benchmarks.bench_sea_step            # TikTok, batch 2048, 4 steps (2 warm-up)
    python -m benchmarks.bench_sea_step --store runs/data/million --threads 2 \
        --batch-size 131072 --sampler labor --fanouts 5,5 --item-fanout 2 \
        --set model.embedding_dim=32 --set model.solo_group=1024

Builds what a sampled worker builds (rank 0 of ``--parts``; the store's kNN graph from
``--cache-dir``) and times the model's forward and backward alone (the ID tables with sparse
gradients, as the training loop has them), reporting per step the batch's input nodes and
block edges, wall, user and system CPU time and minor page faults (``getrusage``). Faults are
the figure that does not depend on the machine's load: on this VM first-touching fresh memory
is expensive, so temporaries allocated whole every step show up as system time.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from sea_dist.config import load_config
from sea_dist.graph.loader import MiniBatchLoader
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.models.registry import build_model
from sea_dist.models.tables import sparse_table_gradients
from sea_dist.train.loop import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sea.yaml")
    parser.add_argument("--store", default=None, help="data.path (default: the config's)")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--fanouts", default="10,10")
    parser.add_argument("--sampler", default="neighbor", choices=["neighbor", "labor"])
    parser.add_argument("--item-fanout", default="all")
    parser.add_argument("--parts", type=int, default=2, help="seed-edge parts; rank 0's is used")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="config override key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ["train.mode=sampled", f"data.cache_dir={args.cache_dir}", *args.set]
    if args.store:
        settings += [f"data.path={args.store}", "graph.knn_method=ann"]
    cfg = load_config(args.config, settings)
    data = prepare_data(cfg)
    parts = partition_seed_edges(data.graph, args.parts, method=cfg.train.partition, seed=0)
    item_fanout = args.item_fanout if args.item_fanout == "all" else int(args.item_fanout)
    loader = MiniBatchLoader(
        data.graph, data.item_graph, data.features, mode="sampled",
        fanouts=[int(f) for f in args.fanouts.split(",")], sampler=args.sampler,
        item_fanout=item_fanout, num_layers=cfg.model.num_layers, item_hops=cfg.graph.item_hops,
        batch_size=args.batch_size, num_negatives=1, negatives="train_items", seed=0,
        seed_edges=parts.seed_edges(0), max_steps=args.steps + args.warmup, prefetch=0,
        num_threads=args.threads,
    )  # fmt: skip
    loader.set_epoch(0)
    dims = {m: int(data.features[m].shape[1]) for m in data.modalities}
    model = build_model(cfg.model, data.store.num_users, data.store.num_items, dims, None)
    sparse_table_gradients(model)
    for step, batch in enumerate(loader):  # batches one at a time: at 1M items each is GBs
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model(batch)["loss"].backward()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        model.zero_grad(set_to_none=True)
        sizes = batch.sizes()
        print(
            f"{'warm-up' if step < args.warmup else 'step'} {step}: "
            f"{sizes['input_nodes']:,} input nodes ({sizes['input_items']:,} items), "
            f"{sizes['block_edges']:,} block edges; forward+backward wall {wall * 1e3:.0f} ms, "
            f"user {(after.ru_utime - before.ru_utime) * 1e3:.0f} ms, system "
            f"{(after.ru_stime - before.ru_stime) * 1e3:.0f} ms, "
            f"{after.ru_minflt - before.ru_minflt} minor page faults",
            flush=True,
        )


if __name__ == "__main__":
    main()
