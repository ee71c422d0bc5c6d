"""Sparse and gapped ids: the bound on implied counts, the gap warning, ``--remap-ids``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sea_dist.cli import main
from sea_dist.data.store import open_store

HEADER = "userID\titemID\tx_label\n"
# Users 0, 3, 6, 9 (ids times 3) and items 0, 1, 2, 3, 5 of six feature rows (4 is unused).
ROWS = [
    (0, 0, 0),
    (0, 1, 0),
    (0, 2, 1),
    (0, 3, 2),
    (3, 1, 0),
    (3, 5, 0),
    (3, 0, 1),
    (3, 2, 2),
    (6, 2, 0),
    (6, 3, 0),
    (9, 5, 0),
    (9, 0, 0),
]
USERS = [0, 3, 6, 9]
ITEMS = [0, 1, 2, 3, 5]
FEATURES = np.arange(24, dtype=np.float32).reshape(6, 4)


def _write_inter(path: Path, rows: list[tuple[int, int, int]]) -> None:
    path.write_text(HEADER + "".join("\t".join(map(str, row)) + "\n" for row in rows))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    directory = tmp_path / "toy"
    directory.mkdir()
    _write_inter(directory / "toy.inter", ROWS)
    np.save(directory / "image_feat.npy", FEATURES)
    return directory


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _inspect(store: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, out, err = _run(capsys, "data", "inspect", str(store), "--json")
    assert code == 0, err
    return json.loads(out)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_gaps_are_reported(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code, _, err = _run(capsys, "data", "import-mmrec", str(src), str(out))
    assert code == 0, err
    assert _warnings(caplog) == [
        f"{src / 'toy.inter'}: 6 of 10 users and 1 of 6 items have no interaction "
        "(ids are gapped; --remap-ids compacts them)"
    ]
    stats = _inspect(out, capsys)
    assert (stats["num_users"], stats["num_items"]) == (10, 6)
    assert stats["cold_start"]["users_without_interactions"] == 6
    assert stats["cold_start"]["items_without_interactions"] == 1
    assert stats["id_maps"] is None


@pytest.mark.parametrize(
    "num_rows,largest,accepted",
    [(12, 1023, True), (12, 1024, False), (600, 1199, True), (600, 1200, False)],
)
def test_bound_is_twice_the_rows_or_1024(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    num_rows: int,
    largest: int,
    accepted: bool,
) -> None:
    src = tmp_path / "toy"
    src.mkdir()
    _write_inter(src / "toy.inter", [(u, 0, 0) for u in range(num_rows - 1)] + [(largest, 0, 0)])
    code, _, err = _run(capsys, "data", "import-mmrec", str(src), str(tmp_path / "out"))
    if accepted:
        assert code == 0, err
        assert open_store(tmp_path / "out").num_users == largest + 1
    else:
        assert code == 2
        assert err == (
            f"error: {src / 'toy.inter'}: line {num_rows + 1}: column userID: id {largest} "
            f"implies {largest + 1} users, over the bound of {max(2 * num_rows, 1024)} "
            f"(max(2 x {num_rows} rows, 1024)); pass --remap-ids to compact sparse ids"
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_remap_ids_compacts_users_and_items(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        code, stdout, err = _run(capsys, "data", "import-mmrec", str(src), str(out), "--remap-ids")
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}: 4 users, 5 items, 12 interactions"
    assert _warnings(caplog) == []
    store = open_store(out)
    assert store.meta["id_maps"] == {
        "users": {"file": "user_ids.parquet"},
        "items": {"file": "item_ids.parquet"},
    }
    assert {"user_ids.parquet", "item_ids.parquet"} <= set(store.meta["checksums"])
    user_map = pq.read_table(out / "user_ids.parquet")
    item_map = pq.read_table(out / "item_ids.parquet")
    assert user_map.schema == pa.schema([("original_id", pa.int64()), ("id", pa.int32())])
    assert user_map["original_id"].to_pylist() == USERS
    assert user_map["id"].to_pylist() == [0, 1, 2, 3]
    assert item_map["original_id"].to_pylist() == ITEMS
    # Mapped back, the interactions are the source's rows in the source's order.
    table = store.interactions()
    users = np.asarray(USERS)[table["user_id"].to_numpy()]
    items = np.asarray(ITEMS)[table["item_id"].to_numpy()]
    assert list(zip(users, items, table["split"].to_numpy(), strict=True)) == ROWS
    # Feature row j is source row original_id[j]; the row of unused item 4 is dropped.
    np.testing.assert_array_equal(store.features("image"), FEATURES[ITEMS])
    stats = _inspect(out, capsys)
    assert stats["cold_start"]["users_without_interactions"] == 0
    assert stats["cold_start"]["items_without_interactions"] == 0
    assert stats["id_maps"] == store.meta["id_maps"]


def test_remap_accepts_ids_past_the_bound(src: Path, tmp_path: Path) -> None:
    from sea_dist.data.mmrec import import_mmrec

    _write_inter(src / "toy.inter", [(2147483647 if u == 9 else u, i, s) for u, i, s in ROWS])
    store = import_mmrec(src, tmp_path / "out", remap_ids=True)
    assert store.num_users == 4
    ids = pq.read_table(store.path / "user_ids.parquet")["original_id"].to_pylist()
    assert ids == [0, 3, 6, 2147483647]


def test_remap_validates_dropped_feature_rows(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = FEATURES.copy()
    features[4, 3] = np.nan  # the row of item 4, which has no interaction
    np.save(src / "image_feat.npy", features)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "data", "import-mmrec", str(src), str(out), "--remap-ids")
    assert code == 2
    assert err == f"error: {src / 'image_feat.npy'}: row 4, column 3: value nan is not finite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_remap_keeps_labels_with_their_items(src: Path, tmp_path: Path) -> None:
    from sea_dist.data.mmrec import import_mmrec

    (src / "toy.item").write_text(
        "item_id:token\tclass:token_seq\n" + "".join(f"{k + 1}\tc{k}\n" for k in range(6))
    )
    store = import_mmrec(src, tmp_path / "out", remap_ids=True)
    labels = store.labels()
    assert labels is not None
    assert [store.meta["labels"]["names"][k] for k in labels] == ["c0", "c1", "c2", "c3", "c5"]


def test_damaged_id_map_is_refused(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _run(capsys, "data", "import-mmrec", str(src), str(out), "--remap-ids")[0] == 0
    user_map = pq.read_table(out / "user_ids.parquet")
    pq.write_table(user_map.slice(0, 3), out / "user_ids.parquet")
    code, _, err = _run(capsys, "data", "inspect", str(out))
    assert code == 2
    assert err == (
        f"error: {out / 'user_ids.parquet'}: has 3 rows, meta.json key num_users says 4"
    )
    (out / "item_ids.parquet").unlink()
    code, _, err = _run(capsys, "data", "inspect", str(out))
    assert err == f"error: {out / 'item_ids.parquet'}: file listed in meta.json is missing"
