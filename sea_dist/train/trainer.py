"""Driver side of ``sea-dist train``: a Ray Train ``TorchTrainer`` built from the config.

The driver checks the run before anything starts (:mod:`sea_dist.train.preflight`: the run
directory, the config against the data, the store's content), builds the data once (import,
graphs, kNN cache), records the resolved config in the run directory, starts or joins a Ray
cluster, partitions the seed edges and puts the read-only arrays in the object store
(:mod:`sea_dist.train.shared`), and runs :func:`~sea_dist.train.loop.train_loop_per_worker`
on ``train.workers`` workers, which map the arrays instead of building them.
Metrics reach the driver through a ``UserCallback`` on the Train controller and a Ray queue,
and are shown as a live progress bar; log records go to the run's ``train.log``. Re-running
with the same output directory and config resumes from the run's latest checkpoint (Ray Train
restores runs by ``RunConfig(name, storage_path)``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue
from tqdm import tqdm

from sea_dist.config import RunCfg
from sea_dist.errors import ConfigError, SeaDistError, TrainingFailed
from sea_dist.train.loop import prepare_data, train_loop_per_worker
from sea_dist.train.preflight import check_run, plan_run_dir
from sea_dist.train.run_files import CHECKPOINT_SCORE, LOG, RAY_STORAGE, REPORT
from sea_dist.train.shared import SharedData, share_training_data

log = logging.getLogger(__name__)


class _ForwardMetrics(ray.train.UserCallback):
    """Runs on the Train controller: forwards rank 0's metrics to the driver's queue, and ends
    the run at the first error that no retry can fix.

    A :class:`~sea_dist.errors.SeaDistError` raised in a worker (a config the data refuses, a
    corrupt checkpoint, a diverged model) would fail the same way on every retry, so it is not
    retried like a lost worker: raising here makes the controller give up at once (Ray Train
    does not retry errors raised by callbacks), and the driver re-raises the worker's error.
    """

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.queue.put(metrics[0])

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, exc in sorted(worker_exceptions.items()):
            cause = getattr(exc, "_base_exc", exc)  # Ray wraps it with its traceback
            if isinstance(cause, SeaDistError):
                self.queue.put({"fatal": cause})
                raise _NotRetryable(f"rank {rank}: {cause}")


class _NotRetryable(RuntimeError):
    """Raised on the Train controller to end the run (see :class:`_ForwardMetrics`)."""


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
            # Workers and Ray's actors log to files (the run's train.log, Ray's session logs),
            # not to this console, where they would break up the progress bar.
            log_to_driver=_console_debug(),
            _node_ip_address="127.0.0.1",
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            del os.environ[name]
        else:
            os.environ[name] = saved_env


def _console_debug() -> bool:
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def run_training(
    cfg: RunCfg,
    output: str | Path,
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    resume_with_changes: bool = False,
) -> dict[str, Any]:
    """Train ``cfg`` into ``output``; returns the parsed ``report.json``.

    Everything that can be refused is refused before Ray starts and before ``output`` is
    written (see :mod:`sea_dist.train.preflight`).
    """
    started = time.time()
    out = Path(output).resolve()
    if workers is not None:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"workers": workers})})
    cfg = _absolute_paths(cfg)
    plan = plan_run_dir(out, cfg, allow_changes=resume_with_changes)
    # Import, verification, the graphs and the kNN cache: once, for every worker.
    data = prepare_data(cfg)
    check_run(cfg, data)
    plan.apply(cfg)

    with _log_to(out / LOG):
        local = not (address or os.environ.get("RAY_ADDRESS"))
        _connect(address, cfg.train.workers)
        shared = share_training_data(cfg, data)
        del data  # the object store holds the arrays now; ``shared`` keeps them for the run
        return _fit(cfg, out, shared, local=local, progress=progress, started=started)


def _fit(
    cfg: RunCfg, out: Path, shared: SharedData, *, local: bool, progress: bool, started: float
) -> dict[str, Any]:
    num_workers = cfg.train.workers
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if cfg.train.device == "cuda" and local and gpus < num_workers:
        raise ConfigError(
            f"train.device=cuda: {num_workers} workers need a GPU each, this machine has {gpus:g}"
        )
    use_gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and gpus >= num_workers)
    threads = max(1, int(resources.get("CPU", 1)) // num_workers)
    queue = Queue(actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "run_dir": str(out),
            "threads": threads,
            "log_level": logging.getLogger().getEffectiveLevel(),
            "started_at": started,
            "shared": shared,
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=cfg.train.placement,
        ),
        run_config=RunConfig(
            name=RAY_STORAGE,
            storage_path=str(out),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            # The best checkpoint by validation and, always, the latest (to resume from).
            checkpoint_config=CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=CHECKPOINT_SCORE, checkpoint_score_order="max"
            ),
            callbacks=[_ForwardMetrics(queue)],
            # The progress bar and metrics.jsonl carry what Ray Train logs at INFO.
            logging_config=LoggingConfig(
                log_level="DEBUG" if _console_debug() else "WARNING"
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
    fatal = _show_progress(queue, cfg.train.epochs, progress, started)
    thread.join()
    if fatal is not None:
        raise fatal
    if "error" in outcome:
        log.error("training failed", exc_info=outcome["error"])
        raise TrainingFailed(f"{out}: training failed: {_one_line(outcome['error'])} (traceback in {out / LOG})")
    report_path = out / REPORT
    if not report_path.exists():
        raise SeaDistError(f"{out}: training ended without writing {REPORT}")
    return json.loads(report_path.read_text())


def _one_line(exc: BaseException) -> str:
    """The innermost worker error as ``Type: message``, from Ray's multi-line report."""
    if "running low on memory" in str(exc) or "out of memory" in str(exc):
        # Ray's memory monitor killed a worker; its report is a page of advice.
        return (
            "a worker ran out of memory and Ray's memory monitor killed it "
            "(try fewer workers per node, or train.tables=row_sharded)"
        )
    failures = getattr(exc, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "_base_exc", failure)
        text = str(cause).strip().splitlines()
        return f"rank {rank}: {type(cause).__name__}: {text[0] if text else ''}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Send this process's log records, Ray's included, to ``path`` rather than the console.

    The console keeps the progress bar and records of WARNING and above from sea_dist itself;
    Ray's own INFO and WARNING lines (its start-up banner, the Train controller's warnings)
    go to the file only.
    """
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    saved = ray_logger.handlers[:], ray_logger.propagate
    root.addHandler(handler)
    ray_logger.handlers, ray_logger.propagate = [handler], False
    try:
        yield
    finally:
        root.removeHandler(handler)
        ray_logger.handlers, ray_logger.propagate = saved
        handler.close()


def _show_progress(queue: Queue, epochs: int, enabled: bool, started: float) -> SeaDistError | None:
    """Draw the progress bar until the run ends; returns a worker's unretryable error, if any.

    The bar's clock starts with the run (``started``), as the summary's wall time does.
    """
    fatal = None
    bar = tqdm(total=epochs, desc="epochs", unit="epoch", disable=not enabled, dynamic_ncols=True)
    bar.start_t = started  # tqdm's clock is time.time()
    with bar:
        while (metrics := queue.get()) is not None:
            if "fatal" in metrics:
                fatal = metrics["fatal"]
                continue
            if metrics.get("done"):
                bar.close()  # stop its clock where the summary's wall time stops
                continue
            bar.n = int(metrics["epoch"]) + 1
            shown = {"loss": f"{metrics['loss']:.4f}", "edges/s": f"{metrics['train_edges_per_s']:.0f}"}
            for key, value in metrics.items():
                if key.startswith("valid/") and key.endswith(("@20", "@10")) and "recall" in key:
                    shown[key.removeprefix("valid/")] = f"{value:.4f}"
            bar.set_postfix(shown, refresh=True)
            log.debug("epoch %s: %s", metrics["epoch"], metrics)
    return fatal

