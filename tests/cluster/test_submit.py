"""``sea-dist submit`` and ``sea-dist job``: planning checks, then jobs on a two-node cluster."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import psutil
import pytest
import requests
import yaml
from ray.job_submission import JobStatus

from sea_dist.cli import main
from sea_dist.errors import ConfigError
from sea_dist.jobs import DEFAULT_EXCLUDES, exit_code, plan_train_job, train_entrypoint
from tests.cluster.conftest import LocalCluster, free_port
from tests.train.conftest import ROOT, SEA_DIST, epochs_logged, wait_for

CONFIG = "configs/sea.yaml"
QUICK = ("train.epochs=2", "train.batch_size=512", "model.estimator_steps=2", "train.mode=sampled")


def _plan(tmp_path: Path, *overrides: str, output: str | None = None, **kwargs):
    return plan_train_job(
        ROOT / CONFIG, ["data.path=/shared/data/store", *overrides],
        output or str(tmp_path / "run"), working_dir=ROOT, **kwargs,
    )


# Planning: everything that is checked before anything is uploaded.


def test_entrypoint_is_our_cli_and_survives_the_shell() -> None:
    sets = ["train.fanouts=[5, 5]", "data.path=/a b/c"]
    entrypoint = train_entrypoint(CONFIG, sets, "/runs/x", 4)
    assert shlex.split(entrypoint) == [
        "sea-dist", "train", "--config", CONFIG, "--set", "train.fanouts=[5, 5]",
        "--set", "data.path=/a b/c", "--output", "/runs/x", "--quiet", "--workers", "4",
    ]
    resumed = shlex.split(train_entrypoint(CONFIG, [], "/runs/x", resume_with_changes=True))
    assert "--resume-with-changes" in resumed


def test_plan_uploads_the_repo_with_the_runtime_env_file(tmp_path: Path) -> None:
    job = _plan(tmp_path, *QUICK, workers=2)
    args = shlex.split(job.entrypoint)
    assert args[:4] == ["sea-dist", "train", "--config", CONFIG]  # relative to the working dir
    assert args[args.index("--workers") + 1] == "2"
    # The base config's relative cache_dir would be lost with the job's temporary directory.
    assert f"data.cache_dir={tmp_path / 'run' / 'cache'}" in args
    env = job.runtime_env
    assert env["working_dir"] == str(ROOT)
    assert set(DEFAULT_EXCLUDES) <= set(env["excludes"]) and "*.parquet" in env["excludes"]
    assert len(env["excludes"]) == len(set(env["excludes"]))
    file_env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert env["env_vars"] == file_env["env_vars"]
    assert env["config"] == file_env["config"]


def test_plan_keeps_an_absolute_cache_dir(tmp_path: Path) -> None:
    args = shlex.split(_plan(tmp_path, "data.cache_dir=/shared/cache").entrypoint)
    assert not any(a.startswith("data.cache_dir=") and "run" in a for a in args)


@pytest.mark.parametrize(
    ("output", "overrides", "message"),
    [
        ("runs/sea", (), "--output runs/sea: give an absolute path"),
        ("s3://bucket/runs/sea", (), "--output s3://bucket/runs/sea: sea-dist train writes"),
        (None, ("data.path=runs/data/demo",), "data.path 'runs/data/demo' is relative"),
        (None, ("train.epoch=3",), "train.epoch: unknown key"),
    ],
)
def test_plan_rejects_what_cannot_work_on_a_cluster(
    tmp_path: Path, output: str | None, overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _plan(tmp_path, *overrides, output=output)


def test_plan_rejects_a_config_outside_the_working_dir(tmp_path: Path) -> None:
    outside = tmp_path / "sea.yaml"
    outside.write_text((ROOT / CONFIG).read_text())
    with pytest.raises(ConfigError, match="must be inside the working directory"):
        plan_train_job(outside, ["data.path=/d"], "/runs/x", working_dir=ROOT)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("env_vars:\n  RAY_AUTH_TOKEN: abc\n", "env_vars.RAY_AUTH_TOKEN: never ship the token"),
        ("working_dir: /elsewhere\n", "working_dir: set by 'sea-dist submit"),
        ("- a list\n", "must be a mapping"),
        ("excludes: runs/\n", "excludes: must be a list"),
        ("pip: 3\n", "runtime env:"),
    ],
)
def test_plan_rejects_bad_runtime_env_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "env.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        _plan(tmp_path, runtime_env_file=path)


def test_exit_codes_of_job_states() -> None:
    codes = {state: exit_code(state) for state in JobStatus}
    assert codes == {
        JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.STOPPED: 3,
        JobStatus.PENDING: 6, JobStatus.RUNNING: 6,
    }


def test_cli_exit_codes_without_a_cluster(tmp_path: Path) -> None:
    submit = ["submit", "--config", str(ROOT / CONFIG), "--working-dir", str(ROOT),
              "--set", "data.path=/shared/store", "--output", str(tmp_path / "run")]
    assert main([*submit, "--address", f"127.0.0.1:{free_port()}"]) == 5  # nobody listens
    assert main([*submit[:-2], "--output", "relative/run", "--address", "127.0.0.1:1"]) == 2
    assert main(["job", "status", "raysubmit_x", "--address", f"127.0.0.1:{free_port()}"]) == 5


# Real jobs on a head plus a worker node, token authentication on.


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sea_dist(cluster: LocalCluster, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEA_DIST, "--log-level", "WARNING", *args], cwd=ROOT, env=env or cluster.env,
        capture_output=True, text=True, timeout=timeout,
    )


def _submit_args(cluster: LocalCluster, store: Path, out: Path, *sets: str) -> list[str]:
    args = ["submit", "--address", cluster.dashboard_url, "--config", CONFIG, "--output", str(out),
            "--set", f"data.path={store}", "--set", f"data.cache_dir={out.parent / 'cache'}"]
    return [*args, *[a for s in sets for a in ("--set", s)]]


@pytest.mark.slow
def test_requests_without_the_token_are_refused(job_cluster: LocalCluster, tmp_path: Path) -> None:
    url = job_cluster.dashboard_url
    # The job server itself refuses, whatever the client: anyone reaching the port gets 401.
    bare = requests.post(f"{url}/api/jobs/", json={"entrypoint": "id"}, timeout=10)
    assert bare.status_code == 401
    wrong = {**job_cluster.env, "RAY_AUTH_TOKEN": "0" * 64}  # RAY_AUTH_TOKEN wins over the path
    missing = {k: v for k, v in job_cluster.env.items() if not k.startswith("RAY_AUTH")}
    args = _submit_args(job_cluster, Path("/shared/store"), tmp_path / "run")
    for env, reason in ((missing, "no token was sent"), (wrong, "not this cluster's token")):
        result = _sea_dist(job_cluster, *args, env=env)
        assert result.returncode == 4, result.stderr
        assert "the cluster refused the request" in result.stderr and reason in result.stderr
        assert result.stdout == ""
        status = _sea_dist(job_cluster, "job", "status", "raysubmit_x", "--address", url, env=env)
        assert status.returncode == 4
    # The dashboard, and with it the job API, is bound to loopback only.
    listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == job_cluster.dashboard_port}
    assert listening == {"127.0.0.1"}


@pytest.mark.slow
def test_submit_wait_trains_on_both_nodes(
    job_cluster: LocalCluster, train_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sea"
    result = _sea_dist(
        job_cluster, *_submit_args(job_cluster, train_store, out, *QUICK, "train.placement=SPREAD"),
        "--workers", "2", "--wait", timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    job_id = result.stdout.strip()
    assert re.fullmatch(r"raysubmit_\w+", job_id)
    assert f"job {job_id}: SUCCEEDED" in result.stderr
    assert f"report: {out}/report.json" in result.stderr

    report = json.loads((out / "report.json").read_text())
    assert report["workers"] == 2 and report["epochs_run"] == 2
    assert all(0.0 <= v <= 1.0 for k, v in report["test"].items() if "@" in k)
    nodes = {(out / "pids" / f"rank{r}").read_text().split()[1] for r in (0, 1)}
    assert len(nodes) == 2, "the job's two workers must run on the two nodes"

    status = _sea_dist(job_cluster, "job", "status", job_id, "--address", job_cluster.dashboard_url)
    assert (status.returncode, status.stdout.strip()) == (0, "SUCCEEDED")
    assert f"output: {out}" in status.stderr
    logs = _sea_dist(job_cluster, "job", "logs", job_id, "--address", job_cluster.dashboard_url)
    assert logs.returncode == 0 and f"sea-dist train --config {CONFIG}" in logs.stdout


@pytest.mark.slow
def test_stop_ends_a_running_job(
    job_cluster: LocalCluster, train_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "long"
    address = ("--address", job_cluster.dashboard_url)
    result = _sea_dist(job_cluster, *_submit_args(
        job_cluster, train_store, out, *QUICK, "train.epochs=1000", "train.patience=1000",
    ), "--workers", "2")
    assert result.returncode == 0, result.stderr[-4000:]
    job_id = result.stdout.strip()
    wait_for(lambda: epochs_logged(out) >= 1, 240, "the first epoch")
    running = _sea_dist(job_cluster, "job", "status", job_id, *address)
    assert (running.returncode, running.stdout.strip()) == (6, "RUNNING")
    workers = [int((out / "pids" / f"rank{r}").read_text().split()[0]) for r in (0, 1)]

    stop = _sea_dist(job_cluster, "job", "stop", job_id, *address)
    assert stop.returncode == 0, stop.stderr
    assert f"job {job_id}: STOPPED" in stop.stderr
    status = _sea_dist(job_cluster, "job", "status", job_id, *address)
    assert (status.returncode, status.stdout.strip()) == (3, "STOPPED")
    follow = _sea_dist(job_cluster, "job", "logs", "--follow", job_id, *address)
    assert follow.returncode == 3
    # Stopping the driver takes the Ray Train workers with it, on both nodes.
    wait_for(lambda: not any(_alive(pid) for pid in workers), 60, "the workers to exit")
    assert not (out / "report.json").exists()
