"""What every Ray Train worker runs: the one place that wires data, graph, model and eval.

Flow (one worker of ``world_size``):

    the driver's shared arrays (user-item graph, item kNN graph, this rank's seed edges; see
    :mod:`sea_dist.train.shared`) + the store's feature memory maps
      -> MiniBatchLoader -> model (dense params in DDP, ID tables synced row-sparse)
      -> epochs: BPR steps (+ CLUB estimator steps) -> validate -> report + checkpoint
      -> best-valid model -> test -> report.json, embeddings (rank 0)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import math
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sea_dist.config import RunCfg, dump_config
from sea_dist.data.store import Store, resolve_store, verify_store_cached
from sea_dist.errors import CheckpointError, ConfigError, DivergenceError
from sea_dist.eval.evaluator import EarlyStopping, Evaluator
from sea_dist.eval.inference import (
    ShardedEmbeddings,
    all_finite,
    gather_users,
    layerwise_embeddings,
)
from sea_dist.graph.build import build_graph
from sea_dist.graph.knn import ItemGraph, build_item_graph, modality_weights
from sea_dist.graph.loader import MiniBatchLoader
from sea_dist.graph.slices import GraphSlices
from sea_dist.models.base import Recommender
from sea_dist.models.registry import build_model, resolve_item_labels
from sea_dist.models.tables import deferred_tables, sparse_table_gradients
from sea_dist.train.checkpoint import (
    STATE_FILE,
    find_checkpoint,
    load_checkpoint,
    load_tables,
    save_checkpoint,
    save_tables,
)
from sea_dist.train.optim import build_optimizers, fit_estimator
from sea_dist.train.run_files import BEST, CHECKPOINT_SCORE, LOG, RAY_STORAGE, RunFiles
from sea_dist.train.sharding import (
    ShardedIdTable,
    load_sharded_state,
    shard_model_state,
    shard_optimizer_state,
    shard_tables,
    sharded_state,
    take_bytes_sent,
)
from sea_dist.train.shared import TrainingData, receive_training_data
from sea_dist.train.sparse_sync import sync_sparse_grads

log = logging.getLogger(__name__)


def prepare_data(cfg: RunCfg) -> TrainingData:
    """Open (or import) the store and build the graphs; the kNN graph is cached on disk.

    The driver calls this once and shares the result with its workers
    (:mod:`sea_dist.train.shared`), so the import, the content verification, the graph and the
    kNN build happen once per run; ``sea-dist evaluate`` calls it in its own process. Content
    is verified before the kNN graph is built, so a corrupt feature file never reaches its cache.
    """
    store = resolve_store(cfg.data.path, cfg.data.cache_dir)
    verify_store_cached(store, cfg.data.cache_dir)
    modalities = cfg.data.modalities or list(store.modalities)
    unknown = [m for m in modalities if m not in store.modalities]
    if unknown:
        raise ConfigError(
            f"data.modalities: {', '.join(unknown)} not in the store {store.path} "
            f"(has {', '.join(store.modalities) or 'none'})"
        )
    item_graph_weights(cfg, modalities)  # refused even by runs that build no item graph
    users, items = store.edges(0)
    graph = build_graph(store.num_users, store.num_items, users, items)
    features = {m: store.features(m) for m in modalities}
    item_graph = None
    if modalities and cfg.graph.item_hops > 0 and cfg.model.name != "lightgcn":
        item_graph = store_item_graph(store, modalities, cfg)
    return TrainingData(store, modalities, graph, item_graph, features)


def item_graph_weights(cfg: RunCfg, modalities: list[str]) -> dict[str, float]:
    """``graph.modality_weights`` resolved over the run's modalities (see ``modality_weights``).

    Raises:
        ConfigError: a weight names a modality the run does not use, or they cannot sum to 1.
    """
    try:
        return modality_weights(modalities, cfg.graph.modality_weights)
    except ValueError as exc:
        raise ConfigError(f"graph.modality_weights: {exc}") from None


def store_item_graph(store: Store, modalities: list[str], cfg: RunCfg) -> ItemGraph:
    """The item kNN graph of ``store``'s features, cached where every run of it looks."""
    return build_item_graph(
        {m: store.features(m) for m in modalities},
        weights=item_graph_weights(cfg, modalities),
        k=cfg.graph.knn_k,
        method=cfg.graph.knn_method,
        exact_max_items=cfg.graph.knn_exact_max_items,
        cache_dir=Path(cfg.data.cache_dir) / "knn",
        cache_key=f"{store.checksum}-{'+'.join(modalities)}",
    )


def store_evaluator(
    store: Store, cfg: RunCfg, device: str | torch.device = "cpu", ks: list[int] | None = None
) -> Evaluator:
    """Full-ranking evaluator over ``store``'s valid and test splits, training items masked."""
    return Evaluator(
        store.num_users,
        store.num_items,
        train=store.edges(0),
        splits={"valid": store.edges(1), "test": store.edges(2)},
        ks=ks or cfg.eval.k,
        batch_users=cfg.eval.batch_users,
        device=device,
    )


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc only; elsewhere a no-op).

    A step frees thousands of activation buffers, many below glibc's mmap threshold, and the
    heap keeps their pages: a worker's resident memory then stays at its training peak through
    validation, which allocates on top of it. At catalogue scale that is gigabytes per worker.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    gc.collect()
    libc.malloc_trim(0)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _dense_parameters(model: Recommender) -> list[torch.nn.Parameter]:
    """What DDP all-reduces: everything but the row-sparse ID tables and the CLUB estimator."""
    skip = {id(p) for p in model.id_tables()} | {id(p) for p in model.estimator_parameters()}
    return [p for p in model.parameters() if id(p) not in skip]


def _wrap_ddp(model: Recommender, device: torch.device) -> torch.nn.Module:
    """DDP over the dense parameters only: ID tables sync row-sparse, the CLUB estimator
    is fitted per shard and synced in :func:`fit_estimator`."""
    _, world = _world()
    dense = {id(p) for p in _dense_parameters(model)}
    if world == 1 or not dense:
        return model  # nothing to all-reduce densely (one worker, or e.g. LightGCN)
    ignored = [n for n, p in model.named_parameters() if id(p) not in dense]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _dense_bytes_per_step(model: Recommender) -> int:
    """Bytes a ring all-reduce of the dense gradients sends per rank: 2 (n-1)/n of their size."""
    _, world = _world()
    size = sum(p.numel() * p.element_size() for p in _dense_parameters(model))
    return int(2 * (world - 1) / world * size)


def _embeddings(
    model: Recommender, slices: GraphSlices, cfg: RunCfg, device: str | torch.device = "cpu"
) -> ShardedEmbeddings:
    """This rank's users' and every item's final representations, for ranking.

    Recomputed over the full graph, layer by layer and each rank its share of the nodes
    (:mod:`sea_dist.eval.inference`), in eval mode, from the parameters the epoch ended with.
    The reference ranks instead with what its last training forward cached (``result_embed``),
    i.e. from before the epoch's last optimizer step and in training mode; recomputing ranks
    the model that is checkpointed, and works the same when training is sampled (no training
    forward there covers every node).
    """
    return layerwise_embeddings(model, slices, chunk_nodes=cfg.eval.chunk_nodes, device=device)


def _evaluate(
    evaluator: Evaluator, emb: ShardedEmbeddings, split: str, cfg: RunCfg
) -> dict[str, float]:
    """Rank this rank's users against every item (collective: all ranks call it)."""
    sample = cfg.eval.users_sample
    return evaluator.evaluate(
        emb.users, emb.items, split, user_start=emb.user_start, users_sample=sample
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` holds the resolved run config and the run directory."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = RunCfg.model_validate(config["cfg"])
    # Ray Train logs each report's whole metrics dict at INFO through loggers named by file
    # path, under the root logger: quiet the root, keep our own loggers at the driver's level.
    level = int(config.get("log_level", logging.INFO))
    logging.getLogger().setLevel(max(level, logging.WARNING))
    logging.getLogger("sea_dist").setLevel(level)
    rank, world = _world()
    run_dir = Path(config["run_dir"])
    _log_to_run_dir(run_dir, rank)
    log.info("worker started: rank %d of %d", rank, world)
    torch.set_num_threads(int(config.get("threads", 1)))
    device = ray.train.torch.get_device() if cfg.train.device != "cpu" else torch.device("cpu")
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    # The graphs, seed edges and labels the driver built once, mapped from the node's object
    # store (read-only, shared by the node's workers); features stay the store's memory maps.
    received = receive_training_data(cfg, config["shared"], rank, world)
    data = received.data
    store = data.store
    loader = MiniBatchLoader(
        data.graph,
        data.item_graph,
        data.features,
        mode=cfg.train.mode,
        fanouts=cfg.train.fanouts,
        sampler=cfg.train.sampler,
        item_fanout=cfg.train.item_fanout,
        num_layers=cfg.model.num_layers,
        item_hops=cfg.graph.item_hops,
        batch_size=cfg.train.batch_size,
        num_negatives=cfg.train.num_negatives,
        negatives=cfg.train.negatives,
        seed=cfg.train.seed + 7919 * rank,
        seed_edges=received.seed_edges,
        max_steps=cfg.train.max_steps_per_epoch,
        num_threads=cfg.train.sampling_threads,
        prefetch=cfg.train.prefetch,
        # DDP collectives must line up: every rank takes as many steps as the largest part.
        steps_per_epoch=(
            math.ceil(received.max_part_edges / cfg.train.batch_size) if world > 1 else None
        ),
    )
    slices = GraphSlices(data.graph, data.item_graph, data.features, cfg.graph.item_hops)
    evaluator = store_evaluator(store, cfg, device)
    dims = {m: int(data.features[m].shape[1]) for m in data.modalities}
    labels = received.labels  # SGFD only
    shard = cfg.train.tables == "row_sharded" and world > 1
    # Sharded: the tables are built empty and every rank draws its own rows only.
    with deferred_tables() if shard else contextlib.nullcontext():
        model = build_model(cfg.model, store.num_users, store.num_items, dims, labels)
    sharded = shard_tables(model, rank, world) if shard else {}
    model = model.to(device)
    # Sampled steps touch few table rows: sparse grads + SparseAdam. Full-graph steps touch
    # every row anyway, so they keep the reference's dense Adam.
    sparse_tables = cfg.train.mode == "sampled"
    if sparse_tables:
        sparse_table_gradients(model)  # sharded tables already return sparse gradients
    optimizers = build_optimizers(
        model,
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        estimator_lr=getattr(cfg.model, "estimator_lr", None),
        sparse_tables=sparse_tables,
    )
    stopper = EarlyStopping(metric=cfg.eval.metric, patience=cfg.train.patience)
    start_epoch, wall_before = 0, 0.0

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_checkpoint(ckpt_dir, map_location=device)

            def restore() -> None:
                _load_training_state(model, optimizers, sharded, state, ckpt_dir)
                stopper.load_state_dict(state["stopper"])

            _restore(ckpt_dir, restore)
        start_epoch = int(state["epoch"]) + 1
        wall_before = float(state["wall_time_s"])
        if rank == 0:
            log.info("resumed from epoch %d", state["epoch"])
    files = RunFiles(run_dir, first_epoch=start_epoch)

    net = _wrap_ddp(model, device)
    files.write_pid(rank, ray.get_runtime_context().get_node_id())
    dense_bytes = _dense_bytes_per_step(model)
    tables = model.id_tables()
    table_bytes = sum(p.numel() * p.element_size() for p in tables)
    # The wall clock starts with the driver's run (as its progress bar does), not this worker.
    started = time.perf_counter() - (time.time() - float(config.get("started_at", time.time())))
    setup_peak_mb = _peak_rss_mb()  # data, model, optimizers: before any step
    for epoch in range(start_epoch, cfg.train.epochs):
        loader.set_epoch(epoch)
        # Model randomness (CLUB's shuffles, dropout) draws as many numbers as a rank's batch
        # has rows, so each rank's stream is its own; seeding it per (epoch, rank) makes a
        # restart from any epoch's checkpoint replay exactly what an uninterrupted run draws.
        torch.manual_seed(int(np.random.SeedSequence([cfg.train.seed, epoch, rank]).generate_state(1)[0]))
        timers = dict.fromkeys(("sample", "move", "forward_backward", "sync", "estimator", "optimizer"), 0.0)
        sizes: Counter[str] = Counter()  # batch sizes summed over steps: the bench's cost model
        steps, edges, emb_bytes, loss_sum = 0, 0, 0, 0.0
        epoch_start = time.perf_counter()
        tick = time.perf_counter()
        for batch in loader:
            sizes.update(batch.sizes())
            now = time.perf_counter()
            timers["sample"] += now - tick
            batch = batch.to(device, non_blocking=True)
            tick = time.perf_counter()
            timers["move"] += tick - now
            for opt in optimizers.values():
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            out = net(batch)
            out["loss"].backward()
            now = time.perf_counter()
            timers["forward_backward"] += now - tick
            if sharded:
                emb_bytes += take_bytes_sent(sharded)  # the lookups already reduced the grads
            elif sparse_tables:
                emb_bytes += sync_sparse_grads(tables)
            elif world > 1:
                emb_bytes += _all_reduce_dense(tables)
            tick = time.perf_counter()
            timers["sync"] += tick - now
            if optimizers.get("estimator") is not None:
                fit_estimator(model, out, optimizers["estimator"], getattr(cfg.model, "estimator_steps", 0))
                now = time.perf_counter()
                timers["estimator"] += now - tick
                tick = now
            for name, opt in optimizers.items():
                if opt is not None and name != "estimator":
                    opt.step()
            now = time.perf_counter()
            timers["optimizer"] += now - tick
            steps += 1
            edges += batch.batch_size
            loss = float(out["loss"])
            if not math.isfinite(loss):
                raise DivergenceError(
                    f"training diverged: loss {loss} at epoch {epoch}, step {steps - 1} on rank "
                    f"{rank}; lower train.lr or check the features"
                )
            loss_sum += loss
            tick = time.perf_counter()
        epoch_time = time.perf_counter() - epoch_start
        _release_free_memory()  # the steps' freed activations, before inference allocates
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss_sum / max(steps, 1),
            "steps": steps,
            "epoch_time_s": epoch_time,
            "train_edges_per_s": edges / max(epoch_time, 1e-9),
            "embedding_bytes_per_step": emb_bytes / max(steps, 1),
            "dense_bytes_per_step": dense_bytes,
            "embedding_table_bytes": table_bytes,
            "peak_rss_mb": _peak_rss_mb(),
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            **{f"time_{k}_s": v for k, v in timers.items()},
            "step_sizes": {k: v / max(steps, 1) for k, v in sizes.items()},
        }
        improved = False
        if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
            emb = _embeddings(model, slices, cfg, device)
            _require_finite(emb, epoch)
            valid = _evaluate(evaluator, emb, "valid", cfg)
            del emb  # not held through the next epoch's steps
            metrics.update({f"valid/{k}": v for k, v in valid.items()})
            improved = stopper.update(epoch, valid)
        stop = stopper.should_stop or epoch + 1 == cfg.train.epochs
        metrics["elapsed_s"] = wall_before + time.perf_counter() - started  # time-to-accuracy
        metrics["done"] = False
        if rank == 0:
            files.append_metrics(metrics)
        save = stop or improved or (epoch + 1) % cfg.train.checkpoint_every == 0
        state, table_rows = {}, {}
        if save:
            state, table_rows = _training_state(model, optimizers, sharded)
            state.update(
                stopper=stopper.state_dict(),
                epoch=epoch,
                wall_time_s=wall_before + time.perf_counter() - started,
            )
        # Ray Train keeps the checkpoint with the highest score and the latest one: scoring
        # only improvements makes the kept best the early-stopping best (equal values later
        # would otherwise tie with it), so no checkpoint needs a copy of the best model. The
        # others score -1, below any metric; not -inf, which Ray's snapshot JSON reads back
        # as null when a driver resumes.
        score = stopper.best_value if improved else -1.0
        metrics[CHECKPOINT_SCORE] = score
        _report(metrics, state, table_rows, dump_config(cfg), rank, epoch if save else None)
        if stop:
            break

    train_peak_mb = _peak_rss_mb()  # training and its validations
    _release_free_memory()
    if stopper.best_epoch is not None:
        if world > 1:
            dist.barrier()  # each rank returns from its last report once its files are stored
        best = find_checkpoint(run_dir / RAY_STORAGE, stopper.best_epoch)
        best_state = load_checkpoint(best, map_location=device)
        _restore(best, lambda: _load_training_state(model, {}, sharded, best_state, best))
    emb = _embeddings(model, slices, cfg, device)
    valid = _evaluate(evaluator, emb, "valid", cfg)
    test = _evaluate(evaluator, emb, "test", cfg)
    all_users = gather_users(emb)  # rank 0 only, for the export
    peaks = {
        stage: _gather_floats(value)
        for stage, value in (
            ("setup", setup_peak_mb), ("train", train_peak_mb), ("run", _peak_rss_mb())
        )
    }
    model_state, table_rows = _training_state(model, {}, sharded)
    if table_rows:
        save_tables(run_dir / BEST, table_rows)  # each rank its rows of the best model's tables
    if rank == 0:
        history = files.read_metrics()
        report = {
            "model": cfg.model.name,
            "num_users": store.num_users,
            "num_items": store.num_items,
            "best_epoch": stopper.best_epoch,
            "valid": valid,
            "test": test,
            "epochs_run": len(history),
            "workers": world,
            "mode": cfg.train.mode,
            "train_edges_per_s": _median([h["train_edges_per_s"] for h in history]) * world,
            "embedding_bytes_per_step": _median([h["embedding_bytes_per_step"] for h in history]),
            "dense_bytes_per_step": dense_bytes,
            "embedding_table_bytes": table_bytes,
            "peak_rss_mb_per_worker": peaks["run"],
            # Peak resident memory up to the first step and up to the end of training: shared
            # object-store pages a worker touched count in every worker that touched them.
            "setup_peak_rss_mb_per_worker": peaks["setup"],
            "train_peak_rss_mb_per_worker": peaks["train"],
        }
        assert all_users is not None
        files.write_results(
            report, cfg, model_state, (all_users, emb.items),
            wall_time=lambda: wall_before + time.perf_counter() - started,
        )
    files.close()
    ray.train.report({"done": True, "best_epoch": stopper.best_epoch, **{f"test/{k}": v for k, v in test.items()}})


def _all_reduce_dense(tables: list[torch.nn.Parameter]) -> int:
    """Full-graph mode: every row is touched, so a dense average is the right sync."""
    _, world = _world()
    sent = 0
    for table in tables:
        if table.grad is not None:
            dist.all_reduce(table.grad)
            table.grad /= world
            sent += int(2 * (world - 1) / world * table.grad.numel() * table.grad.element_size())
    return sent


def _training_state(
    model: Recommender, optimizers: dict[str, Any], sharded: dict[str, ShardedIdTable]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What rank 0 writes (``state.pt``), and what every rank writes with DCP: its rows of the
    sharded tables and of their moments (empty without sharded tables)."""
    opts = {n: o.state_dict() for n, o in optimizers.items() if o is not None}
    if not sharded:
        return {"model": model.state_dict(), "optimizers": opts}, {}
    model_state, table_opt, rows = sharded_state(model, optimizers.get("tables"), sharded)
    if table_opt is not None:
        opts["tables"] = table_opt
    keys = [f"{name}.weight" for name in sharded]
    return {"model": model_state, "optimizers": opts, "sharded_tables": keys}, rows


def _load_training_state(
    model: Recommender,
    optimizers: dict[str, Any],
    sharded: dict[str, ShardedIdTable],
    state: dict[str, Any],
    directory: str | Path,
) -> None:
    """Load the state of ``directory`` into this rank's layout (sharded or not, on any number of
    workers); with ``optimizers`` empty, the model only."""
    if "sharded_tables" in state:  # tables and their moments are in the DCP part
        load_sharded_state(
            model,
            optimizers.get("tables"),
            sharded,
            state["sharded_tables"],
            state["model"],
            state["optimizers"].get("tables") if optimizers.get("tables") is not None else None,
            lambda targets: load_tables(directory, targets),
        )
        dense = {n: o for n, o in optimizers.items() if o is not None and n != "tables"}
        for name, opt in dense.items():
            opt.load_state_dict(state["optimizers"][name])
        return
    model.load_state_dict(shard_model_state(state["model"], sharded) if sharded else state["model"])
    for name, opt in optimizers.items():
        if opt is not None:
            opt_state = state["optimizers"][name]
            if sharded and name == "tables":
                opt_state = shard_optimizer_state(opt, opt_state, sharded)
            opt.load_state_dict(opt_state)


def _restore(directory: str | Path, load: Callable[[], Any]) -> None:
    """Run ``load``; a checkpoint of another model or a malformed one is a CheckpointError."""
    try:
        load()
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{Path(directory) / STATE_FILE}: does not fit this run ({first})") from None


def _require_finite(emb: ShardedEmbeddings, epoch: int) -> None:
    """Raise on every rank if any rank's rows are not finite (collective)."""
    if not all_finite(emb):
        raise DivergenceError(
            f"training diverged: non-finite embeddings after epoch {epoch}; "
            "lower train.lr or check the features"
        )


def _log_to_run_dir(run_dir: Path, rank: int) -> None:
    """Workers' log records and warnings go to the run's ``train.log``, not the console.

    The driver starts its local Ray without forwarding worker output, so this file is where a
    worker's warnings can be read.
    """
    handler = logging.FileHandler(run_dir / LOG)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s")
    )
    logging.getLogger().addHandler(handler)
    logging.captureWarnings(True)


def _gather_floats(value: float) -> list[float]:
    _, world = _world()
    if world == 1:
        return [value]
    out = [None] * world
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def _report(
    metrics: dict[str, Any],
    state: dict[str, Any],
    table_rows: dict[str, Any],
    config_yaml: str,
    rank: int,
    epoch: int | None,
) -> None:
    """Report ``metrics``, with a checkpoint unless ``epoch`` is None: ``state`` from rank 0 and,
    with sharded tables, every rank's ``table_rows``. Each rank reports its own directory; Ray
    Train merges them into the one checkpoint (the DCP files are named by rank)."""
    import ray.train

    if epoch is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if table_rows:
            save_tables(tmp, table_rows)  # collective: every rank writes its rows
        if rank == 0:
            save_checkpoint(tmp, state, config_yaml, epoch=epoch)
        wrote = rank == 0 or bool(table_rows)
        checkpoint = ray.train.Checkpoint.from_directory(tmp) if wrote else None
        ray.train.report(metrics, checkpoint=checkpoint)




def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    ks: list[int] | None = None,
    users_sample: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Re-evaluate a finished run's best checkpoint (``sea-dist evaluate``)."""
    from sea_dist.config import load_config
    from sea_dist.errors import SeaDistError
    from sea_dist.train.run_files import BEST

    best = Path(run_dir) / BEST
    if not (best / "state.pt").exists():
        raise SeaDistError(f"{best}: no best checkpoint (did the run finish?)")
    cfg = load_config(best / "config.yaml")
    state = load_checkpoint(best)  # first: a refused file costs no data preparation
    data = prepare_data(cfg)
    store = data.store
    dims = {m: int(data.features[m].shape[1]) for m in data.modalities}
    labels = resolve_item_labels(cfg.model, store.labels(), data.features)
    model = build_model(cfg.model, store.num_users, store.num_items, dims, labels)
    _restore(best, lambda: _load_training_state(model, {}, {}, state, best))
    slices = GraphSlices(data.graph, data.item_graph, data.features, cfg.graph.item_hops)
    evaluator = store_evaluator(store, cfg, ks=ks)
    emb = _embeddings(model, slices, cfg)
    return evaluator.evaluate(
        emb.users, emb.items, split, user_start=emb.user_start, users_sample=users_sample, seed=seed
    )
