"""One SEA training step (forward and backward) on TikTok's sampled batches: time and page faults.

Run from the repository root::

    python -m benchmarks.bench_sea_step            # batch 2048, 6 batches (2 warm-up)

Builds what a sampled worker builds (rank 0 of 2, fanouts 10/10, one item hop) and times the
model's forward and backward alone, reporting wall, user and system CPU time and minor page
faults per step (``getrusage``). Faults are the figure that does not depend on the machine's
load: on this VM first-touching fresh memory is expensive, so temporaries that are allocated
whole every step (an ``[N, N]`` logits matrix and its gradients) show up as system time.
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
from sea_dist.train.loop import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sea.yaml")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, ["train.mode=sampled"])
    data = prepare_data(cfg)
    parts = partition_seed_edges(data.graph, 2, method=cfg.train.partition, seed=0)
    loader = MiniBatchLoader(
        data.graph, data.item_graph, data.features, mode="sampled", fanouts=[10, 10],
        num_layers=cfg.model.num_layers, item_hops=cfg.graph.item_hops,
        batch_size=args.batch_size, num_negatives=1, negatives="train_items", seed=0,
        seed_edges=parts.seed_edges(0), max_steps=args.steps + 2, num_threads=1,
    )  # fmt: skip
    loader.set_epoch(0)
    batches = list(loader)
    dims = {m: int(data.features[m].shape[1]) for m in data.modalities}
    model = build_model(cfg.model, data.store.num_users, data.store.num_items, dims, None)
    for batch in batches[:2]:  # warm-up
        model(batch)["loss"].backward()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for batch in batches[2:]:
        model(batch)["loss"].backward()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    n = len(batches) - 2
    print(
        f"SEA forward+backward per step: wall {wall / n * 1e3:.0f} ms, user "
        f"{(after.ru_utime - before.ru_utime) / n * 1e3:.0f} ms, system "
        f"{(after.ru_stime - before.ru_stime) / n * 1e3:.0f} ms, "
        f"{(after.ru_minflt - before.ru_minflt) / n:.0f} minor page faults"
    )


if __name__ == "__main__":
    main()
