"""Run ``sea-dist train`` as a Ray job: the core of ``sea-dist submit`` and ``sea-dist job``.

A thin layer over :class:`ray.job_submission.JobSubmissionClient`. The working directory is
packaged and uploaded with the job (``runtime_env.working_dir``, minus virtualenvs, runs and
caches), merged with ``cluster/runtime_env.yaml``; the entrypoint is our own CLI, so a job runs
exactly what ``sea-dist train`` runs on a laptop. Retries and sweeps are the submitter's business
(as the Ray Jobs docs put it): ``submit`` sends one job and returns its submission id.

Authentication is Ray's token mode: the client sends the token when ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` are set in its environment (see cluster/README.md).

Exit codes, for scripts (``sea-dist submit --wait``, ``job status``, ``job logs --follow``):

    ====  ==========================================================================
    0     job SUCCEEDED (or, without waiting: the request was carried out)
    1     job FAILED
    2     bad input: flags, config, paths, unknown job id
    3     job STOPPED
    4     refused by the cluster: no token sent, or the wrong one (HTTP 401/403)
    5     the job server cannot be reached (wrong address, cluster down, no tunnel)
    6     ``job status`` only: the job is still PENDING or RUNNING
    ====  ==========================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import requests
import yaml
from pyarrow import fs as pafs
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient

from sea_dist.config import load_config
from sea_dist.errors import ConfigError, SeaDistError

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_STOPPED = 3
EXIT_REFUSED = 4
EXIT_UNREACHABLE = 5
EXIT_NOT_FINISHED = 6

_STATE_EXIT = {
    JobStatus.SUCCEEDED: EXIT_SUCCEEDED,
    JobStatus.FAILED: EXIT_FAILED,
    JobStatus.STOPPED: EXIT_STOPPED,
}

# Never uploaded: environments, outputs and caches (gitwildmatch patterns, as .gitignore).
DEFAULT_EXCLUDES = (
    ".git/", ".venv/", "venv/", "runs/", "__pycache__/", "*.pyc", ".pytest_cache/",
    ".hypothesis/", ".mypy_cache/", ".ruff_cache/", "*.egg-info/", "build/", "dist/",
)
RUNTIME_ENV_FILE = "cluster/runtime_env.yaml"
# Metadata key under which a job records its run directory (``job status`` prints it).
OUTPUT_KEY = "sea_dist_output"


class ClusterRefused(SeaDistError):
    """The job server answered 401/403: no token was sent, or the wrong one."""

    exit_code = EXIT_REFUSED


class ClusterUnreachable(SeaDistError):
    """Nothing answered at the job server address."""

    exit_code = EXIT_UNREACHABLE


def exit_code(status: JobStatus) -> int:
    """The process exit code that stands for a job state (see the module docstring)."""
    return _STATE_EXIT.get(JobStatus(status), EXIT_NOT_FINISHED)


@dataclass(frozen=True)
class TrainJob:
    """What ``sea-dist submit`` sends: a shell command, its runtime environment, its run dir."""

    entrypoint: str
    runtime_env: dict[str, Any]
    output: str


def train_entrypoint(
    config: str,
    overrides: Sequence[str],
    output: str,
    workers: int | None = None,
    resume_with_changes: bool = False,
) -> str:
    """The ``sea-dist train`` command line a job runs, quoted for the job's shell."""
    args = ["sea-dist", "train", "--config", config]
    for override in overrides:
        args += ["--set", override]
    args += ["--output", output, "--quiet"]
    if resume_with_changes:
        args.append("--resume-with-changes")
    if workers is not None:
        args += ["--workers", str(workers)]
    return shlex.join(args)


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """Read a runtime-environment YAML file (``cluster/runtime_env.yaml``).

    Raises:
        ConfigError: if the file is not a mapping, sets ``working_dir`` (``submit`` owns it), or
            puts a Ray token into ``env_vars`` (runtime envs are stored in the GCS and shown
            by the dashboard, so a token there is a token leaked).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read runtime env ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a runtime env must be a mapping, got {type(data).__name__}")
    if "working_dir" in data:
        raise ConfigError(f"{path}: working_dir: set by 'sea-dist submit --working-dir', remove it")
    excludes = data.get("excludes", [])
    if not (isinstance(excludes, list) and all(isinstance(x, str) for x in excludes)):
        raise ConfigError(f"{path}: excludes: must be a list of path patterns")
    for name in data.get("env_vars") or {}:
        if name.startswith("RAY_AUTH_TOKEN"):
            raise ConfigError(
                f"{path}: env_vars.{name}: never ship the token in a runtime env; the cluster's "
                "nodes already hold it (cluster/README.md)"
            )
    return data


def build_runtime_env(
    working_dir: str | Path, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``working_dir`` with the default excludes, merged with ``extra`` (excludes are unioned).

    Raises:
        ConfigError: if Ray rejects the merged runtime environment.
    """
    from ray.runtime_env import RuntimeEnv

    env: dict[str, Any] = {"working_dir": str(Path(working_dir).resolve())}
    excludes = list(DEFAULT_EXCLUDES)
    for key, value in (extra or {}).items():
        if key == "excludes":
            excludes += [pattern for pattern in value if pattern not in excludes]
        else:
            env[key] = value
    env["excludes"] = excludes
    try:
        RuntimeEnv(**env)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"runtime env: {exc}") from None
    return env


def _is_uri(path: str) -> bool:
    return "://" in path


def plan_train_job(
    config: str | Path,
    overrides: Sequence[str],
    output: str,
    *,
    workers: int | None = None,
    working_dir: str | Path = ".",
    runtime_env_file: str | Path | None = None,
    resume_with_changes: bool = False,
) -> TrainJob:
    """Check a training run locally and turn it into a :class:`TrainJob`.

    The config is validated here, so a typo fails before anything is uploaded. Paths are
    checked for what a job needs: the job runs in a temporary copy of ``working_dir`` on the
    head node and its workers run on other nodes, so the config must be inside ``working_dir``
    and the data and the run directory must be absolute paths on storage every node mounts.
    A relative ``data.cache_dir`` is moved under the run directory for the same reason.

    Args:
        config: the run config, inside ``working_dir``.
        overrides: ``section.key=value`` overrides, as for ``sea-dist train --set``.
        output: the run directory: an absolute path on a filesystem every node shares.
        workers: Ray Train workers (default: ``train.workers`` of the config).
        working_dir: the directory uploaded with the job.
        runtime_env_file: YAML merged into the runtime env; default: ``cluster/runtime_env.yaml``
            of ``working_dir`` when it exists.
        resume_with_changes: let the job resume an interrupted run with a different config.

    Raises:
        ConfigError: naming the flag, file or key that cannot work on a cluster.
    """
    root = Path(working_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"--working-dir {working_dir}: not a directory")
    config_path = Path(config).resolve()
    try:
        relative_config = config_path.relative_to(root).as_posix()
    except ValueError:
        raise ConfigError(
            f"{config}: the config must be inside the working directory {root}, which is what "
            "the job uploads"
        ) from None
    cfg = load_config(config_path, list(overrides))

    if _is_uri(output):
        # sea-dist train writes its run directory with local file APIs; a URI would silently
        # become a relative directory inside the job's temporary working directory.
        raise ConfigError(
            f"--output {output}: sea-dist train writes to a mounted filesystem; give the "
            "absolute path where every node mounts the shared storage"
        )
    if not PurePosixPath(output).is_absolute():
        raise ConfigError(
            f"--output {output}: give an absolute path on storage every node shares; a "
            "relative path would land in the job's temporary copy of the working directory"
        )
    if not PurePosixPath(cfg.data.path).is_absolute():
        raise ConfigError(
            f"{config}: data.path {cfg.data.path!r} is relative; jobs run in a temporary copy of "
            "the working directory without runs/ and data, so set an absolute path on shared "
            "storage (--set data.path=/shared/...)"
        )
    overrides = list(overrides)
    if not PurePosixPath(cfg.data.cache_dir).is_absolute():
        overrides.append(f"data.cache_dir={PurePosixPath(output) / 'cache'}")

    if runtime_env_file is None and (root / RUNTIME_ENV_FILE).is_file():
        runtime_env_file = root / RUNTIME_ENV_FILE
    extra = load_runtime_env(runtime_env_file) if runtime_env_file is not None else {}
    return TrainJob(
        entrypoint=train_entrypoint(relative_config, overrides, output, workers, resume_with_changes),
        runtime_env=build_runtime_env(root, extra),
        output=output,
    )


def read_report(output: str) -> dict[str, Any] | None:
    """The run's ``report.json`` if this machine can read ``output`` (a path or a pyarrow URI)."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(output)
        with filesystem.open_input_stream(f"{path.rstrip('/')}/report.json") as stream:
            return json.loads(stream.read())
    except (OSError, ValueError):  # not mounted here, not written, or not JSON
        return None


def _http_address(address: str) -> str:
    return address if "://" in address else f"http://{address}"


class JobClient:
    """A :class:`JobSubmissionClient` whose failures are one-line :class:`SeaDistError` s.

    Args:
        address: the job server (the Ray dashboard), e.g. ``http://127.0.0.1:8265``; a bare
            ``host:port`` means ``http://host:port``.

    Raises:
        ClusterRefused: the token is missing or wrong.
        ClusterUnreachable: nothing answers at ``address``.
    """

    def __init__(self, address: str) -> None:
        self.address = _http_address(address)
        with self._errors():
            try:
                self._client = JobSubmissionClient(self.address)
            except RuntimeError as exc:  # something answered, but not Ray's job API
                raise ClusterUnreachable(f"{self.address}: not a Ray job server ({exc})") from None

    @contextmanager
    def _errors(self, job_id: str | None = None) -> Iterator[None]:
        try:
            yield
        except AuthenticationError as exc:
            # Ray words a 403 (wrong token) "Authentication failed", a 401 "... required".
            raise ClusterRefused(
                self._refusal(wrong_token="Authentication failed" in str(exc))
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                raise ClusterRefused(self._refusal(wrong_token=exc.status == 403)) from None
            raise ClusterUnreachable(f"{self.address}: log stream refused ({exc.status})") from None
        except (ConnectionError, requests.ConnectionError, aiohttp.ClientConnectionError):
            raise ClusterUnreachable(
                f"{self.address}: no Ray job server answers; check the address (the dashboard "
                "port, 8265 by default) and that the SSH tunnel or port-forward is up"
            ) from None
        except RuntimeError as exc:
            if job_id is not None and "404" in str(exc):
                raise SeaDistError(f"{self.address}: no job {job_id!r} on this cluster") from None
            raise

    def _refusal(self, *, wrong_token: bool) -> str:
        if wrong_token:
            reason = "the token sent is not this cluster's token"
        else:
            reason = "no token was sent; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH"
        return f"{self.address}: the cluster refused the request: {reason} (cluster/README.md)"

    def submit(self, job: TrainJob) -> str:
        """Upload the working directory, start the job; returns its submission id."""
        with self._errors():
            return str(
                self._client.submit_job(
                    entrypoint=job.entrypoint,
                    runtime_env=job.runtime_env,
                    metadata={OUTPUT_KEY: job.output},
                )
            )

    def info(self, job_id: str) -> JobDetails:
        with self._errors(job_id):
            return self._client.get_job_info(job_id)

    def status(self, job_id: str) -> JobStatus:
        return JobStatus(self.info(job_id).status)

    def logs(self, job_id: str) -> str:
        """Everything the job's entrypoint has printed so far."""
        with self._errors(job_id):
            return str(self._client.get_job_logs(job_id))

    def follow(self, job_id: str, write: Callable[[str], None]) -> JobStatus:
        """Stream the job's output to ``write`` until it ends; returns the final state."""
        self.info(job_id)  # an unknown id fails here with a clear message, not in the stream
        # Its only INFO line says that the log stream closed, in the middle of the job's output.
        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        with self._errors(job_id):
            asyncio.run(tail())
        return self.wait(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False if it had already ended."""
        with self._errors(job_id):
            return bool(self._client.stop_job(job_id))

    def wait(
        self, job_id: str, *, timeout_s: float | None = None, poll_s: float = 1.0
    ) -> JobStatus:
        """Poll until the job ends; returns the final state.

        Raises:
            SeaDistError: if ``timeout_s`` passes first.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (status := self.status(job_id)).is_terminal():
            if deadline is not None and time.monotonic() > deadline:
                raise SeaDistError(f"job {job_id} still {status} after {timeout_s:g} s")
            time.sleep(poll_s)
        return status
