"""Row-level checks shared by the importers: each failure is one line naming file, row and column.

``where(row)`` turns a 0-based row index into the position a user can find in their file
(``"baby.inter: line 7"`` for a text file with a header, ``"row 6"`` elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sea_dist.errors import DataError

Where = Callable[[int], str]

_INTEGER_TEXT = r"^\s*[+-]?\d+\s*$"


def integer_column(column: pa.ChunkedArray, name: str, where: Where) -> np.ndarray:
    """Return ``column`` as int64, requiring every value to be a present integer.

    Accepts integer columns, float columns whose values are all integral (``"3.0"``) and
    text columns of integer literals (the CSV reader yields text when one row is not a number).

    Raises:
        DataError: at the first missing or non-integer value.
    """
    null_rows = pc.is_null(column)
    if pc.any(null_rows).as_py():
        row = _first_true(null_rows)
        raise DataError(f"{where(row)}: column {name}: missing value")
    kind = column.type
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind):
        values = column.to_numpy()
        bad = ~np.isfinite(values) | (values != np.floor(values))
        if bad.any():
            row = int(np.argmax(bad))
            raise DataError(f"{where(row)}: column {name}: value {values[row]!r} is not an integer")
        return values.astype(np.int64)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        bad = pc.invert(pc.match_substring_regex(column, _INTEGER_TEXT))
        if pc.any(bad).as_py():
            row = _first_true(bad)
            raise DataError(
                f"{where(row)}: column {name}: value {column[row].as_py()!r} is not an integer"
            )
        return pc.cast(pc.utf8_trim_whitespace(column), pa.int64()).to_numpy()
    raise DataError(f"{where(0)}: column {name}: type {kind} is not an integer column")


def float_column(column: pa.ChunkedArray, name: str, where: Where) -> np.ndarray:
    """Return ``column`` as float64, requiring present, finite numbers."""
    null_rows = pc.is_null(column)
    if pc.any(null_rows).as_py():
        raise DataError(f"{where(_first_true(null_rows))}: column {name}: missing value")
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        try:
            column = pc.cast(column, pa.float64())
        except pa.ArrowInvalid:
            bad = pc.is_null(pc.cast(column, pa.float64(), safe=False))
            row = _first_true(bad) if pc.any(bad).as_py() else 0
            raise DataError(
                f"{where(row)}: column {name}: value {column[row].as_py()!r} is not a number"
            ) from None
    values = column.to_numpy().astype(np.float64, copy=False)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where(row)}: column {name}: value {values[row]} is not finite")
    return values


def require_nonnegative(values: np.ndarray, name: str, where: Where) -> None:
    """Ids are array indices, so a negative one is an error, not a missing value."""
    bad = values < 0
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{where(row)}: column {name}: negative id {values[row]}")


def require_in(values: np.ndarray, allowed: tuple[int, ...], name: str, where: Where) -> None:
    """Require every value to be one of ``allowed``."""
    bad = ~np.isin(values, np.asarray(allowed))
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"{where(row)}: column {name}: value {values[row]} is not one of "
            f"{', '.join(map(str, allowed))}"
        )


def duplicate_rows(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find rows that repeat an earlier row's (user, item) pair.

    Returns:
        ``(rows, first)``: the repeating rows in ascending order and, for each, the row of
        the pair's first occurrence.
    """
    if len(users) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    key = users.astype(np.int64) * (int(items.max()) + 1) + items
    # Fast path, and the common case: a plain sort shows there is nothing to report.
    sorted_key = np.sort(key)
    if not (sorted_key[1:] == sorted_key[:-1]).any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    del sorted_key
    # A stable sort keeps equal keys in file order, so the first of each run is the original.
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    repeat = np.zeros(len(key), dtype=bool)
    repeat[1:] = sorted_key[1:] == sorted_key[:-1]
    run_start = np.maximum.accumulate(np.where(~repeat, np.arange(len(key)), 0))
    rows = order[repeat]
    first = order[run_start[repeat]]
    by_row = np.argsort(rows)
    return rows[by_row], first[by_row]


def require_finite(block: np.ndarray, start_row: int, source: str) -> None:
    """Reject NaN or Inf in a block of feature rows that starts at ``start_row``."""
    finite = np.isfinite(block)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataError(
            f"{source}: row {start_row + int(row)}, column {int(col)}: "
            f"value {block[row, col]} is not finite"
        )


def _first_true(mask: pa.ChunkedArray) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))
