"""Open and write stores: the directory format described in :mod:`sea_dist.data.schema`.

Readers (:func:`open_store`) check the format version, that every file has a checksum in
``meta.json``, and that every file is present and as long as its header says; they do not
re-hash content on open (a million-item store has gigabytes of features), which
:func:`verify_store` and ``sea-dist data inspect --verify`` do on request, and
:func:`verify_store_cached` does once per state of the files before training.

Writers go through :func:`write_store`, which builds the store in a temporary sibling
directory and renames it into place only when everything was written and validated, so a
failed import or generation leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sea_dist import __version__
from sea_dist.data import npyio
from sea_dist.data.schema import (
    FORMAT_VERSION,
    ID_MAP_FILES,
    INTERACTIONS_FILE,
    ITEM_ID,
    LABELS_FILE,
    META_FILE,
    ORIGINAL_ID,
    REQUIRED_META_KEYS,
    SPLIT,
    SPLIT_NAMES,
    USER_ID,
    feature_file,
    id_map_schema,
    interactions_schema,
)
from sea_dist.data.validate import require_finite
from sea_dist.errors import DataError
from sea_dist.io import atomic_dir, atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "Store",
    "StoreWriter",
    "is_verified",
    "open_store",
    "resolve_store",
    "verify_store",
    "verify_store_cached",
    "write_store",
]

log = logging.getLogger(__name__)

_HASH_BLOCK = 8 << 20
# Under a cache directory: one JSON file per passing verdict of verify_store_cached.
_VERIFIED_DIR = "verified"


@dataclass(frozen=True)
class Store:
    """An opened, validated store. Arrays are read lazily; features stay memory-mapped.

    Attributes:
        path: the store directory.
        meta: the parsed ``meta.json``.
        num_users: users are ``0 .. num_users-1``.
        num_items: items are ``0 .. num_items-1``.
        modalities: modality name -> feature width, in ``meta.json`` order.
        checksum: one digest over all content checksums; a cache key for derived data.
    """

    path: Path
    meta: dict[str, Any] = field(repr=False)
    num_users: int
    num_items: int
    modalities: dict[str, int]
    checksum: str

    def interactions(self, columns: list[str] | None = None) -> pa.Table:
        """Read ``interactions.parquet`` (all columns, or the named ones)."""
        return pq.read_table(self.path / INTERACTIONS_FILE, columns=columns)

    def edges(self, split: int) -> tuple[np.ndarray, np.ndarray]:
        """``(user_ids, item_ids)`` as int64 arrays for one split (0 train, 1 valid, 2 test)."""
        if split not in (0, 1, 2):
            raise ValueError(f"split must be 0, 1 or 2, got {split}")
        table = self.interactions([USER_ID, ITEM_ID, SPLIT])
        table = table.filter(pc.equal(table[SPLIT], pa.scalar(split, pa.int8())))
        return (
            table[USER_ID].to_numpy().astype(np.int64),
            table[ITEM_ID].to_numpy().astype(np.int64),
        )

    def features(self, modality: str) -> np.ndarray:
        """The ``[num_items, width]`` matrix of ``modality``, memory-mapped read-only."""
        if modality not in self.modalities:
            raise DataError(
                f"{self.path / META_FILE}: no modality {modality!r} "
                f"(has {', '.join(self.modalities) or 'none'})"
            )
        return np.load(self.path / self.meta["modalities"][modality]["file"], mmap_mode="r")

    def labels(self) -> np.ndarray | None:
        """Per-item integer categories (``[num_items]`` int64), or None if the store has none."""
        if self.meta["labels"] is None:
            return None
        return np.load(self.path / self.meta["labels"]["file"]).astype(np.int64)


def open_store(path: str | Path) -> Store:
    """Open the store at ``path`` after checking its ``meta.json`` and files.

    Raises:
        DataError: naming the file and key of the first problem found.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{path}: not a store (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object at the top level")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"{meta_path}: key format_version: {version!r} is not supported "
            f"(this sea-dist reads format {FORMAT_VERSION}; re-import the data)"
        )
    for key in REQUIRED_META_KEYS:
        if key not in meta:
            raise DataError(f"{meta_path}: key {key} is missing")
    try:
        modalities = _check_files(path, meta)
        num_users, num_items = int(meta["num_users"]), int(meta["num_items"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        # A hand-edited meta.json with the right keys but the wrong shapes of values.
        raise DataError(f"{meta_path}: malformed ({type(exc).__name__}: {exc})") from None
    checksums = meta["checksums"]
    digest = hashlib.sha256(json.dumps(sorted(checksums.items())).encode()).hexdigest()
    return Store(
        path=path,
        meta=meta,
        num_users=num_users,
        num_items=num_items,
        modalities=modalities,
        checksum=digest,
    )


def verify_store(store: Store) -> None:
    """Re-hash every content file and compare with ``meta.json``.

    Raises:
        DataError: naming the first file whose content changed.
    """
    for name in _content_files(store.meta):
        actual = file_digest(store.path / name)
        if actual != store.meta["checksums"][name]:
            raise DataError(
                f"{store.path / name}: content does not match its checksum in {META_FILE} "
                "(file changed or corrupt)"
            )


def verify_store_cached(store: Store, cache_dir: str | Path, *, rehash: bool = False) -> None:
    """Check ``store`` before training: sizes and headers always, content once per file state.

    A passing verdict of :func:`verify_store` is cached in ``<cache_dir>/verified/<key>.json``,
    keyed by the store's absolute path and each content file's size, ``mtime_ns`` and expected
    checksum, so a later call on unchanged files hashes nothing. Replacing or touching a file
    changes its mtime and forces a re-hash; an edit that keeps both size and mtime (``os.utime``)
    goes unnoticed, the price of not reading gigabytes of features before every run. Nothing is
    written into the store, which may be a read-only shared data set.

    Args:
        store: an opened store.
        cache_dir: where verdicts are cached (the run's ``data.cache_dir``).
        rehash: hash even if a verdict is cached (``sea-dist data inspect --verify``).

    Raises:
        DataError: naming the first file whose size, header or content is wrong.
    """
    _check_files(store.path, store.meta)
    # Stat before hashing: a file replaced meanwhile gets a new key, so its verdict is not reused.
    path, record = _verdict(store, cache_dir)
    if path.is_file() and not rehash:
        log.debug("%s: content verified before (%s)", store.path, path)
        return
    log.info("verifying the checksums of %s", store.path)
    verify_store(store)
    record["verified_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["created_by"] = f"sea-dist {__version__}"
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def is_verified(store: Store, cache_dir: str | Path) -> bool:
    """Whether :func:`verify_store_cached` holds a passing verdict for the files as they are."""
    return _verdict(store, cache_dir)[0].is_file()


def _verdict(store: Store, cache_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The verdict file for the store's current files, and what its key is made of."""
    files = {}
    for name in _content_files(store.meta):
        stat = (store.path / name).stat()
        files[name] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "checksum": store.meta["checksums"][name],
        }
    record: dict[str, Any] = {"path": str(store.path.resolve()), "files": files}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / _VERIFIED_DIR / f"{key}.json", record


def resolve_store(path: str | Path, cache_dir: str | Path) -> Store:
    """Open a store directory, or import an MMRec directory once into ``cache_dir``.

    The cache entry is keyed by the names, sizes and modification times of the source
    files, so editing or replacing a source file triggers a fresh import. Concurrent callers
    (one per Ray worker) serialise on a lock file and the later ones reuse the import.

    Raises:
        DataError: if ``path`` is neither a store nor an MMRec directory, or is invalid.
    """
    path = Path(path)
    if (path / META_FILE).is_file():
        return open_store(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such directory")
    if not any(path.glob("*.inter")):
        raise DataError(f"{path}: neither a store ({META_FILE}) nor an MMRec directory (*.inter)")
    from sea_dist.data.mmrec import import_mmrec  # mmrec builds on this module

    sources = sorted(p for p in path.iterdir() if p.is_file())
    key_text = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sources])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{path.resolve().name}-{key}"
    with open(cache_dir / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / META_FILE).is_file():
            return open_store(target)
        log.info("importing %s into %s", path, target)
        return import_mmrec(path, target)


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


class StoreWriter:
    """Accumulates a store's files in a staging directory; see :func:`write_store`.

    Args:
        root: the staging directory.
        source: what the store was made from, recorded in ``meta.json``.
        interactions_source: how to name the interaction input in error messages.
    """

    def __init__(self, root: Path, source: dict[str, Any], interactions_source: str) -> None:
        self.root = root
        self.source = source
        self.interactions_source = interactions_source
        self.extra_meta: dict[str, Any] = {}
        self.duplicates: dict[str, Any] = {"policy": "error", "dropped": 0}
        self._writer: pq.ParquetWriter | None = None
        self._columns: list[str] = []
        self._split_counts = np.zeros(3, dtype=np.int64)
        self._max_ids = [-1, -1]
        self._modalities: dict[str, dict[str, Any]] = {}
        self._labels: dict[str, Any] | None = None
        self._id_maps: dict[str, dict[str, Any]] = {}

    def append_interactions(self, columns: dict[str, np.ndarray]) -> None:
        """Append rows given as arrays by store column name (ids already validated)."""
        if self._writer is None:
            self._columns = list(columns)
            schema = interactions_schema(self._columns)
            self._writer = pq.ParquetWriter(
                self.root / INTERACTIONS_FILE, schema, compression="zstd"
            )
        if list(columns) != self._columns:
            raise ValueError(f"columns {list(columns)} differ from the first batch's")
        schema = self._writer.schema
        table = pa.table(
            {f.name: pa.array(columns[f.name], type=f.type) for f in schema}, schema=schema
        )
        self._writer.write_table(table, row_group_size=1 << 20)
        self._split_counts += np.bincount(columns[SPLIT], minlength=3)[:3]
        if len(table):
            self._max_ids[0] = max(self._max_ids[0], int(columns[USER_ID].max()))
            self._max_ids[1] = max(self._max_ids[1], int(columns[ITEM_ID].max()))

    def add_features(
        self,
        name: str,
        blocks: Iterable[np.ndarray],
        shape: tuple[int, int],
        dtype: str,
        source: str,
        rows: np.ndarray | None = None,
    ) -> None:
        """Write modality ``name`` from row blocks, rejecting NaN/Inf (named after ``source``).

        Args:
            shape: the shape of the matrix ``blocks`` yield.
            rows: the rows to keep, ascending (the items left after an id remap); default all.
                Every row is validated, and errors name rows of the source.
        """
        path = self.root / feature_file(name)
        path.parent.mkdir(exist_ok=True)
        num_rows = shape[0] if rows is None else len(rows)
        start = 0
        with npyio.NpyWriter(path, num_rows, shape[1], dtype) as out:
            for block in blocks:
                require_finite(block, start, source)
                cast = block.astype(dtype, copy=False)
                if cast.dtype != block.dtype and not np.isfinite(cast).all():
                    row, col = np.argwhere(~np.isfinite(cast))[0]
                    raise DataError(
                        f"{source}: row {start + int(row)}, column {int(col)}: "
                        f"value {block[row, col]} overflows {dtype}"
                    )
                if rows is not None:
                    lo, hi = np.searchsorted(rows, [start, start + len(block)])
                    cast = cast[rows[lo:hi] - start]
                out.write(cast)
                start += len(block)
        self._modalities[name] = {"file": feature_file(name), "width": shape[1], "dtype": dtype}

    def set_labels(self, labels: np.ndarray, names: list[str], source: str) -> None:
        """Per-item category ids ``0 .. len(names)-1`` (``-1`` = unknown)."""
        np.save(self.root / LABELS_FILE, labels.astype(np.int16))
        self._labels = {"file": LABELS_FILE, "names": names, "source": source}

    def add_id_map(self, kind: str, original_ids: np.ndarray) -> None:
        """Record that id ``k`` of ``kind`` (``"users"`` or ``"items"``) is ``original_ids[k]``."""
        table = pa.table(
            {
                ORIGINAL_ID: pa.array(original_ids, pa.int64()),
                "id": pa.array(np.arange(len(original_ids)), pa.int32()),
            },
            schema=id_map_schema(),
        )
        pq.write_table(table, self.root / ID_MAP_FILES[kind], compression="zstd")
        self._id_maps[kind] = {"file": ID_MAP_FILES[kind]}

    def finish(self, num_users: int, num_items: int) -> None:
        """Check the whole, hash every file and write ``meta.json``.

        Raises:
            DataError: if the training split is empty, an id is out of range, or a feature
                matrix does not have ``num_items`` rows.
        """
        if self._writer is None:
            raise DataError(f"{self.interactions_source}: no interactions")
        self._writer.close()
        if self._split_counts[0] == 0:
            raise DataError(f"{self.interactions_source}: the training split (label 0) is empty")
        if self._max_ids[0] >= num_users or self._max_ids[1] >= num_items:
            raise ValueError(f"ids exceed num_users={num_users} or num_items={num_items}")
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "num_users": num_users,
            "num_items": num_items,
            "num_interactions": int(self._split_counts.sum()),
            "columns": self._columns,
            "splits": dict(zip(SPLIT_NAMES, map(int, self._split_counts), strict=True)),
            "modalities": self._modalities,
            "labels": self._labels,
            "id_maps": self._id_maps or None,
            "duplicates": self.duplicates,
            "source": self.source,
            "created_by": f"sea-dist {__version__}",
            **self.extra_meta,
        }
        meta["checksums"] = {name: file_digest(self.root / name) for name in _content_files(meta)}
        (self.root / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        # The staging directory comes from mkdtemp (mode 0700); give the store the usual
        # permissions so other users' jobs can read a shared cache.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.root, 0o777 & ~umask)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()


@contextmanager
def write_store(
    out: str | Path, source: dict[str, Any], interactions_source: str
) -> Iterator[StoreWriter]:
    """Yield a :class:`StoreWriter`; on success the store appears at ``out`` in one rename.

    The caller must call :meth:`StoreWriter.finish` inside the block.

    Raises:
        SeaDistError: if ``out`` already exists (checked before any work).
    """
    with atomic_dir(out) as staging:
        writer = StoreWriter(staging, source, interactions_source)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise
        if not (staging / META_FILE).is_file():
            raise RuntimeError("write_store: finish() was not called")


def _content_files(meta: dict[str, Any]) -> list[str]:
    files = [INTERACTIONS_FILE]
    files += [info["file"] for info in meta["modalities"].values()]
    if meta.get("labels"):
        files.append(meta["labels"]["file"])
    # Older stores have no id_maps key: their ids are the source's.
    files += [info["file"] for info in (meta.get("id_maps") or {}).values()]
    return files


def _check_files(path: Path, meta: dict[str, Any]) -> dict[str, int]:
    """Check checksums' presence and every file's size and header; return the modalities."""
    checksums = meta["checksums"]
    if not isinstance(checksums, dict):
        raise DataError(f"{path / META_FILE}: key checksums must map file names to digests")
    for name in _content_files(meta):
        if not checksums.get(name):
            raise DataError(f"{path / META_FILE}: key checksums[{name!r}] is missing")
        if not (path / name).is_file():
            raise DataError(f"{path / name}: file listed in {META_FILE} is missing")
    _check_parquet_rows(path / INTERACTIONS_FILE, meta["num_interactions"], "num_interactions")
    for kind, info in (meta.get("id_maps") or {}).items():
        _check_parquet_rows(path / info["file"], meta[f"num_{kind}"], f"num_{kind}")
    modalities: dict[str, int] = {}
    for name, info in meta["modalities"].items():
        header = npyio.read_header(path / info["file"])
        npyio.check_matrix(path / info["file"], header, meta["num_items"])
        if header.shape[1] != info["width"] or header.dtype.name != info["dtype"]:
            raise DataError(
                f"{path / info['file']}: shape {header.shape} {header.dtype} does not match "
                f"{META_FILE} key modalities.{name} (width {info['width']}, {info['dtype']})"
            )
        modalities[name] = int(info["width"])
    if meta["labels"] is not None:
        header = npyio.read_header(path / meta["labels"]["file"])
        if header.shape != (meta["num_items"],):
            raise DataError(
                f"{path / meta['labels']['file']}: shape {header.shape}, expected "
                f"({meta['num_items']},)"
            )
    return modalities


def _check_parquet_rows(path: Path, num_rows: int, key: str) -> None:
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    if metadata.num_rows != num_rows:
        raise DataError(
            f"{path}: has {metadata.num_rows} rows, {META_FILE} key {key} says {num_rows}"
        )
