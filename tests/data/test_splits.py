"""MMRec's per-user split rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from sea_dist.data.splits import mmrec_split

ML100K = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k" / "ml-100k.inter"
)


@pytest.mark.parametrize(
    "n,train,valid,test",
    [
        (1, 1, 0, 0),
        (2, 1, 0, 1),
        (3, 1, 1, 1),
        (9, 7, 1, 1),
        (10, 8, 1, 1),
        (14, 12, 1, 1),
        (15, 12, 1, 2),
        (24, 20, 2, 2),
        (25, 20, 2, 3),
        (100, 80, 10, 10),
    ],
)
def test_counts_per_user(n: int, train: int, valid: int, test: int) -> None:
    labels = mmrec_split(np.zeros(n, dtype=np.int64), np.random.default_rng(0))
    assert labels.dtype == np.int8
    assert np.bincount(labels, minlength=3).tolist() == [train, valid, test]


def test_shuffles_within_users_and_keeps_alignment() -> None:
    users = np.repeat(np.arange(50), 20)[::-1].copy()  # any order is fine
    first = mmrec_split(users, np.random.default_rng(1))
    second = mmrec_split(users, np.random.default_rng(2))
    for labels in (first, second):
        counts = np.stack([np.bincount(users[labels == k], minlength=50) for k in range(3)])
        assert (counts == np.array([[16], [2], [2]])).all()
    assert (first != second).any()
    assert len(mmrec_split(np.zeros(0, dtype=np.int64), np.random.default_rng(0))) == 0


@pytest.mark.skipif(not ML100K.is_file(), reason="../shared/data not present")
def test_reproduces_the_per_user_counts_of_ml100k() -> None:
    table = pacsv.read_csv(ML100K, parse_options=pacsv.ParseOptions(delimiter="\t"))
    users = table["userID"].to_numpy()
    given = table["x_label"].to_numpy()
    ours = mmrec_split(users, np.random.default_rng(0))
    for k in range(3):
        np.testing.assert_array_equal(
            np.bincount(users[given == k], minlength=943),
            np.bincount(users[ours == k], minlength=943),
        )
