"""Import (and export) MMRec atomic-file data sets.

An MMRec directory holds ``<name>.inter``, a tab-separated file with a header naming
``userID``, ``itemID``, ``x_label`` (0 train, 1 valid, 2 test) and optionally ``rating`` and
``timestamp`` (RecBole-style ``name:type`` headers are accepted), plus one ``.npy`` matrix
per modality whose row ``k`` belongs to ``itemID == k``. By default every ``*_feat.npy`` is a
modality named by its prefix (``image_feat.npy`` -> ``image``), in alphabetical order.

Item count: ``max(itemID) + 1`` (MMRec's own convention); every feature matrix must have
exactly that many rows. Users likewise number ``max(userID) + 1``.

Duplicate (user, item) pairs: rejected by default (``duplicates="error"``), naming the
repeating line and the line it repeats. With ``duplicates="keep-first"`` the first occurrence
is kept, later ones are dropped, and their number is logged and recorded in ``meta.json``
under ``duplicates``.

Item categories: if ``<name>.item`` (RecBole layout) has a ``class`` column, the first
category listed for each item becomes its label (``labels.npy``; ``meta.json`` key
``labels.names``). Its ``item_id`` tokens must be ``1 .. num_items`` or ``0 .. num_items-1``
and map in sorted order onto ``itemID``; for ml-100k, ``itemID = item_id - 1`` (checked:
``itemID`` 49, Star Wars, has MovieLens' 583 ratings).

Float64 feature matrices are stored as float32; float16 and float32 are kept as given.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sea_dist.data import npyio
from sea_dist.data.schema import (
    INTERACTIONS_FILE,
    ITEM_ID,
    RATING,
    SPLIT,
    TIMESTAMP,
    USER_ID,
)
from sea_dist.data.store import Store, open_store, write_store
from sea_dist.data.validate import (
    duplicate_rows,
    float_column,
    integer_column,
    require_in,
    require_nonnegative,
)
from sea_dist.errors import DataError
from sea_dist.io import atomic_dir

log = logging.getLogger(__name__)

Duplicates = Literal["error", "keep-first"]

# MMRec column -> store column; the order is the one export writes.
_COLUMNS = {
    "userID": USER_ID,
    "itemID": ITEM_ID,
    "rating": RATING,
    "timestamp": TIMESTAMP,
    "x_label": SPLIT,
}
_REQUIRED = ("userID", "itemID", "x_label")
_FEATURE_SUFFIX = "_feat.npy"
_BLOCK_ROWS = 1 << 16


def import_mmrec(
    src: str | Path,
    out: str | Path,
    modalities: dict[str, str] | None = None,
    duplicates: Duplicates = "error",
) -> Store:
    """Read the MMRec directory ``src`` and write a store at ``out``.

    Args:
        src: directory with ``<name>.inter`` and optional feature ``.npy`` files.
        out: the store directory to create; must not exist.
        modalities: modality name -> feature file name inside ``src``; default: every
            ``*_feat.npy``, named by its prefix.
        duplicates: ``"error"`` or ``"keep-first"`` (see the module docstring).

    Returns:
        The opened store.

    Raises:
        DataError: for any invalid input, naming the file and the line, column or key;
            nothing is left at ``out``.
    """
    if duplicates not in ("error", "keep-first"):
        raise ValueError(f"duplicates must be 'error' or 'keep-first', got {duplicates!r}")
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"{src}: no such directory")
    inter_path = _find_inter(src)
    feature_paths = _feature_files(src, modalities)
    source = {
        "kind": "mmrec",
        "path": str(src.resolve()),
        "inter": inter_path.name,
        "features": {name: p.name for name, p in feature_paths.items()},
    }
    with write_store(out, source, str(inter_path)) as writer:
        columns, dropped = _read_interactions(inter_path, duplicates)
        writer.duplicates = {"policy": duplicates, "dropped": dropped}
        num_users = int(columns[USER_ID].max()) + 1
        num_items = int(columns[ITEM_ID].max()) + 1
        headers = {}
        for name, path in feature_paths.items():
            headers[name] = npyio.read_header(path)
            npyio.check_matrix(path, headers[name], num_items)
        writer.append_interactions(columns)
        del columns
        for name, path in feature_paths.items():
            header = headers[name]
            dtype = "float32" if header.dtype.name == "float64" else header.dtype.name
            blocks = npyio.iter_rows(path, header, _BLOCK_ROWS)
            writer.add_features(name, blocks, (header.shape[0], header.shape[1]), dtype, str(path))
        item_path = inter_path.with_suffix(".item")
        if item_path.is_file():
            parsed = _read_item_labels(item_path, num_items)
            if parsed is not None:
                writer.set_labels(parsed[0], parsed[1], str(item_path))
        writer.finish(num_users, num_items)
    return open_store(out)


def export_mmrec(store: Store, out: str | Path) -> Path:
    """Write ``store`` as an MMRec directory ``out`` (``<out name>.inter`` + ``<m>_feat.npy``).

    Streams row groups and feature blocks, so memory stays bounded at any size.

    Returns:
        The path of the ``.inter`` file written.
    """
    out = Path(out)
    reverse = {store_name: mmrec_name for mmrec_name, store_name in _COLUMNS.items()}
    with atomic_dir(out) as staging:
        inter = staging / f"{out.name}.inter"
        parquet = pq.ParquetFile(store.path / INTERACTIONS_FILE)
        order = [c for c in _COLUMNS.values() if c in store.meta["columns"]]
        schema = pa.schema([(reverse[c], parquet.schema_arrow.field(c).type) for c in order])
        # Arrow quotes header names even with quoting_style="none"; MMRec headers are bare.
        options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        with open(inter, "wb") as fh:
            fh.write(("\t".join(schema.names) + "\n").encode())
            with pacsv.CSVWriter(fh, schema, write_options=options) as csv:
                for batch in parquet.iter_batches(batch_size=1 << 20, columns=order):
                    csv.write_batch(pa.record_batch(batch.columns, schema=schema))
        for name in store.modalities:
            path = store.path / store.meta["modalities"][name]["file"]
            header = npyio.read_header(path)
            width = header.shape[1]
            with npyio.NpyWriter(
                staging / f"{name}{_FEATURE_SUFFIX}", header.shape[0], width, header.dtype.name
            ) as writer:
                for block in npyio.iter_rows(path, header, _BLOCK_ROWS):
                    writer.write(block)
    return out / f"{out.name}.inter"


def _find_inter(src: Path) -> Path:
    preferred = src / f"{src.resolve().name}.inter"
    if preferred.is_file():
        return preferred
    found = sorted(src.glob("*.inter"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"{src}: no *.inter file (expected {preferred.name})")
    names = ", ".join(p.name for p in found)
    raise DataError(f"{src}: several .inter files ({names}) and none is named {preferred.name}")


def _feature_files(src: Path, modalities: dict[str, str] | None) -> dict[str, Path]:
    if modalities is None:
        found = sorted(src.glob(f"*{_FEATURE_SUFFIX}"))
        return {p.name[: -len(_FEATURE_SUFFIX)]: p for p in found}
    paths = {}
    for name, file_name in modalities.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise DataError(f"modality name {name!r}: use letters, digits, '_' or '-'")
        path = src / file_name
        if not path.is_file():
            raise DataError(f"{path}: feature file for modality {name!r} not found")
        paths[name] = path
    return paths


def _read_interactions(path: Path, duplicates: Duplicates) -> tuple[dict[str, np.ndarray], int]:
    """Read and validate ``path``; return store columns (compact dtypes) and rows dropped."""
    table = _read_tsv(path)
    names = [_base_name(n) for n in table.column_names]
    for name in names:
        if name not in _COLUMNS:
            raise DataError(
                f"{path}: line 1: unexpected column {name!r} (allowed: {', '.join(_COLUMNS)})"
            )
    if len(set(names)) != len(names):
        raise DataError(f"{path}: line 1: a column name appears twice ({', '.join(names)})")
    for name in _REQUIRED:
        if name not in names:
            raise DataError(f"{path}: line 1: missing column {name} (has {', '.join(names)})")
    table = table.rename_columns(names)
    if table.num_rows == 0:
        raise DataError(f"{path}: no interaction rows after the header")

    def where(row: int) -> str:
        return f"{path}: line {row + 2}"

    users = integer_column(table["userID"], "userID", where)
    require_nonnegative(users, "userID", where)
    items = integer_column(table["itemID"], "itemID", where)
    require_nonnegative(items, "itemID", where)
    labels = integer_column(table["x_label"], "x_label", where)
    require_in(labels, (0, 1, 2), "x_label", where)
    columns = {USER_ID: users, ITEM_ID: items}
    if "rating" in names:
        columns[RATING] = float_column(table["rating"], "rating", where).astype(np.float32)
    if "timestamp" in names:
        columns[TIMESTAMP] = integer_column(table["timestamp"], "timestamp", where)
    columns[SPLIT] = labels.astype(np.int8)
    del table
    for name in (USER_ID, ITEM_ID):
        if columns[name].max() >= 2**31:
            raise DataError(f"{path}: column {name}: id {columns[name].max()} exceeds int32")
    rows, first = duplicate_rows(users, items)
    dropped = 0
    if len(rows):
        detail = (
            f"(user {users[rows[0]]}, item {items[rows[0]]}) repeats line {first[0] + 2}; "
            f"{len(rows)} duplicate rows in all"
        )
        if duplicates == "error":
            raise DataError(
                f"{where(int(rows[0]))}: duplicate pair {detail} (import with "
                "--duplicates keep-first to keep each pair's first row)"
            )
        log.warning("%s: dropping later duplicate pairs: %s", where(int(rows[0])), detail)
        keep = np.ones(len(users), dtype=bool)
        keep[rows] = False
        columns = {name: values[keep] for name, values in columns.items()}
        dropped = len(rows)
    columns[USER_ID] = columns[USER_ID].astype(np.int32)
    columns[ITEM_ID] = columns[ITEM_ID].astype(np.int32)
    ordered = [c for c in _COLUMNS.values() if c in columns]
    return {name: columns[name] for name in ordered}, dropped


def _read_tsv(path: Path, as_text: bool = False) -> pa.Table:
    """Parse a tab-separated file with a header; row-level problems become DataErrors."""
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions()
    if as_text:
        header = _header_fields(path)
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in header})
    try:
        return pacsv.read_csv(path, parse_options=parse, convert_options=convert)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except pa.ArrowInvalid as exc:
        message = " ".join(str(exc).split())
        if "conversion error" in message and not as_text:
            # Types are inferred from the first block; a bad value further down fails the
            # conversion without a row number. Re-read as text so validation can find it.
            return _read_tsv(path, as_text=True)
        _raise_parse_error(path, message)
        raise  # unreachable: _raise_parse_error always raises


def _header_fields(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        return fh.readline().decode("utf-8", "replace").rstrip("\r\n").split("\t")


def _raise_parse_error(path: Path, message: str) -> None:
    """Find the first line whose field count differs from the header's, and name it."""
    with open(path, "rb") as fh:
        header = fh.readline()
        if not header.strip():
            raise DataError(f"{path}: empty file (expected a header line)")
        expected = header.count(b"\t") + 1
        for number, line in enumerate(fh, start=2):
            fields = line.rstrip(b"\r\n").count(b"\t") + 1
            if fields != expected:
                raise DataError(
                    f"{path}: line {number}: expected {expected} tab-separated fields, "
                    f"got {fields} (truncated or corrupt file?)"
                )
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {number}: not UTF-8 text (corrupt file?)") from None
    raise DataError(f"{path}: cannot parse ({message})")


def _base_name(header: str) -> str:
    # RecBole headers carry a type: "userID:token".
    return header.split(":", 1)[0].strip()


def _read_item_labels(path: Path, num_items: int) -> tuple[np.ndarray, list[str]] | None:
    table = _read_tsv(path, as_text=True)
    names = {_base_name(n): n for n in table.column_names}
    if "class" not in names:
        log.info("%s: no class column; the store has no item labels", path)
        return None
    if "item_id" not in names:
        raise DataError(f"{path}: line 1: missing column item_id")

    def where(row: int) -> str:
        return f"{path}: line {row + 2}"

    ids = integer_column(table[names["item_id"]], "item_id", where)
    base = int(ids.min()) if len(ids) else 0
    if (
        len(ids) != num_items
        or base not in (0, 1)
        or not np.array_equal(np.sort(ids), np.arange(base, base + num_items))
    ):
        raise DataError(
            f"{path}: column item_id: expected the ids 1..{num_items} (or 0..{num_items - 1}) "
            f"once each, to match the {num_items} items of the interactions"
        )
    first = [(text or "").split(" ", 1)[0] for text in table[names["class"]].to_pylist()]
    vocabulary = sorted({name for name in first if name})
    index = {name: k for k, name in enumerate(vocabulary)}
    labels = np.full(num_items, -1, dtype=np.int64)
    labels[ids - base] = [index.get(name, -1) for name in first]
    return labels, vocabulary
