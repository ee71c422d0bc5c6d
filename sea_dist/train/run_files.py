"""The run directory: what a finished run leaves for people and tools.

    DIR/config.yaml          resolved config (written by the driver once the run is checked)
    DIR/config_changes.jsonl what a resume with --resume-with-changes changed, and when
    DIR/train.log            the driver's log, Ray's warnings and any traceback
    DIR/metrics.jsonl        one line per epoch (rank 0)
    DIR/tensorboard/         the same scalars for TensorBoard
    DIR/best_checkpoint/     best-valid model + config (what ``sea-dist evaluate`` loads)
    DIR/report.json          best epoch, valid/test metrics, throughput, bytes, memory
    DIR/summary.md           the report as a Markdown table
    DIR/embeddings/          users.parquet, items.parquet (final embeddings)
    DIR/ray/                 Ray Train's storage: the run's checkpoints, for resuming
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sea_dist.config import RunCfg, dump_config
from sea_dist.io import atomic_write_text
from sea_dist.train.checkpoint import save_checkpoint

CONFIG = "config.yaml"
RAY_STORAGE = "ray"  # Ray Train's RunConfig(name=...) under the run directory
CHECKPOINT_SCORE = "checkpoint_score"  # what CheckpointConfig ranks checkpoints by
REPORT = "report.json"
METRICS = "metrics.jsonl"
BEST = "best_checkpoint"
LOG = "train.log"


class RunFiles:
    """Rank 0's writer of the run directory's files.

    Args:
        root: the run directory.
        first_epoch: the epoch this process starts at; TensorBoard drops any event it already
            holds from that step on, so a resumed run has no duplicate steps.
    """

    def __init__(self, root: Path, first_epoch: int = 0) -> None:
        self.root = Path(root)
        self.first_epoch = first_epoch
        self._writer: Any = None

    def write_pid(self, rank: int, node_id: str) -> None:
        """Record each worker's pid and Ray node (tests and operators use it to find workers)."""
        pids = self.root / "pids"
        pids.mkdir(parents=True, exist_ok=True)
        atomic_write_text(pids / f"rank{rank}", f"{os.getpid()} {node_id}\n")

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        with open(self.root / METRICS, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")
        self._tensorboard(metrics)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Epoch records, the last one per epoch (a resumed epoch is written again)."""
        path = self.root / METRICS
        if not path.exists():
            return []
        by_epoch: dict[int, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                by_epoch[int(record["epoch"])] = record
        return [by_epoch[e] for e in sorted(by_epoch)]

    def _tensorboard(self, metrics: dict[str, Any]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.root / "tensorboard"), purge_step=self.first_epoch or None)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                self._writer.add_scalar(key, value, global_step=int(metrics["epoch"]))
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_results(
        self,
        report: dict[str, Any],
        cfg: RunCfg,
        best_state: dict[str, Any],
        embeddings: tuple[torch.Tensor, torch.Tensor],
        wall_time: Callable[[], float],
    ) -> None:
        """Best checkpoint, embeddings, report.json and summary.md (report last: it marks done).

        ``best_state`` is the best model's checkpoint state (its ``"model"``; with sharded tables,
        every rank has already written their rows under ``best_checkpoint/tables``),
        ``embeddings`` its final user and item embeddings, ``[U, d]`` and ``[I, d]``.
        ``wall_time()`` becomes the report's ``wall_time_s``; it is read once the large files
        are written, so the figure covers the whole run but the two small files.
        """
        save_checkpoint(self.root / BEST, best_state, dump_config(cfg))
        self._export_embeddings(*embeddings)
        report = {**report, "wall_time_s": wall_time()}
        atomic_write_text(self.root / "summary.md", summary_markdown(report))
        atomic_write_text(self.root / REPORT, json.dumps(report, indent=2, default=float))

    def _export_embeddings(self, users: torch.Tensor, items: torch.Tensor) -> None:
        out = self.root / "embeddings"
        out.mkdir(exist_ok=True)
        for name, emb in (("users", users), ("items", items)):
            rows = emb.detach().cpu().float().numpy()
            table = pa.table(
                {
                    "id": pa.array(range(len(rows)), type=pa.int64()),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1]),
                }
            )
            tmp = out / f".{name}.parquet.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, out / f"{name}.parquet")


def summary_markdown(report: dict[str, Any]) -> str:
    keys = sorted(k for k in set(report.get("valid", {})) | set(report.get("test", {})) if "@" in k)
    lines = [
        f"# Run summary: {report.get('model')}",
        "",
        f"best epoch {report.get('best_epoch')}, {report.get('epochs_run')} epochs, "
        f"{report.get('workers')} worker(s), mode {report.get('mode')}",
        "",
        "| metric | valid | test |",
        "|---|---|---|",
    ]
    for key in keys:
        lines.append(f"| {key} | {report['valid'].get(key, float('nan')):.4f} | {report['test'].get(key, float('nan')):.4f} |")
    lines += [
        "",
        "| figure | value |",
        "|---|---|",
        f"| train edges/s (all workers) | {report.get('train_edges_per_s', float('nan')):.0f} |",
        f"| embedding bytes/step | {report.get('embedding_bytes_per_step', 0):.0f} |",
        f"| dense bytes/step | {report.get('dense_bytes_per_step', 0):.0f} |",
        f"| embedding tables (bytes) | {report.get('embedding_table_bytes', 0):.0f} |",
        f"| peak RSS per worker (MB) | {', '.join(f'{m:.0f}' for m in report.get('peak_rss_mb_per_worker', []))} |",
        f"| wall time (s) | {report.get('wall_time_s', float('nan')):.1f} |",
    ]
    return "\n".join(lines) + "\n"
