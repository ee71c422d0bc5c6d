"""Streaming ``.npy`` reads and writes in bounded memory.

``np.load(mmap_mode="r")`` is how readers use a feature matrix, but a pass over a whole
matrix through a memory map leaves every page it touched resident (and counted in RSS) until
the map is dropped. Importing, validating and hashing a million-row matrix therefore read and
write it here with plain file I/O, one block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from sea_dist.errors import DataError

FLOAT_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class NpyHeader:
    """Shape, dtype and data offset of a ``.npy`` file whose size has been checked."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int


def read_header(path: Path) -> NpyHeader:
    """Parse the header of ``path`` and check that the file holds all the rows it announces.

    Raises:
        DataError: if the file is missing, not a ``.npy`` file, Fortran-ordered, of an
            object dtype, or shorter or longer than its header says (truncated or corrupt).
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            # Version 3.0 differs from 2.0 only in allowing UTF-8 field names.
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, SyntaxError, OSError) as exc:
        raise DataError(f"{path}: not a valid .npy file ({_one_line(exc)})") from None
    if fortran and len(shape) > 1:
        raise DataError(f"{path}: Fortran-ordered arrays are not supported; save it C-ordered")
    if dtype.hasobject:
        raise DataError(f"{path}: dtype {dtype} holds Python objects; expected a float matrix")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: file {what}: header says shape {shape} {dtype} ({expected} bytes), "
            f"file has {actual} bytes"
        )
    return NpyHeader(shape=tuple(int(n) for n in shape), dtype=dtype, offset=offset)


def check_matrix(path: Path, header: NpyHeader, num_rows: int | None = None) -> None:
    """Require a 2-D float matrix with ``num_rows`` rows (when given).

    Raises:
        DataError: naming the file and what is wrong (rank, dtype, row count).
    """
    if len(header.shape) != 2:
        raise DataError(
            f"{path}: expected a 2-D matrix [items, width], got rank {len(header.shape)} "
            f"with shape {header.shape}"
        )
    if header.dtype.name not in FLOAT_DTYPES:
        raise DataError(
            f"{path}: dtype {header.dtype} is not a float type ({', '.join(FLOAT_DTYPES)})"
        )
    if num_rows is not None and header.shape[0] != num_rows:
        raise DataError(
            f"{path}: has {header.shape[0]} rows but the interactions name {num_rows} items "
            "(row k must be item k)"
        )


def iter_rows(path: Path, header: NpyHeader, chunk_rows: int) -> Iterator[np.ndarray]:
    """Yield consecutive blocks of at most ``chunk_rows`` rows, read with ``readinto``."""
    num_rows = header.shape[0]
    row_shape = header.shape[1:]
    with open(path, "rb") as fh:
        fh.seek(header.offset)
        for start in range(0, num_rows, chunk_rows):
            rows = min(chunk_rows, num_rows - start)
            block = np.empty((rows, *row_shape), dtype=header.dtype)
            if fh.readinto(memoryview(block).cast("B")) != block.nbytes:
                raise DataError(f"{path}: file truncated at row {start}")
            yield block


class NpyWriter:
    """Write a ``[num_rows, width]`` matrix to ``path`` block by block.

    Raises on close if fewer or more rows were written than announced, so a writer that
    stopped early never leaves a file whose header lies.
    """

    def __init__(self, path: Path, num_rows: int, width: int, dtype: str) -> None:
        self.path = path
        self.num_rows = num_rows
        self.dtype = np.dtype(dtype)
        self.rows_written = 0
        self._fh = open(path, "wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (num_rows, width),
        }
        np.lib.format.write_array_header_1_0(self._fh, header)
        self.width = width

    def write(self, block: np.ndarray) -> None:
        """Append ``block`` (``[n, width]``), cast to the file's dtype."""
        if block.ndim != 2 or block.shape[1] != self.width:
            raise ValueError(f"block shape {block.shape} does not match width {self.width}")
        if self.rows_written + block.shape[0] > self.num_rows:
            raise ValueError(f"{self.path}: more than {self.num_rows} rows written")
        self._fh.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows_written += block.shape[0]

    def close(self) -> None:
        self._fh.close()
        if self.rows_written != self.num_rows:
            raise ValueError(f"{self.path}: wrote {self.rows_written} of {self.num_rows} rows")

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
