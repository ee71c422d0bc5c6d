"""Reading a store: the accessors other layers use, and inspect's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from sea_dist.data.inspect import inspect_store
from sea_dist.data.store import FORMAT_VERSION, Store, open_store
from sea_dist.errors import DataError


def test_meta_and_accessors(tiny_store: Store) -> None:
    meta = tiny_store.meta
    assert meta["format_version"] == FORMAT_VERSION
    assert set(meta["checksums"]) == {
        "interactions.parquet",
        "features/image.npy",
        "features/text.npy",
    }
    assert all(v.startswith("sha256:") for v in meta["checksums"].values())
    total = 0
    for split in range(3):
        users, items = tiny_store.edges(split)
        assert users.dtype == items.dtype == np.int64
        assert len(users) == meta["splits"][("train", "valid", "test")[split]]
        total += len(users)
    assert total == meta["num_interactions"]
    image = tiny_store.features("image")
    assert isinstance(image, np.memmap) and image.shape == (200, 32)
    assert not image.flags.writeable
    assert tiny_store.labels() is None
    assert tiny_store.interactions(["item_id"]).column_names == ["item_id"]
    with pytest.raises(DataError, match="no modality 'audio'"):
        tiny_store.features("audio")
    with pytest.raises(ValueError):
        tiny_store.edges(3)


def test_open_store_rejects_a_plain_directory(tmp_path) -> None:
    with pytest.raises(DataError, match="not a store"):
        open_store(tmp_path)


def test_inspect_numbers(tiny_store: Store) -> None:
    stats = inspect_store(tiny_store)
    table = tiny_store.interactions()
    users = table["user_id"].to_numpy()
    items = table["item_id"].to_numpy()
    split = table["split"].to_numpy()
    assert stats["num_interactions"] == 4000
    assert stats["density"] == pytest.approx(4000 / (300 * 200))
    assert stats["splits"] == tiny_store.meta["splits"]
    item_degree = np.bincount(items, minlength=200)
    assert stats["item_degree"]["p100"] == item_degree.max()
    assert stats["item_degree"]["p50"] == np.median(item_degree)
    assert stats["user_degree"]["mean"] == pytest.approx(4000 / 300)
    trained = np.zeros(200, dtype=bool)
    trained[items[split == 0]] = True
    assert stats["cold_start"]["items_without_train"] == int((~trained).sum())
    assert stats["cold_start"]["items_without_interactions"] == int((item_degree == 0).sum())
    assert stats["cold_start"]["eval_rows_with_untrained_item"] == int(
        (~trained[items[split > 0]]).sum()
    )
    assert stats["cold_start"]["users_without_train"] == 300 - len(np.unique(users[split == 0]))
    image = stats["features"]["image"]
    full = np.asarray(tiny_store.features("image"), dtype=np.float64)
    assert image["rows_sampled"] == 200  # small matrices are read in full
    assert image["mean"] == pytest.approx(full.mean())
    assert image["std"] == pytest.approx(full.std())
    assert image["zero_rows"] == 0
    assert stats["labels"] is None
