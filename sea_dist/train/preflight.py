"""What the driver checks before any Ray worker starts, and before it writes a run directory.

Everything a worker would refuse deterministically (a rule between the config and the data, a
corrupt store, a config that differs from the interrupted run it would resume) is refused here,
once, with one line: inside the workers it would cost a Ray start, a traceback per worker and a
retry per ``train.max_failures``.

The run directory remembers the resolved config that created it (``config.yaml``). Resuming it
with another config would silently mix two runs, so :func:`plan_run_dir` refuses that unless
the caller allows it, and then records the change in ``config_changes.jsonl``.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sea_dist.config import RunCfg, dump_config, load_config
from sea_dist.errors import ConfigError, SeaDistError
from sea_dist.io import atomic_write_text
from sea_dist.models.registry import build_model, item_label_source
from sea_dist.train.shared import TrainingData
from sea_dist.train.run_files import CONFIG, METRICS, REPORT

CHANGES = "config_changes.jsonl"

# Keys that decide where things go or how fast, never what is computed: a resumed run may
# change them without being a different run.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "data.cache_dir",
        "eval.batch_users",
        "eval.chunk_nodes",
        "train.max_failures",
        "train.checkpoint_every",
        "train.placement",
        "train.tables",  # same training to 1e-5 (tests/train/test_sharding.py), other memory
    }
)


def check_run(cfg: RunCfg, data: TrainingData) -> None:
    """Refuse what the workers would: rules between ``cfg`` and the data it trains on.

    The model is built on the meta device, so its constructor's checks run without allocating
    its tables (a million-item model would cost the driver gigabytes).

    Raises:
        ConfigError: naming the key, for the first rule broken.
    """
    store = data.store
    train_edges = int(store.meta["splits"]["train"])
    if cfg.train.workers > train_edges:
        raise ConfigError(
            f"train.workers: {cfg.train.workers} workers for {train_edges} training "
            "interactions; every worker needs at least one"
        )
    source = item_label_source(cfg.model, store.labels(), data.features)
    labels = None
    if source is not None:
        clusters = cfg.model.sgfd.num_clusters  # type: ignore[union-attr]
        if source == "kmeans" and clusters > store.num_items:
            raise ConfigError(
                f"model.sgfd.num_clusters: {clusters} clusters for {store.num_items} items"
            )
        # Stand-in labels with every class present: the real ones may need a k-means pass.
        labels = torch.arange(store.num_items) % (clusters if source == "kmeans" else 2)
    dims = {m: int(data.features[m].shape[1]) for m in data.modalities}
    try:
        with torch.device("meta"):
            build_model(cfg.model, store.num_users, store.num_items, dims, labels)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model.name={cfg.model.name}: {exc}") from None


@dataclass
class RunDirPlan:
    """What :func:`plan_run_dir` found, for :meth:`apply` to write once the run is known valid.

    Attributes:
        root: the run directory.
        resume: an interrupted run is continued (Ray Train restores its latest checkpoint).
        changes: ``key -> (old, new)`` for a resume the caller allowed to change the config.
    """

    root: Path
    resume: bool
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def apply(self, cfg: RunCfg) -> None:
        """Create the directory and record the config (nothing to write for a plain resume)."""
        if self.resume and not self.changes:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.changes:
            record = {
                "changed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "after_epoch": _last_epoch(self.root),
                "changes": {k: {"old": old, "new": new} for k, (old, new) in self.changes.items()},
            }
            with open(self.root / CHANGES, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        atomic_write_text(self.root / CONFIG, dump_config(cfg))


def plan_run_dir(root: Path, cfg: RunCfg, *, allow_changes: bool = False) -> RunDirPlan:
    """Decide whether ``root`` starts a new run or resumes one, without writing anything.

    Raises:
        SeaDistError: the run already finished, or ``root`` holds something other than a run.
        ConfigError: ``cfg`` differs from the interrupted run's config in a key that changes
            results, and ``allow_changes`` is false; the message lists the keys.
    """
    if (root / REPORT).exists():
        raise SeaDistError(
            f"{root}: run already finished ({REPORT} exists); choose another --output"
        )
    stored = root / CONFIG
    if not stored.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise SeaDistError(
                f"{root}: not empty and not a sea-dist run (no {CONFIG}); choose another --output"
            )
        return RunDirPlan(root, resume=False)
    changes = config_changes(load_config(stored), cfg)
    if changes and not allow_changes:
        listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise ConfigError(
            f"{root}: resuming an interrupted run with a different config ({listed}); "
            "pass --resume-with-changes to continue it anyway, or choose another --output"
        )
    return RunDirPlan(root, resume=True, changes=changes)


def config_changes(old: RunCfg, new: RunCfg) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two configs, ``key -> (old, new)``, result-neutral
    keys left out."""
    before, after = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if key not in RESULT_NEUTRAL_KEYS and before.get(key) != after.get(key)
    }


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _last_epoch(root: Path) -> int | None:
    path = root / METRICS
    if not path.exists():
        return None
    epochs = [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]
    return max(epochs) if epochs else None
