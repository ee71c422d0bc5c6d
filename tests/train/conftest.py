import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEA_DIST = str(Path(sys.executable).with_name("sea-dist"))


def train_cmd(store_path: Path, out: Path, *sets: str, config: str = "configs/sea.yaml",
              extra: tuple[str, ...] = ()) -> list[str]:
    return [
        SEA_DIST, "--log-level", "WARNING", "train", "--config", str(ROOT / config),
        "--output", str(out), "--quiet",
        "--set", f"data.path={store_path}", "--set", f"data.cache_dir={out.parent / 'cache'}",
        *[arg for s in sets for arg in ("--set", s)], *extra,
    ]


def run_train(store_path: Path, out: Path, *sets: str, config: str = "configs/sea.yaml",
              extra: tuple[str, ...] = (), timeout: float = 600) -> dict:
    result = subprocess.run(train_cmd(store_path, out, *sets, config=config, extra=extra), cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "report.json").read_text())


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def epochs_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def worker_pid(out: Path, rank: int) -> int:
    return int((out / "pids" / f"rank{rank}").read_text().split()[0])


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def train_store(tiny_store):
    """The tiny synthetic store every training test shares."""
    return Path(tiny_store.path)
