"""The on-disk store format: file names, Arrow column types and the ``meta.json`` keys.

A store is a directory::

    meta.json              counts, modalities and widths, split sizes, checksums, version
    interactions.parquet   user_id int32, item_id int32, split int8 [, rating float32]
                           [, timestamp int64]; one row per (user, item) pair
    features/<name>.npy    one [num_items, width] float16/float32 matrix per modality,
                           row k = item k, read memory-mapped
    labels.npy             optional [num_items] int16 item categories (e.g. ml-100k genres)
    user_ids.parquet       optional, with item_ids.parquet: original_id int64, id int32, one
    item_ids.parquet       row per id in ascending order of both, when the importer compacted
                           the source's ids (meta.json key id_maps; RecBole's layout)

User ids are ``0 .. num_users-1`` and item ids ``0 .. num_items-1``; an id may have no
interaction (a cold-start user or item). ``split`` is 0 = train, 1 = valid, 2 = test.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1

META_FILE = "meta.json"
INTERACTIONS_FILE = "interactions.parquet"
FEATURES_DIR = "features"
LABELS_FILE = "labels.npy"
ID_MAP_FILES = {"users": "user_ids.parquet", "items": "item_ids.parquet"}
ORIGINAL_ID = "original_id"

USER_ID = "user_id"
ITEM_ID = "item_id"
SPLIT = "split"
RATING = "rating"
TIMESTAMP = "timestamp"

SPLIT_NAMES = ("train", "valid", "test")

# Modality roles are keyed on names, never on positions (spec sections 1 and 2). MMRec's configs
# declare the vision features first (v_feat, image_feat.npy), then the text or audio ones
# (t_feat: text_feat.npy on the Amazon sets, audio_feat.npy on TikTok); the importer keeps that
# order, and the reference's defaults (item-graph weights, SoloSim anchor) single out IMAGE.
IMAGE = "image"
DECLARED_MODALITY_ORDER = (IMAGE, "text", "audio")

# int32 ids hold 2**31 users or items, far beyond one machine's catalogue, and are what torch
# indexes with cheaply after one widening copy.
COLUMN_TYPES: dict[str, pa.DataType] = {
    USER_ID: pa.int32(),
    ITEM_ID: pa.int32(),
    SPLIT: pa.int8(),
    RATING: pa.float32(),
    TIMESTAMP: pa.int64(),
}
REQUIRED_COLUMNS = (USER_ID, ITEM_ID, SPLIT)
OPTIONAL_COLUMNS = (RATING, TIMESTAMP)

# Keys every meta.json must have; readers refuse a store that lacks one.
REQUIRED_META_KEYS = (
    "format_version",
    "num_users",
    "num_items",
    "num_interactions",
    "columns",
    "splits",
    "modalities",
    "labels",
    "checksums",
    "duplicates",
    "source",
)


def interactions_schema(columns: list[str]) -> pa.Schema:
    """The Arrow schema of ``interactions.parquet`` with the given columns, in store order."""
    return pa.schema([(name, COLUMN_TYPES[name]) for name in COLUMN_TYPES if name in columns])


def id_map_schema() -> pa.Schema:
    """The Arrow schema of ``user_ids.parquet`` and ``item_ids.parquet``."""
    return pa.schema([(ORIGINAL_ID, pa.int64()), ("id", pa.int32())])


def feature_file(modality: str) -> str:
    """Path of a modality's matrix relative to the store root."""
    return f"{FEATURES_DIR}/{modality}.npy"
