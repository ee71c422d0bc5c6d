"""Every file in cluster/ parses, pins the stack of pyproject.toml and keeps the cluster closed."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from ray.autoscaler._private.util import prepare_config, validate_config

from sea_dist.cli import app
from sea_dist.config import load_config
from sea_dist.jobs import build_runtime_env, load_runtime_env

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PINS = {
    req.name: str(req.specifier).removeprefix("==")
    for req in map(Requirement, PROJECT["dependencies"])
    if str(req.specifier).startswith("==")
}
IMAGE = f"registry.example.com/sea-dist:{PROJECT['version']}"
LAUNCHER_FILES = ("cluster.yaml", "cluster-local.yaml")


def _yaml(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (CLUSTER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def _dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in _dockerfile() if op == "ARG")


def test_every_file_in_cluster_is_covered() -> None:
    assert {p.name for p in CLUSTER.iterdir()} == {
        "Dockerfile", "README.md", "runtime_env.yaml", "rayjob.yaml", *LAUNCHER_FILES,
    }


def test_readme_names_the_pinned_stack() -> None:
    assert {"torch", "dgl", "torchdata", "ray"} <= set(PINS)
    readme = (CLUSTER / "README.md").read_text()
    for name, version in PINS.items():
        assert f"{name} {version}" in readme, f"cluster/README.md must name {name} {version}"


def test_dockerfile_pins_python_and_the_stack() -> None:
    steps = _dockerfile()
    args = _dockerfile_args()
    python = args["PYTHON_VERSION"]
    assert re.fullmatch(r"3\.11\.\d+", python)
    assert python in SpecifierSet(PROJECT["requires-python"])
    assert [arg for op, arg in steps if op == "FROM"] == ["python:${PYTHON_VERSION}-slim-bookworm"]
    installs = " ".join(arg for op, arg in steps if op == "RUN" and "pip install" in arg)
    for name, version in PINS.items():
        var = f"{name.upper()}_VERSION"
        assert args[var] == version, f"Dockerfile ARG {var}: pyproject pins {name}=={version}"
        assert re.search(rf'"{name}(\[[\w,]+\])?==\${{{var}}}"', installs), name
    assert "pip install . && pip check" in installs  # every other range comes from pyproject
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "RAY_AUTH_MODE=token" in env.split()
    assert ("WORKDIR", "/opt/sea-dist") in steps and ("COPY", "configs ./configs") in steps
    users = [arg for op, arg in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_config_is_valid_and_closed(name: str) -> None:
    raw = _yaml(name)
    config = prepare_config(raw)
    validate_config(config)  # Ray's own schema and checks, as `ray up` runs them

    assert raw["docker"]["image"] == IMAGE
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert "--volume /mnt/shared:/mnt/shared" in raw["docker"]["run_options"]
    # The token is a file mount from outside the repository, at the path Ray reads by default.
    (source,) = [src for dst, src in raw["file_mounts"].items() if dst == "~/.ray/auth_token"]
    assert ROOT not in Path(source).expanduser().resolve().parents

    head, worker = raw["head_start_ray_commands"], raw["worker_start_ray_commands"]
    for commands in (head, worker):
        (start,) = [cmd for cmd in commands if "ray start" in cmd]
        assert "RAY_AUTH_MODE=token ray start" in start
    head_start = shlex.split([cmd for cmd in head if "ray start" in cmd][0])
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (CLUSTER / name).read_text()


# What Ray would otherwise pick at random (and the workers' range, Ray's default): pinned, the
# same on every node, so that a firewall can name them.
NODE_PORT_FLAGS = (
    "--node-manager-port", "--object-manager-port", "--min-worker-port", "--max-worker-port",
    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
)


def _start_flags(commands: list[str]) -> dict[str, str]:
    (start,) = [cmd for cmd in commands if "ray start" in cmd]
    args = shlex.split(start)
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_nodes_pin_the_ports_the_readme_lists(name: str) -> None:
    raw = _yaml(name)
    head = _start_flags(raw["head_start_ray_commands"])
    worker = _start_flags(raw["worker_start_ray_commands"])
    pinned = {flag: head.get(flag) for flag in NODE_PORT_FLAGS}
    assert None not in pinned.values(), f"the head leaves ports to chance: {pinned}"
    assert {flag: worker.get(flag) for flag in NODE_PORT_FLAGS} == pinned, "head and workers differ"
    readme = (CLUSTER / "README.md").read_text()
    table = readme.split("## Ports", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    worker_range = pinned.pop("--min-worker-port") + "–" + pinned.pop("--max-worker-port")
    for port in (head["--port"], head["--dashboard-port"], worker_range, *pinned.values()):
        assert port in rows, f"cluster/README.md, Ports: no row for {port}"


def _containers(job: dict[str, Any]) -> list[dict[str, Any]]:
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_rayjob_pins_auth_and_service() -> None:
    job = _yaml("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == PINS["ray"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "sea-dist-ray-token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    containers = _containers(job)
    assert len(containers) == 2 and {c["image"] for c in containers} == {IMAGE}
    for container in containers:
        for env in container.get("env", []):
            assert not env["name"].startswith("RAY_AUTH_TOKEN") or "value" not in env
        assert {"name": "shared", "mountPath": "/mnt/shared"} in container["volumeMounts"]
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env == {"env_vars": _yaml("runtime_env.yaml")["env_vars"]}


def test_rayjob_entrypoint_is_a_valid_training_run() -> None:
    job = _yaml("rayjob.yaml")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["sea-dist", "train"]
    # Parse it with the real CLI: an unknown or misspelt flag fails here.
    root = typer.main.get_command(app)
    train = root.get_command(root.make_context("sea-dist", ["train"]), "train")
    params = train.make_context("train", argv[2:]).params
    config = params["config"]
    assert config.startswith("/opt/sea-dist/configs/")  # the image's copy of configs/
    cfg = load_config(ROOT / config.removeprefix("/opt/sea-dist/"), params["overrides"])
    assert cfg.data.path.startswith("/mnt/shared/")
    assert cfg.data.cache_dir.startswith("/mnt/shared/")
    assert params["output"].startswith("/mnt/shared/runs/")
    assert params["workers"] == job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    assert params["quiet"] is True


def test_runtime_env_file_is_what_submit_sends() -> None:
    extra = load_runtime_env(CLUSTER / "runtime_env.yaml")
    assert not {"pip", "conda", "uv", "working_dir"} & set(extra)  # the image holds the stack
    env = build_runtime_env(ROOT, extra)  # Ray's RuntimeEnv accepts it
    assert env["env_vars"]["DGLBACKEND"] == "pytorch"
    assert {".venv/", "runs/", ".git/", "*.parquet"} <= set(env["excludes"])


@pytest.mark.parametrize("path", sorted(CLUSTER.iterdir()), ids=lambda p: p.name)
def test_no_token_in_any_file(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), "a token-like hex string"
    assert not re.search(r"RAY_AUTH_TOKEN(?!_PATH)\w*\s*[:=]\s*[\"']?\w", text)
    if path.suffix == ".yaml":
        for doc in yaml.safe_load_all(text):
            assert doc.get("kind") != "Secret", "secrets are created with kubectl, not committed"
