"""Content checks before training: verify_store_cached hashes once per state of the files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sea_dist.cli import main
from sea_dist.data import npyio
from sea_dist.data.store import Store, is_verified, open_store, verify_store_cached
from sea_dist.errors import DataError

FEATURES = "features/image.npy"


@pytest.fixture
def store(tiny_store: Store, tmp_path: Path) -> Store:
    """A private copy of the tiny store, free to damage."""
    return open_store(shutil.copytree(tiny_store.path, tmp_path / "store"))


def _flip_body_bytes(path: Path, keep_mtime: bool = False) -> None:
    """Corrupt the matrix body while leaving the header, and so open_store's checks, intact."""
    stat = path.stat()
    offset = npyio.read_header(path).offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = bytes(b ^ 0xFF for b in data[offset : offset + 8])
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
    }


def test_corrupt_body_is_refused_and_not_cached(store: Store, tmp_path: Path) -> None:
    _flip_body_bytes(store.path / FEATURES)
    reopened = open_store(store.path)  # sizes and headers are still right
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        verify_store_cached(reopened, cache)
    assert str(info.value) == (
        f"{store.path / FEATURES}: content does not match its checksum in meta.json "
        "(file changed or corrupt)"
    )
    assert not (cache / "verified").exists()
    with pytest.raises(DataError, match="content does not match"):  # still refused next time
        verify_store_cached(reopened, cache)


def test_verdict_is_cached_and_keyed_on_size_and_mtime(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = _snapshot(store.path)
    assert not is_verified(store, cache)
    verify_store_cached(store, cache)
    assert _snapshot(store.path) == before  # nothing written into the store
    (verdict,) = (cache / "verified").iterdir()
    record = json.loads(verdict.read_text())
    assert record["path"] == str(store.path.resolve())
    assert set(record["files"]) == set(store.meta["checksums"])
    assert record["files"][FEATURES]["size"] == (store.path / FEATURES).stat().st_size
    assert is_verified(store, cache)
    stamp = verdict.stat().st_mtime_ns

    # The trade-off: same size, same mtime -> the cached verdict stands and nothing is hashed.
    _flip_body_bytes(store.path / FEATURES, keep_mtime=True)
    verify_store_cached(store, cache)
    assert verdict.stat().st_mtime_ns == stamp
    assert [p.name for p in (cache / "verified").iterdir()] == [verdict.name]

    # A new mtime (touch, copy, replace) changes the key: re-hashed, refused.
    path = store.path / FEATURES
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert not is_verified(store, cache)
    with pytest.raises(DataError, match=r"features/image\.npy: content does not match"):
        verify_store_cached(store, cache)


def test_sizes_and_headers_are_checked_even_with_a_verdict(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    verify_store_cached(store, cache)
    path = store.path / FEATURES
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"features/image\.npy: file truncated"):
        verify_store_cached(store, cache)


def test_rehash_ignores_the_verdict(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    verify_store_cached(store, cache)
    _flip_body_bytes(store.path / FEATURES, keep_mtime=True)
    with pytest.raises(DataError, match="content does not match"):
        verify_store_cached(store, cache, rehash=True)


def test_inspect_reports_verification(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "inspect", str(store.path), "--cache-dir", str(tmp_path / "cache")]

    def verified(*flags: str) -> str:
        assert main([*args, "--json", *flags]) == 0
        return json.loads(capsys.readouterr().out)["verified"]

    assert verified() == "no"
    assert verified("--verify") == "rehashed"
    assert verified() == "cached"  # --verify left a verdict a training run will reuse
    assert main(args) == 0
    assert "(verified before)" in capsys.readouterr().out
