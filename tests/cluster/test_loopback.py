"""Nothing of a laptop's Ray instance listens beyond loopback.

Two instances: the cluster of docs/clusters.md section 2, started with the variables and the
``ray start --head`` flags of that recipe, and the private instance that ``sea-dist train``
starts (:func:`sea_dist.train.trainer._connect`). With a driver and a worker running, each test
lists every listening TCP socket and every bound, unconnected UDP socket of the instance's
processes and fails naming those that are not on 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from tests.cluster.conftest import (
    RAY,
    free_port,
    kill_processes,
    laptop_recipe,
    processes_naming,
    start_laptop_cluster,
)

ROOT = Path(__file__).resolve().parents[2]

# A driver that starts one worker, writes what Ray says of the node and of that worker to the
# file argv[2], and keeps it all running until argv[2] + ".stop" exists. argv[1] says how it
# connects: as a job's entrypoint does (Ray sets RAY_ADDRESS for it), or as `sea-dist train`
# does without an address (a private instance).
_DRIVER = """
import json, os, sys, time
from pathlib import Path

import ray

if sys.argv[1] == "private":
    from sea_dist.train.trainer import _connect

    _connect(None, 2)
else:
    ray.init()


@ray.remote
def worker_view():
    return ray.util.get_node_ip_address(), os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


worker_ip, worker_flag = ray.get(worker_view.remote())
(node,) = ray.nodes()
info = {"gcs": ray.get_runtime_context().gcs_address, "node_ip": node["NodeManagerAddress"],
        "worker_ip": worker_ip, "worker_flag": worker_flag, "pid": os.getpid(),
        "metrics_export_port": node["MetricsExportPort"]}
report = Path(sys.argv[2])
Path(f"{report}.tmp").write_text(json.dumps(info))
os.replace(f"{report}.tmp", report)
deadline = time.monotonic() + 300
while not Path(f"{report}.stop").exists() and time.monotonic() < deadline:
    time.sleep(0.2)
ray.shutdown()
"""


def _driver_command(where: Path, mode: str) -> list[str]:
    script = where / "driver.py"
    script.write_text(_DRIVER)
    return [sys.executable, str(script), mode, str(where / "driver.json")]


def _driver_info(where: Path, alive: Callable[[], str | None], timeout: float = 120) -> dict:
    """The driver's report, once its worker has run; ``alive`` says why not, if it ended."""
    report = where / "driver.json"
    deadline = time.monotonic() + timeout
    while not report.exists():
        failure = alive()
        if failure is not None or time.monotonic() > deadline:
            raise AssertionError(f"the driver did not report: {failure or 'timed out'}")
        time.sleep(0.3)
    return dict(json.loads(report.read_text()))


@dataclass(frozen=True)
class Bound:
    """A socket that others could reach: a listening TCP socket or an unconnected UDP one."""

    kind: str
    ip: str
    port: int
    pid: int
    process: str

    def __str__(self) -> str:
        return f"{self.kind} {self.ip} port {self.port}: {self.process} (pid {self.pid})"


def _describe(proc: psutil.Process) -> str:
    """The process name, with the script or module for Python processes (dashboard, monitor...)."""
    try:
        name, args = proc.name(), proc.cmdline()
    except psutil.Error:
        return "?"
    if name.startswith("python"):
        for i, arg in enumerate(args[1:], 1):
            if arg == "-m" and i + 1 < len(args):
                return f"{name} -m {args[i + 1]}"
            if arg.endswith(".py"):
                return f"{name} {Path(arg).name}"
    return name


def bound_sockets(procs: list[psutil.Process]) -> list[Bound]:
    by_pid = {proc.pid: proc for proc in procs}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid not in by_pid or not conn.laddr:
            continue
        if conn.type == socket.SOCK_STREAM and conn.status != psutil.CONN_LISTEN:
            continue
        if conn.type == socket.SOCK_DGRAM and conn.raddr:  # takes datagrams from its peer only
            continue
        kind = "tcp" if conn.type == socket.SOCK_STREAM else "udp"
        process = _describe(by_pid[conn.pid])
        found.append(Bound(kind, conn.laddr.ip, conn.laddr.port, conn.pid, process))
    return sorted(found, key=lambda b: (b.process, b.port))


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1, as Ray's C++ servers bind it
    return addr.is_loopback


def assert_loopback_only(sockets: list[Bound]) -> None:
    beyond = [sock for sock in sockets if not is_loopback(sock.ip)]
    if beyond:
        pytest.fail("listening beyond loopback:\n" + "\n".join(map(str, beyond)), pytrace=False)


def wait_for_ports(
    processes: Callable[[], list[psutil.Process]], expected: dict[int, str], timeout: float = 60
) -> list[Bound]:
    """The bound sockets once every port of ``expected`` (port: what) listens: the agents and
    the metrics servers come up a little after ``ray start`` and ``ray.init`` return."""
    deadline = time.monotonic() + timeout
    while True:
        sockets = bound_sockets(processes())
        missing = [f"{what} ({port})" for port, what in expected.items()
                   if port not in {sock.port for sock in sockets}]
        if not missing:
            return sockets
        if time.monotonic() > deadline:
            raise AssertionError(f"not listening after {timeout:.0f} s: {', '.join(missing)}")
        time.sleep(0.5)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_laptop_recipe_listens_on_loopback_only() -> None:
    recipe_env, _ = laptop_recipe()
    assert recipe_env.get("RAY_AUTH_MODE") == "token", "the recipe must keep token auth on"
    cluster = start_laptop_cluster()
    try:
        # The driver is a job's entrypoint, as `sea-dist submit` starts `sea-dist train`.
        submit = subprocess.run(
            [RAY, "job", "submit", "--address", cluster.dashboard_url, "--no-wait",
             "--submission-id", "loopback", "--", *_driver_command(cluster.root, "job")],
            env=cluster.env, capture_output=True, text=True, timeout=120,
        )
        assert submit.returncode == 0, submit.stderr[-3000:]
        auth = {"Authorization": f"Bearer {cluster.token_path.read_text()}"}

        def alive() -> str | None:
            job = requests.get(f"{cluster.dashboard_url}/api/jobs/loopback", headers=auth,
                               timeout=10).json()
            return None if job["status"] in ("PENDING", "RUNNING") else str(job)

        info = _driver_info(cluster.root, alive)
        metrics = {
            cluster.metrics_export_ports[0]: "node metrics (--metrics-export-port)",
            cluster.metrics_ports["AUTOSCALER_METRIC_PORT"]: "autoscaler metrics",
            cluster.metrics_ports["DASHBOARD_METRIC_PORT"]: "dashboard metrics",
        }
        expected = {
            cluster.gcs_port: "GCS", cluster.dashboard_port: "dashboard",
            cluster.client_server_port: "Ray Client server", **metrics,
        }
        sockets = wait_for_ports(cluster.processes, expected)
        assert any(sock.pid == info["pid"] for sock in sockets), "no socket of the job's driver"
        assert_loopback_only(sockets)
        for port, what in metrics.items():
            # Prometheus endpoints answer without the token: loopback is all that guards them.
            assert {sock.ip for sock in sockets if sock.port == port} == {"127.0.0.1"}, what
            assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
        # The job and its workers inherit the variable from `ray start`, so they too look for
        # the cluster on 127.0.0.1.
        assert info["node_ip"] == info["worker_ip"] == "127.0.0.1"
        assert info["worker_flag"] == "0"
    finally:
        cluster.stop()


@pytest.fixture
def private_root() -> Iterator[Path]:
    """RAY_TMPDIR of the private instance (short: Ray's unix sockets live under it); whatever
    runs there is killed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="sdinit-", dir="/tmp"))
    try:
        yield root
    finally:
        kill_processes(processes_naming(root))
        shutil.rmtree(root, ignore_errors=True)


def test_private_instance_of_sea_dist_train_listens_on_loopback_only(private_root: Path) -> None:
    token = private_root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    metrics = {"AUTOSCALER_METRIC_PORT": free_port(), "DASHBOARD_METRIC_PORT": free_port()}
    # No RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER here (the CLI sets it): _connect must do without.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_TMPDIR=str(private_root),
        PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
        **{name: str(port) for name, port in metrics.items()},
    )
    with (private_root / "driver.log").open("wb") as log:
        driver = subprocess.Popen(_driver_command(private_root, "private"), cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        def alive() -> str | None:
            if driver.poll() is None:
                return None
            return f"it exited with {driver.returncode}:\n" + (
                (private_root / "driver.log").read_text()[-3000:])

        info = _driver_info(private_root, alive)
        gcs_port = int(str(info["gcs"]).rsplit(":", 1)[1])
        expected = {
            gcs_port: "GCS", int(str(info["metrics_export_port"])): "node metrics",
            metrics["AUTOSCALER_METRIC_PORT"]: "autoscaler metrics",
            metrics["DASHBOARD_METRIC_PORT"]: "dashboard metrics",
        }
        # ray.init starts the instance as children of the driver; workers are the raylet's.
        sockets = wait_for_ports(lambda: _tree(driver.pid), expected)
        assert_loopback_only(sockets)
        assert info["node_ip"] == info["worker_ip"] == "127.0.0.1"
    finally:
        (private_root / "driver.json.stop").touch()  # the driver shuts its instance down
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
