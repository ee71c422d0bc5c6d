"""A head node and a worker node started with ``ray start`` on 127.0.0.1, one worker per node."""

from pathlib import Path

import pytest

from tests.train.conftest import run_train


@pytest.mark.slow
def test_spread_job_runs_one_worker_per_node(two_node_cluster: str, train_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "spread"
    report = run_train(
        train_store, out, "train.epochs=2", "train.batch_size=512", "model.estimator_steps=2",
        "train.mode=sampled", "train.placement=SPREAD",
        extra=("--address", two_node_cluster, "--workers", "2"),
    )
    assert report["workers"] == 2 and report["epochs_run"] == 2
    nodes = {(out / "pids" / f"rank{r}").read_text().split()[1] for r in (0, 1)}
    assert len(nodes) == 2, "SPREAD placement must put the two workers on different nodes"
