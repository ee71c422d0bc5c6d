"""Every kind of bad input: one-line message naming file and position, exit code 2, no output."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sea_dist.cli import main

HEADER = "userID\titemID\tx_label\n"
# 4 users x 6 items; every user has train rows, users 0 and 1 also valid and test.
ROWS = [
    (0, 0, 0),
    (0, 1, 0),
    (0, 2, 1),
    (0, 3, 2),
    (1, 1, 0),
    (1, 4, 0),
    (1, 5, 1),
    (1, 0, 2),
    (2, 2, 0),
    (2, 3, 0),
    (3, 5, 0),
    (3, 4, 0),
]
NUM_ITEMS = 6


def _write_inter(path: Path, rows: list[tuple], header: str = HEADER) -> None:
    path.write_text(header + "".join("\t".join(map(str, row)) + "\n" for row in rows))


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A valid MMRec directory: toy.inter plus a 6 x 4 float32 image matrix."""
    directory = tmp_path / "toy"
    directory.mkdir()
    _write_inter(directory / "toy.inter", ROWS)
    np.save(directory / "image_feat.npy", np.arange(24, dtype=np.float32).reshape(NUM_ITEMS, 4))
    return directory


def _run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err.strip()


def _import(src: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    return _run("data", "import-mmrec", str(src), str(out), capsys=capsys)


def _leftovers(parent: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name not in keep)


def test_valid_toy_imports(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _import(src, tmp_path / "out", capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["num_users"] == 4 and meta["num_items"] == NUM_ITEMS
    assert meta["splits"] == {"train": 8, "valid": 2, "test": 2}


def _replace_row(index: int, text: str) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        lines = (directory / "toy.inter").read_text().splitlines(keepends=True)
        lines[index + 1] = text + "\n"
        (directory / "toy.inter").write_text("".join(lines))

    return mutate


def _header(header: str, extra: str = "") -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        width = header.count("\t") + 1
        rows = [tuple(list(row) + [extra] * (width - 3))[:width] for row in ROWS]
        _write_inter(directory / "toy.inter", rows, header)

    return mutate


def _features(array: np.ndarray) -> Callable[[Path], None]:
    return lambda directory: np.save(directory / "image_feat.npy", array)


def _feature_bytes(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def mutate(directory: Path) -> None:
        path = directory / "image_feat.npy"
        path.write_bytes(edit(path.read_bytes()))

    return mutate


def _with_nan(value: float) -> np.ndarray:
    array = np.ones((NUM_ITEMS, 4), dtype=np.float32)
    array[2, 3] = value
    return array


def _truncate_inter(directory: Path) -> None:
    path = directory / "toy.inter"
    path.write_bytes(path.read_bytes()[:-3])  # the last line "3\t4\t0" becomes "3\t4"


def _all_labels(label: int) -> Callable[[Path], None]:
    return lambda directory: _write_inter(
        directory / "toy.inter", [(u, i, label) for u, i, _ in ROWS]
    )


def _without_features(mutate: Callable[[Path], None]) -> Callable[[Path], None]:
    def without(directory: Path) -> None:
        (directory / "image_feat.npy").unlink()
        mutate(directory)

    return without


def _late_bad_value(directory: Path) -> None:
    # Past the CSV reader's first block, from which it infers column types, the bad value
    # surfaces as a conversion error without a row number; the importer must still name it.
    filler = [(user, item, 0) for user in range(4, 40_004) for item in range(5)]
    _write_inter(directory / "toy.inter", ROWS + filler + [(9, "x7", 0)])


BAD_INPUTS = [
    ("missing column", _header("userID\titemID\n"), r"toy\.inter: line 1: missing column x_label"),
    (
        "extra column",
        _header(HEADER.strip() + "\tcolour\n", "red"),
        r"toy\.inter: line 1: unexpected column 'colour'",
    ),
    (
        "fractional id",
        _replace_row(3, "0\t1.5\t0"),
        r"toy\.inter: line 5: column itemID: value 1\.5 is not an integer",
    ),
    (
        "text id",
        _replace_row(6, "ab\t1\t0"),
        r"toy\.inter: line 8: column userID: value 'ab' is not an integer",
    ),
    (
        "late text id",
        _late_bad_value,
        r"toy\.inter: line 200014: column itemID: value 'x7' is not an integer",
    ),
    (
        "missing value",
        _replace_row(2, "0\t\t1"),
        r"toy\.inter: line 4: column itemID: missing value",
    ),
    (
        "negative id",
        _replace_row(4, "-1\t1\t0"),
        r"toy\.inter: line 6: column userID: negative id -1",
    ),
    (
        # Without the bound the store would claim 2**31 users and inspect would die allocating.
        "absurd user id",
        _replace_row(11, "2147483647\t4\t0"),
        r"toy\.inter: line 13: column userID: id 2147483647 implies 2147483648 users, over the "
        r"bound of 1024 \(max\(2 x 12 rows, 1024\)\); pass --remap-ids to compact sparse ids$",
    ),
    (
        "absurd item id, no features",
        _without_features(_replace_row(2, "0\t5000\t1")),
        r"toy\.inter: line 4: column itemID: id 5000 implies 5001 items, over the bound of 1024 ",
    ),
    (
        # The feature matrix, whose row k is item k, bounds item ids.
        "absurd item id, features",
        _replace_row(2, "0\t5000\t1"),
        r"image_feat\.npy: has 6 rows but the interactions name 5001 items",
    ),
    (
        "label out of range",
        _replace_row(0, "0\t0\t3"),
        r"toy\.inter: line 2: column x_label: value 3 is not one of 0, 1, 2",
    ),
    (
        "duplicate pair",
        _replace_row(9, "2\t2\t1"),
        r"toy\.inter: line 11: duplicate pair \(user 2, item 2\) repeats line 10; 1 duplicate rows",
    ),
    (
        "truncated inter",
        _truncate_inter,
        r"toy\.inter: line 13: expected 3 tab-separated fields, got 2",
    ),
    ("empty inter", lambda d: (d / "toy.inter").write_text(""), r"toy\.inter: empty file"),
    (
        "header only",
        lambda d: (d / "toy.inter").write_text(HEADER),
        r"toy\.inter: no interaction rows",
    ),
    ("empty train split", _all_labels(1), r"toy\.inter: the training split \(label 0\) is empty"),
    (
        "too few feature rows",
        _features(np.zeros((NUM_ITEMS - 1, 4), dtype=np.float32)),
        r"image_feat\.npy: has 5 rows but the interactions name 6 items",
    ),
    (
        "too many feature rows",
        _features(np.zeros((NUM_ITEMS + 1, 4), dtype=np.float32)),
        r"image_feat\.npy: has 7 rows but the interactions name 6 items",
    ),
    (
        "nan feature",
        _features(_with_nan(np.nan)),
        r"image_feat\.npy: row 2, column 3: value nan is not finite",
    ),
    (
        "inf feature",
        _features(_with_nan(np.inf)),
        r"image_feat\.npy: row 2, column 3: value inf is not finite",
    ),
    (
        "integer features",
        _features(np.zeros((NUM_ITEMS, 4), dtype=np.int32)),
        r"image_feat\.npy: dtype int32 is not a float type",
    ),
    (
        "rank-1 features",
        _features(np.zeros(NUM_ITEMS, dtype=np.float32)),
        r"image_feat\.npy: expected a 2-D matrix \[items, width\], got rank 1",
    ),
    (
        "truncated features",
        _feature_bytes(lambda b: b[:-10]),
        r"image_feat\.npy: file truncated: header says shape \(6, 4\) float32",
    ),
    (
        "corrupt features",
        _feature_bytes(lambda b: b"garbage" + b[7:]),
        r"image_feat\.npy: not a valid \.npy file",
    ),
]


@pytest.mark.parametrize(
    "mutate,message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_mmrec_input(
    src: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[Path], None],
    message: str,
) -> None:
    mutate(src)
    out = tmp_path / "out"
    code, err = _import(src, out, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    assert not out.exists()
    assert _leftovers(tmp_path, {"toy"}) == []


def test_keep_first_policy_drops_and_records_duplicates(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _replace_row(9, "2\t2\t1")(src)
    code, err = _run(
        "data",
        "import-mmrec",
        str(src),
        str(tmp_path / "out"),
        "--duplicates",
        "keep-first",
        capsys=capsys,
    )
    assert code == 0, err
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["duplicates"] == {"policy": "keep-first", "dropped": 1}
    assert meta["num_interactions"] == len(ROWS) - 1
    # the pair's first row (line 10, train) is kept, its repeat (valid) dropped
    assert meta["splits"] == {"train": 7, "valid": 2, "test": 2}


def test_existing_output_is_left_alone(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, err = _import(src, out, capsys)
    assert code == 2
    assert err == f"error: {out}: output directory already exists"
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert _leftovers(tmp_path, {"toy", "out"}) == []


def test_missing_named_modality_file(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run(
        "data",
        "import-mmrec",
        str(src),
        str(tmp_path / "out"),
        "--modality",
        "text=text_feat.npy",
        capsys=capsys,
    )
    assert code == 2
    assert "text_feat.npy: feature file for modality 'text' not found" in err
    assert _leftovers(tmp_path, {"toy"}) == []


def test_generate_rejects_impossible_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    code, err = _run(
        "data",
        "generate",
        str(out),
        "--users",
        "10",
        "--items",
        "4",
        "--interactions",
        "50",
        "--modalities",
        "",
        "--no-progress",
        capsys=capsys,
    )
    assert code == 2
    assert err == (
        "error: --interactions 50 exceeds users x items/2 = 20 "
        "(no user may interact with more than half the catalogue)"
    )
    code, err = _run(
        "data",
        "generate",
        str(out),
        "--users",
        "10",
        "--items",
        "40",
        "--interactions",
        "50",
        "--modalities",
        "image:x",
        capsys=capsys,
    )
    assert code == 2 and "width 'x' of image is not an integer" in err
    assert not out.exists() and _leftovers(tmp_path, set()) == []


# --- a written store that was damaged afterwards: readers refuse it -------------------------


def _store_copy(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "store"
    assert _import(src, out, capsys)[0] == 0
    return out


def _edit_meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(store: Path) -> None:
        meta = json.loads((store / "meta.json").read_text())
        edit(meta)
        (store / "meta.json").write_text(json.dumps(meta))

    return mutate


def _truncate(name: str, drop: int) -> Callable[[Path], None]:
    def mutate(store: Path) -> None:
        path = store / name
        path.write_bytes(path.read_bytes()[:-drop])

    return mutate


BAD_STORES = [
    (
        "future version",
        _edit_meta(lambda m: m.update(format_version=99)),
        r"meta\.json: key format_version: 99 is not supported",
    ),
    (
        "no checksums",
        _edit_meta(lambda m: m["checksums"].pop("features/image.npy")),
        r"meta\.json: key checksums\['features/image\.npy'\] is missing",
    ),
    ("missing key", _edit_meta(lambda m: m.pop("splits")), r"meta\.json: key splits is missing"),
    (
        "malformed value",
        _edit_meta(lambda m: m.update(modalities={"image": "oops"})),
        r"meta\.json: malformed \(TypeError: ",
    ),
    ("not json", lambda s: (s / "meta.json").write_text("{oops"), r"meta\.json: not valid JSON"),
    (
        "missing file",
        lambda s: (s / "features" / "image.npy").unlink(),
        r"features/image\.npy: file listed in meta\.json is missing",
    ),
    (
        "truncated features",
        _truncate("features/image.npy", 10),
        r"features/image\.npy: file truncated",
    ),
    (
        "corrupt parquet",
        _truncate("interactions.parquet", 50),
        r"interactions\.parquet: not a readable Parquet file",
    ),
]


@pytest.mark.parametrize(
    "mutate,message", [case[1:] for case in BAD_STORES], ids=[case[0] for case in BAD_STORES]
)
def test_damaged_store_is_refused(
    src: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[Path], None],
    message: str,
) -> None:
    store = _store_copy(src, tmp_path, capsys)
    mutate(store)
    code, err = _run("data", "inspect", str(store), capsys=capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_verify_detects_changed_content(
    src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store_copy(src, tmp_path, capsys)
    assert _run("data", "inspect", str(store), "--verify", "--json", capsys=capsys)[0] == 0
    features = np.load(store / "features" / "image.npy")
    features[0, 0] += 1
    np.save(store / "features" / "image.npy", features)
    code, err = _run("data", "inspect", str(store), "--verify", capsys=capsys)
    assert code == 2
    assert "features/image.npy: content does not match its checksum" in err
