"""Driver side of ``sea-dist train``: a Ray Train ``TorchTrainer`` built from the config.

The driver resolves the data (importing an MMRec directory and building the kNN cache once),
writes the resolved config into the run directory, starts or joins a Ray cluster, and runs
:func:`~sea_dist.train.loop.train_loop_per_worker` on ``workers`` workers. Metrics reach the
driver through a ``UserCallback`` on the Train controller and a Ray queue, and are shown as a
live progress bar. Re-running with the same output directory resumes from the run's latest
checkpoint (Ray Train restores runs by ``RunConfig(name, storage_path)``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue
from tqdm import tqdm

from sea_dist.config import RunCfg, dump_config
from sea_dist.errors import SeaDistError
from sea_dist.io import atomic_write_text
from sea_dist.train.loop import prepare_data, train_loop_per_worker
from sea_dist.train.run_files import REPORT

log = logging.getLogger(__name__)


class _ForwardMetrics(ray.train.UserCallback):
    """Runs on the Train controller: forwards rank 0's metrics to the driver's queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.queue.put(metrics[0])


def _absolute_paths(cfg: RunCfg) -> RunCfg:
    """Workers may start in another directory: pass them absolute data paths."""
    data = cfg.data.model_copy(
        update={
            "path": str(Path(cfg.data.path).resolve()),
            "cache_dir": str(Path(cfg.data.cache_dir).resolve()),
        }
    )
    return cfg.model_copy(update={"data": data})


def _connect(address: str | None, workers: int) -> None:
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")  # Ray sets it for a job's entrypoint
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # A private instance is one node, so none of it needs to be reachable from elsewhere: each
    # Ray server (GCS, raylet, agents, workers, metrics endpoints) binds 127.0.0.1 when the node
    # address is 127.0.0.1, and all interfaces otherwise. But on Linux Ray replaces 127.0.0.1
    # with the machine's address (services.resolve_ip_for_localhost) unless
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which it reads once, when ray is imported. So set it
    # for the processes ray.init starts and patch the value this process read, until ray.init
    # returns: this process may join a real cluster later. tests/cluster/test_loopback.py checks.
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(
            # Over-subscribe a small machine rather than refuse a 2-worker run on 1 core.
            num_cpus=max(os.cpu_count() or 1, workers),
            include_dashboard=False,
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            del os.environ[name]
        else:
            os.environ[name] = saved_env


def run_training(
    cfg: RunCfg,
    output: str | Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``output``; returns the parsed ``report.json``."""
    out = Path(output).resolve()
    if (out / REPORT).exists():
        raise SeaDistError(f"{out}: run already finished ({REPORT} exists); choose another --output")
    cfg = _absolute_paths(cfg)
    num_workers = workers or cfg.train.workers
    prepare_data(cfg)  # import + kNN cache once, before N workers race for them
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))

    _connect(address, num_workers)
    resources = ray.cluster_resources()
    use_gpu = cfg.train.device == "cuda" or (
        cfg.train.device == "auto" and resources.get("GPU", 0) >= num_workers
    )
    threads = max(1, int(resources.get("CPU", 1)) // num_workers)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "run_dir": str(out),
            "threads": threads,
            "log_level": logging.getLogger().getEffectiveLevel(),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=cfg.train.placement,
        ),
        run_config=RunConfig(
            name="ray",
            storage_path=str(out),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[_ForwardMetrics(queue)],
            # The progress bar and metrics.jsonl carry what Ray Train logs at INFO.
            logging_config=LoggingConfig(
                log_level="DEBUG" if logging.getLogger().isEnabledFor(logging.DEBUG) else "WARNING"
            ),
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised on the driver's main thread
            outcome["error"] = exc
        finally:
            queue.put(None)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    _show_progress(queue, cfg.train.epochs, progress)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    report_path = out / REPORT
    if not report_path.exists():
        raise SeaDistError(f"{out}: training ended without writing {REPORT}")
    return json.loads(report_path.read_text())


def _show_progress(queue: Queue, epochs: int, enabled: bool) -> None:
    bar = tqdm(total=epochs, desc="epochs", unit="epoch", disable=not enabled, dynamic_ncols=True)
    with bar:
        while (metrics := queue.get()) is not None:
            if metrics.get("done"):
                continue
            bar.n = int(metrics["epoch"]) + 1
            shown = {"loss": f"{metrics['loss']:.4f}", "edges/s": f"{metrics['train_edges_per_s']:.0f}"}
            for key, value in metrics.items():
                if key.startswith("valid/") and key.endswith(("@20", "@10")) and "recall" in key:
                    shown[key.removeprefix("valid/")] = f"{value:.4f}"
            bar.set_postfix(shown, refresh=True)
            log.debug("epoch %s: %s", metrics["epoch"], metrics)
