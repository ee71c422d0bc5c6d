"""What a user or an attacker can reach: checkpoints, run directories, bad configs and data.

The first tests need no Ray: everything they feed in is refused before Ray starts. The last
two run a real local Ray cluster and show that an error no retry can fix ends the run at once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sea_dist.config import dump_config, load_config
from sea_dist.errors import CheckpointError, ConfigError, SeaDistError
from sea_dist.train.checkpoint import STATE_FILE, TABLES_DIR, load_checkpoint, load_tables
from sea_dist.train.preflight import CHANGES, plan_run_dir
from sea_dist.train.run_files import RunFiles
from tests.data.test_verify import _flip_body_bytes
from tests.train.conftest import ROOT, SEA_DIST, train_cmd


class _RunsCode:
    """Pickles to a call of os.system: what a crafted checkpoint would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _RunsCode(marker)}, path)


def _cfg(store: Path, cache: Path, *sets: str, config: str = "configs/lightgcn.yaml"):
    return load_config(ROOT / config, [f"data.path={store}", f"data.cache_dir={cache}", *sets])


def _sea_dist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SEA_DIST, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    return lines[0]


def test_load_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _plant(tmp_path / STATE_FILE, marker)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / STATE_FILE}: refused.*posix.system"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
    (tmp_path / STATE_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=str(tmp_path / STATE_FILE)):
        load_checkpoint(tmp_path)


def _tables_checkpoint(directory: Path) -> torch.Tensor:
    """A real one-process DCP checkpoint of one table under ``directory/tables``."""
    import torch.distributed.checkpoint as dcp

    table = torch.arange(12.0).view(4, 3)
    writer = dcp.FileSystemWriter(directory / TABLES_DIR)
    dcp.save({"t.weight": table}, storage_writer=writer, no_dist=True)
    return table


def test_load_tables_refuses_crafted_files(tmp_path: Path) -> None:
    import pickle

    from torch.distributed.checkpoint.filesystem import _StorageInfo

    table, marker = _tables_checkpoint(tmp_path), tmp_path / "ran"
    target = {"t.weight": torch.zeros(4, 3)}
    load_tables(tmp_path, target)
    assert torch.equal(target["t.weight"], table)
    root = tmp_path / TABLES_DIR
    metadata_path, data_path = root / ".metadata", root / "__0_0.distcp"
    metadata = pickle.loads(metadata_path.read_bytes())  # this test's own file: trusted
    # The metadata file itself would run a command when unpickled.
    metadata_path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match=rf"^{metadata_path}: refused.*posix.system\)$"):
        load_tables(tmp_path, target)
    # Genuine metadata, a data file that would run a command.
    metadata_path.write_bytes(pickle.dumps(metadata))
    crafted = tmp_path / "crafted.pt"
    torch.save(_RunsCode(marker), crafted)
    data_path.write_bytes(crafted.read_bytes())
    (index,) = metadata.storage_data
    metadata.storage_data[index] = _StorageInfo("__0_0.distcp", 0, crafted.stat().st_size)
    metadata_path.write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=rf"^{data_path}: refused.*posix.system\)$"):
        load_tables(tmp_path, target)
    # Metadata pointing outside the checkpoint is refused before anything is read.
    metadata.storage_data[index] = _StorageInfo("../crafted.pt", 0, crafted.stat().st_size)
    metadata_path.write_bytes(pickle.dumps(metadata))
    with pytest.raises(CheckpointError, match=rf"^{metadata_path}: refused, names a file"):
        load_tables(tmp_path, target)
    assert not marker.exists()
    # A table of another shape does not fit.
    _tables_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"does not fit this run \(t.weight: stored \(4, 3\)"):
        load_tables(tmp_path, {"t.weight": torch.zeros(5, 3)})


def test_evaluate_refuses_a_planted_best_checkpoint(train_store: Path, tmp_path: Path) -> None:
    run, marker = tmp_path / "run", tmp_path / "ran"
    best = run / "best_checkpoint"
    _plant(best / STATE_FILE, marker)
    (best / "config.yaml").write_text(dump_config(_cfg(train_store, tmp_path / "cache")))
    line = _one_line_error(_sea_dist("evaluate", "--run", str(run)))
    assert str(best / STATE_FILE) in line and "refused" in line
    assert not marker.exists()


def test_run_dir_plans(train_store: Path, tmp_path: Path) -> None:
    cfg = _cfg(train_store, tmp_path / "cache")
    fresh = plan_run_dir(tmp_path / "new", cfg)
    assert not fresh.resume and not (tmp_path / "new").exists()
    fresh.apply(cfg)
    stored = (tmp_path / "new" / "config.yaml").read_bytes()

    same = plan_run_dir(tmp_path / "new", cfg)
    assert same.resume and not same.changes
    # Keys that change no result (where caches go, evaluation chunking) resume freely.
    neutral = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"batch_users": 7})})
    assert not plan_run_dir(tmp_path / "new", neutral).changes

    changed = cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"lr": 1e-2, "epochs": 8})}
    )
    with pytest.raises(
        ConfigError,
        match=r"train\.epochs 1000 -> 8, train\.lr 0\.001 -> 0\.01.*--resume-with-changes",
    ):
        plan_run_dir(tmp_path / "new", changed)
    assert (tmp_path / "new" / "config.yaml").read_bytes() == stored

    allowed = plan_run_dir(tmp_path / "new", changed, allow_changes=True)
    allowed.apply(changed)
    record = json.loads((tmp_path / "new" / CHANGES).read_text())
    assert record["changes"] == {
        "train.epochs": {"old": 1000, "new": 8},
        "train.lr": {"old": 1e-3, "new": 1e-2},
    }
    assert load_config(tmp_path / "new" / "config.yaml") == changed

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SeaDistError, match="not empty and not a sea-dist run"):
        plan_run_dir(tmp_path / "other", cfg)
    (tmp_path / "new" / "report.json").write_text("{}")
    with pytest.raises(SeaDistError, match="run already finished"):
        plan_run_dir(tmp_path / "new", cfg)


def test_train_refuses_a_mixed_run_before_ray(train_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    plan_run_dir(out, _cfg(train_store, tmp_path / "cache")).apply(
        _cfg(train_store, tmp_path / "cache")
    )
    before = sorted(out.iterdir())
    config_bytes = (out / "config.yaml").read_bytes()
    cmd = train_cmd(train_store, out, "train.lr=1e-2", config="configs/lightgcn.yaml")
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    line = _one_line_error(result)
    assert "train.lr 0.001 -> 0.01" in line and "--resume-with-changes" in line
    assert sorted(out.iterdir()) == before  # no Ray storage, no log: nothing started
    assert (out / "config.yaml").read_bytes() == config_bytes


def test_corrupt_store_starts_no_worker(tiny_store, tmp_path: Path) -> None:
    store = Path(shutil.copytree(tiny_store.path, tmp_path / "store"))
    _flip_body_bytes(store / "features" / "image.npy")
    out = tmp_path / "run"
    result = subprocess.run(
        train_cmd(store, out), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    line = _one_line_error(result)
    assert str(store / "features" / "image.npy") in line and "checksum" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("sets", "config", "message"),
    [
        (
            ("data.modalities=[image]",),
            "configs/sea.yaml",
            "model.name=sea needs at least two modalities",
        ),
        (
            ("data.modalities=[image, sound]",),
            "configs/sea.yaml",
            "data.modalities: sound not in the store",
        ),
        (("train.workers=100000",), "configs/lightgcn.yaml", "train.workers: 100000 workers for"),
        (
            ("model.sgfd.num_clusters=5000",),
            "configs/vbpr_sgfd.yaml",
            "model.sgfd.num_clusters: 5000 clusters for 200 items",
        ),
    ],
)
def test_config_against_data_is_checked_before_ray(
    train_store: Path, tmp_path: Path, sets: tuple[str, ...], config: str, message: str
) -> None:
    import ray

    from sea_dist.train.trainer import run_training

    cfg = _cfg(train_store, tmp_path / "cache", *sets, config=config)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_training(cfg, out)
    assert not out.exists() and not ray.is_initialized()


def test_sampled_weight_decay_is_refused_at_load(train_store: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="--set train.weight_decay=1e-4: train.weight_decay must be 0 in sampled"
    ):
        _cfg(train_store, tmp_path, "train.mode=sampled", "train.weight_decay=1e-4")


def test_tensorboard_appends_after_a_resume_without_duplicate_steps(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for first, epochs, loss in ((0, range(3), 1.0), (1, range(1, 4), 2.0)):
        files = RunFiles(tmp_path, first_epoch=first)
        for epoch in epochs:
            files.append_metrics({"epoch": epoch, "loss": loss + epoch})
        files.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [s.step for s in scalars] == [0, 1, 2, 3]
    assert [s.value for s in scalars] == [1.0, 3.0, 4.0, 5.0]  # epoch 0 first run, 1-3 resumed


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_planted_ray_checkpoint_ends_the_run_without_a_retry(
    train_store: Path, tmp_path: Path
) -> None:
    out, marker = tmp_path / "run", tmp_path / "ran"
    cmd = train_cmd(train_store, out, "train.epochs=2", config="configs/lightgcn.yaml")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and first.stderr == "", first.stderr[-4000:]  # a quiet console
    (out / "report.json").unlink()  # as if the driver had died before finishing
    checkpoints = sorted((out / "ray").glob("checkpoint_*/state.pt"))
    assert checkpoints
    for path in checkpoints:
        _plant(path, marker)
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    line = _one_line_error(result)
    assert "refused" in line and "ray/checkpoint_" in line
    assert not marker.exists()
    starts = (out / "train.log").read_text().count("worker started: rank 0")
    assert starts == 2  # the first run, and one attempt of the second: no retry


def test_divergence_ends_the_run_at_once(train_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Adam steps by about lr: embeddings of 1e30 overflow the scores and the loss is NaN.
    cmd = train_cmd(
        train_store, out, "train.lr=1e30", "train.epochs=3", config="configs/lightgcn.yaml"
    )
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    line = _one_line_error(result)
    assert "training diverged: loss nan at epoch 0" in line
    assert (out / "train.log").read_text().count("worker started") == 1
    assert not (out / "report.json").exists()
