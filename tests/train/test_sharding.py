"""Row-sharded ID tables train exactly as replicated ones, on 2 and 3 real gloo processes.

Each case spawns ``world`` processes that train the same model on the same per-rank sampled
batches twice over: with replicated tables (row-sparse gradient sync) and with row-sharded ones
(all-to-all lookups). Each run writes its checkpoint as the training loop does (sharded: every
rank its rows of the tables and moments, through DCP), the test reads it back whole in one
process, as ``sea-dist evaluate`` does, and compares; resumed runs start from such checkpoints
on another number of workers.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sea_dist.config import LightGCNCfg, SEACfg
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import build_item_graph
from sea_dist.graph.loader import MiniBatchLoader
from sea_dist.graph.partition import partition_seed_edges
from sea_dist.models.registry import build_model
from sea_dist.models.tables import sparse_table_gradients
from sea_dist.data.store import open_store
from sea_dist.train.checkpoint import load_checkpoint, save_checkpoint, save_tables
from sea_dist.train.loop import _load_training_state, _training_state
from sea_dist.train.optim import build_optimizers, fit_estimator
from sea_dist.train.sharding import shard_tables
from sea_dist.train.sparse_sync import sync_sparse_grads
from tests.ranks import run_ranks

STEPS = 4
CFGS = {
    "lightgcn": LightGCNCfg(embedding_dim=16),
    "sea": SEACfg(embedding_dim=8, feature_hidden=16, estimator_steps=2),
}


def _worker(
    rank: int,
    world: int,
    store_path: str,
    model_name: str,
    sharded: bool,
    result: str,
    start: str | None,
) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from sea_dist.train.loop import _dense_parameters

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
    tables = shard_tables(model, rank, world) if sharded else {}
    sparse_table_gradients(model)  # what the loop does: replicated tables send sparse grads
    optimizers = build_optimizers(model, lr=1e-2, estimator_lr=1e-3, sparse_tables=True)
    if start:  # this rank's rows of whatever layout the checkpoint has
        _load_training_state(model, optimizers, tables, load_checkpoint(start), start)
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
    state, rows = _training_state(model, optimizers, tables)
    if rows:
        save_tables(result, rows)
    if rank == 0:
        save_checkpoint(result, state, "")


def _train(
    tmp_path: Path,
    store: Path,
    model_name: str,
    world: int,
    sharded: bool,
    start: Path | None = None,
) -> tuple[dict, Path]:
    """Train, and return the checkpoint read whole (as :func:`_read_whole`) and its directory."""
    layout = "sharded" if sharded else "replicated"
    out = tmp_path / f"{model_name}-{world}-{layout}-from-{start.name if start else 'init'}"
    run_ranks(
        _worker,
        world,
        str(store),
        model_name,
        sharded,
        str(out),
        str(start) if start else None,
        timeout_s=180,
    )
    return _read_whole(out, store, model_name), out


def _read_whole(directory: Path, store_path: Path, model_name: str) -> dict:
    """A checkpoint loaded into an unsharded model and optimizers, in this one process."""
    store = open_store(store_path)
    dims = {m: int(store.features(m).shape[1]) for m in store.modalities}
    model = build_model(CFGS[model_name], store.num_users, store.num_items, dims)
    optimizers = build_optimizers(model, lr=1e-2, estimator_lr=1e-3, sparse_tables=True)
    _load_training_state(model, optimizers, {}, load_checkpoint(directory), directory)
    opts = {f"{name}_opt": opt.state_dict() for name, opt in optimizers.items() if opt is not None}
    return {"model": model.state_dict(), "tables": opts.pop("tables_opt"), **opts}


def _replicated_layout(whole: dict, directory: Path) -> Path:
    """``whole`` written as a checkpoint of replicated tables (the format before sharding)."""
    optimizers = {k.removesuffix("_opt"): v for k, v in whole.items() if k != "model"}
    save_checkpoint(directory, {"model": whole["model"], "optimizers": optimizers}, "")
    return directory


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
    replicated, _ = _train(tmp_path, train_store, model_name, world, sharded=False)
    sharded, out = _train(tmp_path, train_store, model_name, world, sharded=True)
    _assert_same(sharded["model"], replicated["model"])
    _assert_same_optimizer(sharded["tables"], replicated["tables"])
    start = build_model(CFGS[model_name], 300, 200, {"image": 32, "text": 24})
    assert not torch.equal(
        start.state_dict()[next(iter(sharded["model"]))],
        sharded["model"][next(iter(sharded["model"]))],
    )
    # Every rank wrote its own rows; rank 0 wrote neither whole tables nor their moments.
    assert sorted(p.name for p in (out / "tables").glob("*.distcp")) == [
        f"__{r}_0.distcp" for r in range(world)
    ]
    dense = load_checkpoint(out)
    assert all(key not in dense["model"] for key in dense["sharded_tables"])
    assert all(set(entry) == {"step"} for entry in dense["optimizers"]["tables"]["state"].values())


def _assert_identical(a: dict, b: dict) -> None:
    """Two whole checkpoints (as :func:`_read_whole` returns) agree to 1e-6 everywhere."""
    torch.testing.assert_close(a["model"], b["model"], atol=1e-6, rtol=0)
    for name in a.keys() - {"model"}:
        assert a[name]["state"].keys() == b[name]["state"].keys(), name
        torch.testing.assert_close(a[name]["state"], b[name]["state"], atol=1e-6, rtol=0, msg=name)


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_two_worker_checkpoint_resumes_on_three_and_one(train_store: Path, tmp_path: Path) -> None:
    # SEA: tables, a dense Adam and the CLUB estimator's, all in one checkpoint.
    two, two_dir = _train(tmp_path, train_store, "sea", 2, sharded=True)
    whole = _replicated_layout(two, tmp_path / "two-whole")
    # From the 2-worker DCP checkpoint (resharded on load) and from the same state in the
    # replicated layout (which test_sharded_tables_train_as_replicated ties to replicated
    # training), 3 sharded workers continue identically, and so does 1 worker.
    for world, sharded in ((3, True), (1, False)):
        resharded, _ = _train(tmp_path, train_store, "sea", world, sharded, start=two_dir)
        from_whole, _ = _train(tmp_path, train_store, "sea", world, sharded, start=whole)
        _assert_identical(resharded, from_whole)
        assert int(resharded["tables"]["state"][0]["step"]) == 2 * STEPS
        key = "user_weight.weight"
        assert not torch.equal(resharded["model"][key], two["model"][key])  # it trained on
