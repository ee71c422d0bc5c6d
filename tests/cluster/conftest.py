"""Real Ray clusters for the cluster tests, token authentication on.

Two kinds: the laptop cluster of docs/clusters.md section 2 (one node, everything on 127.0.0.1)
and multi-node clusters on this machine. Ray 2.60 can build the latter only on the machine's
address: ``ray start --address`` refuses to add a node with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
and without it Ray replaces 127.0.0.1 with the machine's address, so their servers listen
beyond loopback (still behind the token).

Each cluster lives in its own short temporary directory with its own ports and token, so it
can run beside other Ray clusters on the machine. It is stopped by killing exactly its own
processes (found by that directory or its GCS port): ``ray stop --force`` would kill every
Ray process on the machine, other people's test clusters included.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.train.conftest import train_store  # noqa: F401  the tiny store, shared with tests/train

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
CLUSTERS_DOC = Path(__file__).resolve().parents[2] / "docs" / "clusters.md"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port not handed out before in this session: the kernel may give a just
    closed port again, and one cluster asks for several (two equal ones fail ``ray start``)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def laptop_recipe() -> tuple[dict[str, str], list[str]]:
    """The variables exported and the ``ray start --head`` flags of docs/clusters.md section 2."""
    section = CLUSTERS_DOC.read_text().split("### 2.", 1)[1].split("### 3.", 1)[0]
    script = section.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    env: dict[str, str] = {}
    flags: list[str] | None = None
    for line in script.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])
        elif words[:3] == ["ray", "start", "--head"]:
            flags = words[3:]
    assert flags is not None, "docs/clusters.md section 2 has no `ray start --head` line"
    return env, flags


def kill_processes(procs: Iterable[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is left after 5 s."""
    procs = list(procs)
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, procs = psutil.wait_procs(procs, timeout=grace)
        if not procs:
            break


def processes_naming(root: Path, suffix: str | None = None) -> list[psutil.Process]:
    """Processes with ``root`` in an argument (or one ending in ``suffix``), and their children."""
    owners = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if any(str(root) in arg or (suffix and arg.endswith(suffix)) for arg in args):
            owners.append(proc)
    found = {proc.pid: proc for proc in owners}
    for proc in owners:
        try:
            found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def _client_env(token_path: Path) -> dict[str, str]:
    # A developer's RAY_ADDRESS or token must not leak into the test cluster or its clients.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    # Job entrypoints run `sea-dist` from PATH, as on a node built from cluster/Dockerfile.
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# Ray replaces this 127.0.0.1 with the machine's address (see the module docstring).
_MULTI_NODE_FLAGS = ("--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1")
_START_ATTEMPTS = 3
_HEAD_METRICS_PORTS = ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")


@dataclass
class LocalCluster:
    """Ray nodes started with ``ray start`` on this machine, each with one CPU.

    Attributes:
        root: the cluster's directory (token, Ray temp dirs); short because Ray's unix
            socket paths under it must stay below 108 bytes.
        env: the environment for every process that talks to the cluster: token auth on,
            ``RAY_AUTH_TOKEN_PATH`` pointing at the token, and the head's Prometheus ports
            moved off Ray's fixed defaults (44217, 44227), which another cluster may hold.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sdray-", dir="/tmp")))
    gcs_port: int = 0  # this and the head's other ports: chosen when the head starts
    dashboard_port: int = 0
    client_server_port: int = 0
    metrics_ports: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    metrics_export_ports: list[int] = field(default_factory=list)  # one per node

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

    def _start(self, args: Callable[[], Sequence[str]]) -> None:
        """``ray start`` with ``args()``, then this node's own free ports and directory.

        Nothing here chooses an address: that is up to ``args`` and ``env``. A port handed out
        by ``free_port`` can be taken by another process before Ray binds it, so a failed start
        is killed, warned about with Ray's output, and retried with fresh ports.
        """
        for attempt in range(1, _START_ATTEMPTS + 1):
            node_dir = self.root / f"node{self.nodes}"
            metrics_export_port = free_port()
            ports = [
                "--dashboard-agent-listen-port", str(free_port()),
                "--metrics-export-port", str(metrics_export_port),
                "--runtime-env-agent-port", str(free_port()),
            ]
            try:
                subprocess.run(
                    [RAY, "start", *args(), *ports, "--num-cpus", "1",
                     "--object-store-memory", str(300 * 2**20), "--disable-usage-stats",
                     "--temp-dir", str(node_dir)],
                    check=True, capture_output=True, timeout=120, env=self.env,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                kill_processes(processes_naming(node_dir))
                shutil.rmtree(node_dir, ignore_errors=True)
                output = (err.stderr or b"").decode(errors="replace").strip()[-3000:]
                if attempt == _START_ATTEMPTS:
                    raise RuntimeError(f"ray start failed {attempt} times; last output:\n{output}")
                warnings.warn(f"ray start failed (attempt {attempt}), retrying:\n{output}")
                continue
            self.metrics_export_ports.append(metrics_export_port)
            self.nodes += 1
            return

    def start_head(self, *, dashboard: bool, flags: Sequence[str] = _MULTI_NODE_FLAGS) -> None:
        """Start the head with ``flags``; by default its dashboard (the job server) listens on
        loopback only. This cluster's ports come after ``flags`` and override theirs."""

        def head_args() -> list[str]:
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            self.client_server_port = free_port()
            self.metrics_ports = {name: free_port() for name in _HEAD_METRICS_PORTS}
            self.env.update((name, str(port)) for name, port in self.metrics_ports.items())
            return [
                *flags, "--head", "--port", str(self.gcs_port),
                "--ray-client-server-port", str(self.client_server_port),
                "--include-dashboard", str(dashboard).lower(),
                "--dashboard-port", str(self.dashboard_port),
            ]

        self._start(head_args)

    def add_node(self) -> None:
        self._start(lambda: ["--address", self.gcs_address, *_MULTI_NODE_FLAGS[:2]])

    def processes(self) -> list[psutil.Process]:
        # Every Ray process names the temp dir, except the Ray Client server, which names the
        # GCS address; workers and agents are children of those.
        return processes_naming(self.root, f":{self.gcs_port}")

    def stop(self) -> None:
        """Kill this cluster's processes (and only those), then delete its directory."""
        kill_processes(self.processes())
        shutil.rmtree(self.root, ignore_errors=True)


def start_laptop_cluster() -> LocalCluster:
    """The cluster of docs/clusters.md section 2: one node, started with the variables that
    recipe exports and its ``ray start --head`` flags (with this cluster's token and ports)."""
    env, flags = laptop_recipe()
    cluster = LocalCluster()
    cluster.env.update((k, v) for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH")
    try:
        cluster.start_head(dashboard=True, flags=flags)
    except BaseException:
        cluster.stop()
        raise
    return cluster


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
