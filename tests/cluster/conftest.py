"""Real multi-node Ray clusters on 127.0.0.1 for the cluster tests, token authentication on.

Each cluster lives in its own short temporary directory with its own ports and token, so it
can run beside other Ray clusters on the machine. It is stopped by killing exactly its own
processes (found by that directory or its GCS port): ``ray stop --force`` would kill every
Ray process on the machine, other people's test clusters included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.train.conftest import train_store  # noqa: F401  the tiny store, shared with tests/train

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client_env(token_path: Path) -> dict[str, str]:
    # A developer's RAY_ADDRESS or token must not leak into the test cluster or its clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # Job entrypoints run `sea-dist` from PATH, as on a node built from cluster/Dockerfile.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class LocalCluster:
    """Ray nodes started with ``ray start`` on 127.0.0.1, each with one CPU.

    Attributes:
        root: the cluster's directory (token, Ray temp dirs); short because Ray's unix
            socket paths under it must stay below 108 bytes.
        env: the environment for every process that talks to the cluster: token auth on,
            ``RAY_AUTH_TOKEN_PATH`` pointing at the token.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sdray-", dir="/tmp")))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    nodes: int = 0

    def __post_init__(self) -> None:
        self.token_path = self.root / "token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.env = _client_env(self.token_path)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, *args: str) -> None:
        ports = [
            "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
        ]
        subprocess.run(
            [RAY, "start", *args, *ports, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
             "--object-store-memory", str(300 * 2**20), "--disable-usage-stats",
             "--temp-dir", str(self.root / f"node{self.nodes}")],
            check=True, capture_output=True, timeout=120, env=self.env,
        )
        self.nodes += 1

    def start_head(self, *, dashboard: bool) -> None:
        """Start the head; its dashboard (the job server) listens on loopback only."""
        self._start(
            "--head", "--port", str(self.gcs_port), "--ray-client-server-port", str(free_port()),
            "--include-dashboard", str(dashboard).lower(), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(self.dashboard_port),
        )

    def add_node(self) -> None:
        self._start("--address", self.gcs_address)

    def _processes(self) -> list[psutil.Process]:
        root = str(self.root)
        owners = []
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            # Every Ray process names the temp dir, except the Ray Client server, which names
            # the GCS address; workers and agents are children of those.
            if any(root in arg or arg.endswith(f":{self.gcs_port}") for arg in args):
                owners.append(proc)
        found = {proc.pid: proc for proc in owners}
        for proc in owners:
            try:
                found.update((child.pid, child) for child in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """Kill this cluster's processes (and only those), then delete its directory."""
        procs = self._processes()
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            for proc in procs:
                try:
                    proc.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            _, procs = psutil.wait_procs(procs, timeout=grace)
            if not procs:
                break
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(*, dashboard: bool, num_nodes: int = 2) -> LocalCluster:
    cluster = LocalCluster()
    try:
        cluster.start_head(dashboard=dashboard)
        for _ in range(num_nodes - 1):
            cluster.add_node()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture
def two_node_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A head and a worker node; yields the GCS address.

    The token settings go into this test's environment (undone afterwards), so that
    ``sea-dist train --address`` run as a subprocess authenticates.
    """
    cluster = start_cluster(dashboard=False)
    try:
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            monkeypatch.setenv(key, cluster.env[key])
        yield cluster.gcs_address
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def job_cluster() -> Iterator[LocalCluster]:
    """A head (with the job server) and a worker node, shared by a module's tests."""
    cluster = start_cluster(dashboard=True)
    try:
        yield cluster
    finally:
        cluster.stop()
