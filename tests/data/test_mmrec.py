"""Importing the real MMRec data sets of ../shared/data, and the export/import round trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sea_dist.cli import main
from sea_dist.data.mmrec import export_mmrec, import_mmrec
from sea_dist.data.store import Store, open_store, resolve_store

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# users, items, interactions, train, valid, test: the table in ../shared/data/README.md
EXPECTED = {
    "baby": (19445, 7050, 160792, 118551, 21682, 20559),
    "sports": (35598, 18357, 296337, 218409, 40029, 37899),
    "tiktok": (9308, 6710, 68722, 59541, 3051, 6130),
    "gowalla": (29858, 40981, 1027370, 810128, 100459, 116783),
    "ml-100k": (943, 1682, 100000, 80367, 9596, 10037),
}

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")


@needs_shared
@pytest.mark.parametrize("name", list(EXPECTED))
def test_import_reproduces_readme_counts(name: str, tmp_path: Path) -> None:
    store = import_mmrec(SHARED / name, tmp_path / name)
    users, items, rows, train, valid, test = EXPECTED[name]
    assert (store.num_users, store.num_items, store.meta["num_interactions"]) == (
        users,
        items,
        rows,
    )
    assert store.meta["splits"] == {"train": train, "valid": valid, "test": test}
    for split, count in enumerate((train, valid, test)):
        split_users, split_items = store.edges(split)
        assert len(split_users) == len(split_items) == count
        assert split_users.dtype == np.int64
        assert split_users.min() >= 0 and split_users.max() < users
        assert split_items.min() >= 0 and split_items.max() < items
    table = store.interactions()
    assert table.schema.field("user_id").type == pa.int32()
    assert table.schema.field("split").type == pa.int8()


@needs_shared
def test_tiktok_features_are_copied_exactly(tmp_path: Path) -> None:
    store = import_mmrec(SHARED / "tiktok", tmp_path / "tiktok")
    assert list(store.modalities.items()) == [("image", 128), ("audio", 128)]  # vision first
    image = store.features("image")
    assert isinstance(image, np.memmap) and image.shape == (6710, 128)
    assert image.dtype == np.float16
    # sha256 of the source files as listed in ../shared/data/README.md
    assert store.meta["checksums"]["features/image.npy"] == (
        "sha256:f6c1ec1726ed2aa80315411199ab2143bee6333821bf58c5f00bd3f5b462efc2"
    )
    assert store.meta["checksums"]["features/audio.npy"] == (
        "sha256:d45a44a9d462f578802de914c2feea5cfd45742b2922775a085b9bdc1beba26f"
    )
    assert store.labels() is None


@needs_shared
def test_remap_ids_is_the_identity_on_dense_ids(tmp_path: Path) -> None:
    plain = import_mmrec(SHARED / "tiktok", tmp_path / "plain")
    remapped = import_mmrec(SHARED / "tiktok", tmp_path / "remapped", remap_ids=True)
    assert plain.meta["id_maps"] is None
    assert remapped.interactions().equals(plain.interactions())
    checksums = dict(remapped.meta["checksums"])
    for kind, count in (("user", 9308), ("item", 6710)):
        checksums.pop(f"{kind}_ids.parquet")
        ids = pq.read_table(remapped.path / f"{kind}_ids.parquet")
        assert ids["original_id"].to_pylist() == ids["id"].to_pylist() == list(range(count))
    assert checksums == plain.meta["checksums"]  # features copied row for row


@needs_shared
def test_ml100k_keeps_rating_timestamp_and_genres(tmp_path: Path) -> None:
    store = import_mmrec(SHARED / "ml-100k", tmp_path / "ml")
    table = store.interactions()
    assert table.column_names == ["user_id", "item_id", "split", "rating", "timestamp"]
    ratings = table["rating"].to_numpy()
    assert table.schema.field("rating").type == pa.float32()
    assert set(np.unique(ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert table["timestamp"].to_numpy().min() > 8e8  # 1997-1998 Unix times
    labels = store.labels()
    names = store.meta["labels"]["names"]
    assert labels is not None and labels.shape == (1682,) and labels.min() >= 0
    assert len(names) == 19 and "Drama" in names
    # itemID 49 is Star Wars (MovieLens id 50, 583 ratings, first genre Action);
    # itemID 0 is Toy Story (first genre Animation).
    assert int((table["item_id"].to_numpy() == 49).sum()) == 583
    assert names[labels[49]] == "Action"
    assert names[labels[0]] == "Animation"


@needs_shared
def test_cli_import_with_a_named_modality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tt"
    code = main(
        [
            "data",
            "import-mmrec",
            str(SHARED / "tiktok"),
            str(out),
            "--modality",
            "visual=image_feat.npy",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "9308 users, 6710 items, 68722 interactions" in capsys.readouterr().out
    store = open_store(out)
    assert store.modalities == {"visual": 128}
    assert store.meta["source"]["features"] == {"visual": "image_feat.npy"}


def test_import_keeps_the_declared_modality_order(tiny_store: Store, tmp_path: Path) -> None:
    """MMRec's order (image, then text or audio), not the alphabet; other prefixes follow."""
    src = tmp_path / "src"
    export_mmrec(tiny_store, src)  # image_feat.npy, text_feat.npy
    for name in ("zeta", "audio", "beta"):
        np.save(src / f"{name}_feat.npy", np.ones((tiny_store.num_items, 2), dtype=np.float32))
    store = import_mmrec(src, tmp_path / "declared")
    assert list(store.modalities) == ["image", "text", "audio", "beta", "zeta"]
    assert list(open_store(store.path).modalities) == list(store.modalities)  # as stored
    mapping = {"audio": "audio_feat.npy", "image": "image_feat.npy"}
    assert list(import_mmrec(src, tmp_path / "given", mapping).modalities) == ["audio", "image"]


def test_export_then_import_round_trip(tiny_store: Store, tmp_path: Path) -> None:
    inter = export_mmrec(tiny_store, tmp_path / "tiny")
    assert inter == tmp_path / "tiny" / "tiny.inter"
    assert inter.read_text().splitlines()[0] == "userID\titemID\tx_label"
    back = import_mmrec(tmp_path / "tiny", tmp_path / "back")
    assert back.interactions().equals(tiny_store.interactions())
    assert back.modalities == tiny_store.modalities
    for name in tiny_store.modalities:
        np.testing.assert_array_equal(back.features(name), tiny_store.features(name))
        assert (
            back.meta["checksums"][f"features/{name}.npy"]
            == (tiny_store.meta["checksums"][f"features/{name}.npy"])
        )


def test_resolve_store_imports_once_and_notices_changes(tiny_store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    export_mmrec(tiny_store, src)
    cache = tmp_path / "cache"
    first = resolve_store(src, cache)
    assert first.path.parent == cache and first.num_items == tiny_store.num_items
    stamp = (first.path / "meta.json").stat().st_mtime_ns
    again = resolve_store(src, cache)
    assert again.path == first.path
    assert (again.path / "meta.json").stat().st_mtime_ns == stamp  # reused, not re-imported
    # A store directory resolves to itself.
    assert resolve_store(first.path, cache).path == first.path
    # Touching a source file changes the cache key.
    inter = src / "src.inter"
    os.utime(inter, ns=(inter.stat().st_atime_ns, inter.stat().st_mtime_ns + 10**9))
    changed = resolve_store(src, cache)
    assert changed.path != first.path
    assert changed.checksum == first.checksum  # same content, same digest
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == sorted(
        [first.path.name, changed.path.name]
    )


def test_resolve_store_rejects_other_directories(tmp_path: Path) -> None:
    from sea_dist.errors import DataError

    with pytest.raises(DataError, match="neither a store"):
        resolve_store(tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match="no such directory"):
        resolve_store(tmp_path / "missing", tmp_path / "cache")
