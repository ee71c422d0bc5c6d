"""End-to-end training through Ray Train on a real local Ray cluster."""

import json
import pickle
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.train.test_hardening import _RunsCode
from tests.train.conftest import (
    ROOT, SEA_DIST, epochs_logged, kill, run_train, train_cmd, wait_for, worker_pid,
)

METRIC_KEYS = {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
QUICK = ("train.epochs=3", "train.batch_size=512", "train.lr=1e-3", "model.estimator_steps=2")


def _check_report(report: dict, out: Path, num_users: int, num_items: int) -> None:
    assert METRIC_KEYS <= set(report["valid"]) and METRIC_KEYS <= set(report["test"])
    for split in ("valid", "test"):
        assert all(0.0 <= report[split][k] <= 1.0 for k in METRIC_KEYS)
    assert 0 <= report["best_epoch"] < report["epochs_run"]
    assert report["train_edges_per_s"] > 0
    assert (out / "config.yaml").exists() and (out / "summary.md").exists()
    assert (out / "best_checkpoint" / "state.pt").exists()
    assert pq.read_metadata(out / "embeddings" / "users.parquet").num_rows == num_users
    assert pq.read_metadata(out / "embeddings" / "items.parquet").num_rows == num_items
    assert list((out / "tensorboard").iterdir())


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_sea_full_graph_one_worker(train_store: Path, tiny_store, tmp_path: Path) -> None:
    out = tmp_path / "sea"
    report = run_train(train_store, out, *QUICK)
    _check_report(report, out, tiny_store.num_users, tiny_store.num_items)
    assert report["workers"] == 1 and report["mode"] == "full"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [0, 1, 2]


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_lightgcn_sampled_two_workers_sparse_bytes(tmp_path: Path) -> None:
    from sea_dist.data.synthetic import generate_store

    store = generate_store(tmp_path / "store", 4000, 3000, 30000, {}, seed=1, progress=False)
    out = tmp_path / "lgn"
    report = run_train(
        store.path, out, "train.epochs=1", "train.batch_size=64", "train.lr=1e-3",
        "train.mode=sampled", "train.workers=2", "train.fanouts=[3, 3]", "train.max_steps_per_epoch=20",
        config="configs/lightgcn.yaml",
    )
    _check_report(report, out, store.num_users, store.num_items)
    assert report["workers"] == 2
    # Row-sparse sync: a step moves only the rows it touched, a small part of the tables.
    assert 0 < report["embedding_bytes_per_step"] < 0.2 * report["embedding_table_bytes"]
    assert len(report["peak_rss_mb_per_worker"]) == 2


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_sampled_sea_two_workers_is_deterministic(train_store: Path, tmp_path: Path) -> None:
    sets = (*QUICK, "train.mode=sampled", "train.workers=2", "train.epochs=2", "train.sampling_threads=1")
    first = run_train(train_store, tmp_path / "a", *sets)
    second = run_train(train_store, tmp_path / "b", *sets)
    assert first["test"] == second["test"]
    assert first["valid"] == second["valid"]


@pytest.mark.slow  # multi-minute end-to-end run: make test-slow, CI
def test_row_sharded_tables_train_as_replicated(train_store: Path, tmp_path: Path) -> None:
    sets = (*QUICK, "train.mode=sampled", "train.workers=2", "train.epochs=2", "train.sampling_threads=1")
    replicated = run_train(train_store, tmp_path / "replicated", *sets)
    sharded = run_train(train_store, tmp_path / "sharded", *sets, "train.tables=row_sharded")
    for split in ("valid", "test"):
        for key, value in replicated[split].items():
            assert sharded[split][key] == pytest.approx(value, abs=1e-4), key
    # Each worker holds half of every table (and so half of their optimizer state).
    assert sharded["embedding_table_bytes"] == pytest.approx(replicated["embedding_table_bytes"] / 2, rel=0.01)
    evaluated = subprocess.run([SEA_DIST, "evaluate", "--run", str(tmp_path / "sharded")], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads(evaluated.stdout)["recall@20"] == pytest.approx(sharded["test"]["recall@20"], abs=1e-6)
    # Each worker reported its own rows; Ray Train merged them into one checkpoint directory.
    infos = (tmp_path / "sharded" / "ray").glob("checkpoint_*/checkpoint.json")
    checkpoints = [info.parent for info in infos]
    assert checkpoints
    for checkpoint in [*checkpoints, tmp_path / "sharded" / "best_checkpoint"]:
        files = sorted(p.name for p in (checkpoint / "tables").iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"], checkpoint
    # A crafted tables/.metadata is refused by sea-dist evaluate with one line, and runs nothing.
    marker = tmp_path / "ran"
    metadata = tmp_path / "sharded" / "best_checkpoint" / "tables" / ".metadata"
    metadata.write_bytes(pickle.dumps(_RunsCode(marker)))
    planted = subprocess.run([SEA_DIST, "evaluate", "--run", str(tmp_path / "sharded")], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    lines = planted.stderr.strip().splitlines()
    assert planted.returncode == 2 and len(lines) == 1, planted.stderr[-2000:]
    assert lines[0].startswith(f"error: {metadata}: refused") and "posix.system" in lines[0]
    assert not marker.exists()


@pytest.mark.slow
def test_row_sharded_run_resumes_exactly(train_store: Path, tmp_path: Path) -> None:
    sets = (*QUICK, "train.mode=sampled", "train.workers=2", "train.sampling_threads=1",
            "train.tables=row_sharded", "train.patience=10")
    reference = run_train(train_store, tmp_path / "ref", *sets, "train.epochs=2")
    out = tmp_path / "resumed"
    run_train(train_store, out, *sets, "train.epochs=1")
    (out / "report.json").unlink()  # as if the driver had died after epoch 0's checkpoint
    report = run_train(train_store, out, *sets, "train.epochs=2", extra=("--resume-with-changes",))
    assert "resumed from epoch 0" in (out / "train.log").read_text()
    assert report["epochs_run"] == reference["epochs_run"] == 2
    for split in ("valid", "test"):
        for key, value in reference[split].items():
            assert report[split][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_killed_worker_is_replaced_and_result_matches(train_store: Path, tmp_path: Path) -> None:
    sets = ("train.epochs=4", "train.batch_size=256", "train.lr=1e-3", "model.estimator_steps=2",
            "train.mode=sampled", "train.workers=2", "train.patience=10", "train.sampling_threads=1")
    reference = run_train(train_store, tmp_path / "ref", *sets)

    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(train_store, out, *sets), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: epochs_logged(out) >= 2, 300, "two epochs")
    kill(worker_pid(out, 1))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_run"] == reference["epochs_run"]
    for split in ("valid", "test"):
        for key, value in reference[split].items():
            assert report[split][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_interrupted_driver_resumes(train_store: Path, tmp_path: Path) -> None:
    sets = ("train.epochs=4", "train.batch_size=256", "train.lr=1e-3", "model.estimator_steps=2",
            "train.patience=10")
    reference = run_train(train_store, tmp_path / "ref", *sets)

    out = tmp_path / "resumed"
    proc = subprocess.Popen(train_cmd(train_store, out, *sets), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: epochs_logged(out) >= 2, 300, "two epochs")
    time.sleep(1.0)  # let the epoch's checkpoint land
    import os
    import signal

    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray cluster it started
    proc.wait()
    assert not (out / "report.json").exists()
    report = run_train(train_store, out, *sets)
    assert report["epochs_run"] == reference["epochs_run"]
    for key, value in reference["test"].items():
        assert report["test"][key] == pytest.approx(value, abs=1e-6), key
