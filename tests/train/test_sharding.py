"""Row-sharded ID tables train exactly as replicated ones, on 2 and 3 real gloo processes.

Each case spawns ``world`` processes that train the same model on the same per-rank sampled
batches twice over: with replicated tables (row-sparse gradient sync) and with row-sharded ones
(all-to-all lookups); rank 0 saves the full parameters of each, and the test compares them.
"""

from __future__ import annotations

import faulthandler
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sea_dist.config import LightGCNCfg, SEACfg
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.loader import MiniBatchLoader
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.models.registry import build_model
from sea_dist.train.optim import build_optimizers, fit_estimator
from sea_dist.train.sharding import (
    gather_model_state,
    gather_optimizer_state,
    shard_model_state,
    shard_optimizer_state,
    shard_tables,
)
from sea_dist.train.sparse_sync import sync_sparse_grads

STEPS = 4
CFGS = {
    "lightgcn": LightGCNCfg(embedding_dim=16),
    "sea": SEACfg(embedding_dim=8, feature_hidden=16, estimator_steps=2),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(
    rank: int,
    world: int,
    port: int,
    store_path: str,
    model_name: str,
    sharded: bool,
    result: str,
    start: str | None,
) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sea_dist.data.store import open_store
    from sea_dist.train.loop import _dense_parameters

    # A collective that never completes fails the test with every thread's stack, not a hang.
    faulthandler.dump_traceback_later(180, exit=True)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    torch.set_num_threads(1)
    store = open_store(store_path)
    users, items = store.edges(0)
    graph = build_graph(store.num_users, store.num_items, users, items)
    features = {m: store.features(m) for m in store.modalities}
    hops = 0 if model_name == "lightgcn" else 1
    item_graph = (
        None
        if hops == 0
        else build_item_graph(features, None, k=5, method="exact", exact_max_items=10_000)
    )
    torch.manual_seed(0)
    dims = {m: int(f.shape[1]) for m, f in features.items()}
    model = build_model(CFGS[model_name], store.num_users, store.num_items, dims)
    saved = torch.load(start, weights_only=True) if start else None
    if saved:
        model.load_state_dict(saved["model"])
    tables = shard_tables(model, rank, world) if sharded else {}
    if saved and sharded:
        model.load_state_dict(shard_model_state(saved["model"], tables))
    optimizers = build_optimizers(model, lr=1e-2, estimator_lr=1e-3, sparse_tables=True)
    if saved:
        opt_state = saved["tables"]
        if sharded:
            opt_state = shard_optimizer_state(optimizers["tables"], opt_state, tables)
        optimizers["tables"].load_state_dict(opt_state)
        if optimizers["model"] is not None:
            optimizers["model"].load_state_dict(saved["model_opt"])
    dense = {id(p) for p in _dense_parameters(model)}
    ignored = [n for n, p in model.named_parameters() if id(p) not in dense]
    DDP._set_params_and_buffers_to_ignore_for_model(model, ignored)
    net = DDP(model) if dense else model
    parts = partition_seed_edges(graph, world, method="random", seed=0)
    loader = MiniBatchLoader(
        graph,
        item_graph,
        features,
        mode="sampled",
        fanouts=[3, 3],
        num_layers=2,
        item_hops=hops,
        batch_size=64,
        num_negatives=1,
        seed=11 + rank,
        seed_edges=parts.seed_edges(rank),
        prefetch=0,
        steps_per_epoch=STEPS,
    )
    loader.set_epoch(0)
    for step, batch in enumerate(loader):
        torch.manual_seed(1000 * step + rank)  # the models' own draws, the same in both runs
        for opt in optimizers.values():
            if opt is not None:
                opt.zero_grad(set_to_none=True)
        out = net(batch)
        out["loss"].backward()
        if not sharded:
            sync_sparse_grads(model.id_tables())
        fit_estimator(model, out, optimizers["estimator"], 2)
        optimizers["tables"].step()
        if optimizers["model"] is not None:
            optimizers["model"].step()
    if sharded:
        state = gather_model_state(model, tables)
        table_opt = gather_optimizer_state(optimizers["tables"], tables)
    else:
        state, table_opt = model.state_dict(), optimizers["tables"].state_dict()
    if rank == 0:
        model_opt = optimizers["model"].state_dict() if optimizers["model"] is not None else None
        torch.save({"model": state, "tables": table_opt, "model_opt": model_opt}, result)
    # No destroy_process_group: with gloo it can wait on the store that rank 0 hosts, and rank 0
    # may have exited by then. The process exits right here, which tears the groups down.
    dist.barrier()


def _train(
    tmp_path: Path,
    store: Path,
    model_name: str,
    world: int,
    sharded: bool,
    start: Path | None = None,
) -> dict:
    out = tmp_path / f"{model_name}-{world}-{'sharded' if sharded else 'replicated'}.pt"
    mp.spawn(
        _worker,
        args=(
            world,
            _free_port(),
            str(store),
            model_name,
            sharded,
            str(out),
            str(start) if start else None,
        ),
        nprocs=world,
    )
    return torch.load(out, weights_only=True)


# A bias feeding a BatchNorm has a gradient of exactly zero in exact arithmetic (the norm removes
# the mean), so in floating point it gets rounding noise, which Adam scales to lr-sized steps:
# those biases and the running means they shift cannot agree between any two runs.
_NOISE_ONLY = re.compile(r"heads\.\w+\.net\.(0|3)\.bias|running_mean")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if not _NOISE_ONLY.search(key):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=key)


def _assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for index, entry in a["state"].items():
        assert int(entry["step"]) == int(b["state"][index]["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(entry[key], b["state"][index][key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("model_name", ["lightgcn", "sea"])
def test_sharded_tables_train_as_replicated(
    train_store: Path, tmp_path: Path, model_name: str, world: int
) -> None:
    replicated = _train(tmp_path, train_store, model_name, world, sharded=False)
    sharded = _train(tmp_path, train_store, model_name, world, sharded=True)
    _assert_same(sharded["model"], replicated["model"])
    _assert_same_optimizer(sharded["tables"], replicated["tables"])
    start = build_model(CFGS[model_name], 300, 200, {"image": 32, "text": 24})
    assert not torch.equal(
        start.state_dict()[next(iter(sharded["model"]))],
        sharded["model"][next(iter(sharded["model"]))],
    )


def test_two_worker_state_resumes_on_three(train_store: Path, tmp_path: Path) -> None:
    two = _train(tmp_path, train_store, "lightgcn", 2, sharded=True)
    start = tmp_path / "two.pt"
    torch.save(two, start)
    # From the same state, 3 sharded workers continue exactly as 3 replicated ones.
    three_sharded = _train(tmp_path, train_store, "lightgcn", 3, sharded=True, start=start)
    three_replicated = _train(tmp_path, train_store, "lightgcn", 3, sharded=False, start=start)
    _assert_same(three_sharded["model"], three_replicated["model"])
    _assert_same_optimizer(three_sharded["tables"], three_replicated["tables"])
    assert int(three_sharded["tables"]["state"][0]["step"]) == 2 * STEPS
