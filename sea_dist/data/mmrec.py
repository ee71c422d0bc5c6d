"""Import (and export) MMRec atomic-file data sets.

An MMRec directory holds ``<name>.inter``, a tab-separated file with a header naming
``userID``, ``itemID``, ``x_label`` (0 train, 1 valid, 2 test) and optionally ``rating`` and
``timestamp`` (RecBole-style ``name:type`` headers are accepted), plus one ``.npy`` matrix
per modality whose row ``k`` belongs to ``itemID == k``. By default every ``*_feat.npy`` is a
modality named by its prefix (``image_feat.npy`` -> ``image``), in the order MMRec's configs
declare them: ``image`` (v_feat) first, then ``text`` and ``audio`` (t_feat), then any other
prefix alphabetically; with an explicit modality mapping, its order. The store keeps that
order, which is what ``data.modalities`` defaults to (roles are by name, so the order only
lays out the embedding columns).

Item count: ``max(itemID) + 1`` (MMRec's own convention); every feature matrix must have
exactly that many rows. Users likewise number ``max(userID) + 1``. Ids are expected to be
dense: an id implying more users (or, without feature matrices, items) than
:func:`max_implied_ids` allows is refused, and ids without any interaction (gaps) are
reported in a warning.

Sparse ids: with ``remap_ids=True`` the user and item ids are compacted to ``0 .. n-1`` in
ascending order of the original id, and the maps are written to ``user_ids.parquet`` and
``item_ids.parquet`` (columns ``original_id``, ``id``; RecBole's convention). Apart from the
bound, the source is validated as without remapping: original ids must fit int32, and
feature matrices and ``.item`` must cover ``max(itemID) + 1`` items. Feature rows and labels
then follow the items (row ``j`` of the store is source row ``original_id[j]``), and items
without any interaction are dropped with their feature rows, as RecBole drops them.

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
    DECLARED_MODALITY_ORDER,
    INTERACTIONS_FILE,
    ITEM_ID,
    RATING,
    SPLIT,
    TIMESTAMP,
    USER_ID,
)
from sea_dist.data.store import Store, open_store, write_store
from sea_dist.data.validate import (
    Where,
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

MAX_IDS_PER_ROW = 2
"""How many ids each interaction row may imply; see :func:`max_implied_ids`.

Every id up to the largest becomes an embedding row and an entry of per-user arrays, so one
stray id such as 2**31-1 would make a store of two billion users. With dense ids every user
and item has at least one row (``max id + 1 <= rows``); twice that leaves room for ids whose
rows a subsample removed, while still refusing ids that are sparse by construction.
"""

MIN_ID_BOUND = 1024
"""The bound for files with few rows, which may leave a few gaps: 1024 ids cost nothing."""


def max_implied_ids(num_rows: int) -> int:
    """The largest ``max id + 1`` accepted from ``num_rows`` interaction rows without a remap."""
    return max(MAX_IDS_PER_ROW * num_rows, MIN_ID_BOUND)


def import_mmrec(
    src: str | Path,
    out: str | Path,
    modalities: dict[str, str] | None = None,
    duplicates: Duplicates = "error",
    remap_ids: bool = False,
) -> Store:
    """Read the MMRec directory ``src`` and write a store at ``out``.

    Args:
        src: directory with ``<name>.inter`` and optional feature ``.npy`` files.
        out: the store directory to create; must not exist.
        modalities: modality name -> feature file name inside ``src``, in the store's order;
            default: every ``*_feat.npy``, named by its prefix, in MMRec's declared order.
        duplicates: ``"error"`` or ``"keep-first"`` (see the module docstring).
        remap_ids: compact sparse user and item ids (see the module docstring).

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
    # Feature matrices fix the item count (row k is item k): their row check bounds item ids.
    bounded = () if remap_ids else ("userID",) if feature_paths else ("userID", "itemID")
    with write_store(out, source, str(inter_path)) as writer:
        columns, dropped = _read_interactions(inter_path, duplicates, bounded)
        writer.duplicates = {"policy": duplicates, "dropped": dropped}
        num_users = int(columns[USER_ID].max()) + 1
        source_items = int(columns[ITEM_ID].max()) + 1
        headers = {}
        for name, path in feature_paths.items():
            headers[name] = npyio.read_header(path)
            npyio.check_matrix(path, headers[name], source_items)
        kept_items: np.ndarray | None = None  # source rows of the store's items, if remapped
        if remap_ids:
            user_ids, columns[USER_ID] = _compact(columns[USER_ID])
            kept_items, columns[ITEM_ID] = _compact(columns[ITEM_ID])
            writer.add_id_map("users", user_ids)
            writer.add_id_map("items", kept_items)
            log.info(
                "%s: compacted %d user ids (largest %d) and %d item ids (largest %d)",
                inter_path,
                len(user_ids),
                user_ids[-1],
                len(kept_items),
                kept_items[-1],
            )
            num_users, num_items = len(user_ids), len(kept_items)
        else:
            _warn_about_gaps(inter_path, columns, num_users, source_items)
            num_items = source_items
        writer.append_interactions(columns)
        del columns
        for name, path in feature_paths.items():
            header = headers[name]
            dtype = "float32" if header.dtype.name == "float64" else header.dtype.name
            blocks = npyio.iter_rows(path, header, _BLOCK_ROWS)
            writer.add_features(
                name, blocks, (header.shape[0], header.shape[1]), dtype, str(path), kept_items
            )
        item_path = inter_path.with_suffix(".item")
        if item_path.is_file():
            parsed = _read_item_labels(item_path, source_items)
            if parsed is not None:
                labels = parsed[0] if kept_items is None else parsed[0][kept_items]
                writer.set_labels(labels, parsed[1], str(item_path))
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
        found = {p.name[: -len(_FEATURE_SUFFIX)]: p for p in src.glob(f"*{_FEATURE_SUFFIX}")}
        declared = [m for m in DECLARED_MODALITY_ORDER if m in found]
        return {m: found[m] for m in declared + sorted(found.keys() - set(declared))}
    paths = {}
    for name, file_name in modalities.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
            raise DataError(f"modality name {name!r}: use letters, digits, '_' or '-'")
        path = src / file_name
        if not path.is_file():
            raise DataError(f"{path}: feature file for modality {name!r} not found")
        paths[name] = path
    return paths


def _read_interactions(
    path: Path, duplicates: Duplicates, bounded: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], int]:
    """Read and validate ``path``; return store columns (compact dtypes) and rows dropped.

    ``bounded`` names the id columns held to :func:`max_implied_ids`.
    """
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
    for name, ids, noun in (("userID", users, "users"), ("itemID", items, "items")):
        if name in bounded:
            _require_id_bound(ids, name, noun, where)
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


def _require_id_bound(ids: np.ndarray, name: str, noun: str, where: Where) -> None:
    bound = max_implied_ids(len(ids))
    row = int(np.argmax(ids))
    if ids[row] + 1 > bound:
        raise DataError(
            f"{where(row)}: column {name}: id {ids[row]} implies {ids[row] + 1} {noun}, over the "
            f"bound of {bound} (max({MAX_IDS_PER_ROW} x {len(ids)} rows, {MIN_ID_BOUND})); "
            "pass --remap-ids to compact sparse ids"
        )


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(originals, compact)``: the distinct ids ascending, and each row's index among them."""
    originals, compact = np.unique(ids, return_inverse=True)
    return originals, compact.astype(np.int32)


def _warn_about_gaps(
    path: Path, columns: dict[str, np.ndarray], num_users: int, num_items: int
) -> None:
    idle = []
    for name, count, noun in ((USER_ID, num_users, "users"), (ITEM_ID, num_items, "items")):
        without = count - np.count_nonzero(np.bincount(columns[name], minlength=count))
        if without:
            idle.append(f"{without} of {count} {noun}")
    if idle:
        log.warning(
            "%s: %s have no interaction (ids are gapped; --remap-ids compacts them)",
            path,
            " and ".join(idle),
        )


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
