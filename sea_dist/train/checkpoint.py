"""Training state on disk: what a resumed or replaced worker needs to continue exactly.

A checkpoint directory holds ``state.pt`` (model, optimizers, estimator optimizer, epoch,
early-stopping state), ``config.yaml`` (the resolved run config), so a checkpoint is
self-describing, and ``checkpoint.json`` (its epoch), so that a run can find the checkpoint of
its best epoch without loading every ``state.pt``. It holds no RNG state: the loop re-seeds per
epoch and rank. Rank 0 writes these (nanoGPT's ``master_process``); files are written to a
temporary name and renamed.

With row-sharded ID tables (``train.tables=row_sharded``) the tables and their optimizer
moments are not in ``state.pt``: ``tables/`` is a ``torch.distributed.checkpoint`` (DCP)
checkpoint to which every rank writes its own rows (``__<rank>_0.distcp``; rank 0 adds
``.metadata``, the global shapes and which file holds which rows), so no rank ever gathers a
whole table. Each Ray worker reports its own directory and Ray Train merges them into one
checkpoint. Loading asks DCP for any row layout: this rank's block when resuming on another
number of workers, whole tables in one process (``sea-dist evaluate``, a one-worker resume);
DCP reads only the stored chunks that overlap what is asked.

Loading unpickles tensors and plain values only: a checkpoint is a file anyone with write
access to the run directory could replace, and full unpickling would run whatever code it
names, on the driver and in every Ray worker. ``state.pt`` is read with
``torch.load(weights_only=True)``. DCP is used through a reader of our own because torch
2.2.1's ``FileSystemReader`` is not safe: it reads ``.metadata`` with a bare ``pickle.load``,
its data with ``torch.load`` without ``weights_only``, and byte items through the planner's
``torch.load`` too. :class:`_SafeReader` unpickles ``.metadata`` through an allowlist of DCP's
own metadata classes (plus ``torch.Size``, dtypes and layouts), accepts only plain
``__<n>_<n>.distcp`` file names inside the checkpoint, reads every tensor with
``weights_only=True`` and refuses byte items (we write none). DCP was kept over per-rank
``torch.save`` files because its resharding (which stored chunks overlap a requested block)
is exactly what resuming on another worker count needs, and the allowlist is small and fixed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed._shard._utils import narrow_tensor_by_index
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.utils import _create_file_view
from torch.futures import Future

from sea_dist.errors import CheckpointError
from sea_dist.io import atomic_write_text

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
INFO_FILE = "checkpoint.json"
TABLES_DIR = "tables"  # the DCP checkpoint of the row-sharded tables and their moments
METADATA_FILE = ".metadata"

# What DCP 2.2.1 pickles into .metadata, and nothing else: classes whose unpickling only sets
# fields, torch.Size, and the lookups torch registers for layouts (dtypes are checked apart).
_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name)
    for name in (
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed._shard.sharded_tensor.metadata", "TensorProperties"),
    ("torch.distributed._shard.sharded_tensor.metadata", "MEM_FORMAT_ENCODING"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
}
_DATA_FILE = re.compile(r"__\d+_\d+\.distcp")
# DCP's save logs "Duplicate keys to remove" at INFO on a console handler of its own, on every
# rank at every checkpoint.
logging.getLogger("torch.distributed.checkpoint._dedup_tensors").setLevel(logging.WARNING)


def save_checkpoint(
    directory: str | Path, state: dict[str, Any], config_yaml: str, epoch: int | None = None
) -> None:
    """Write ``state``, the resolved config and the epoch into ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)
    atomic_write_text(directory / CONFIG_FILE, config_yaml)
    if epoch is not None:
        atomic_write_text(directory / INFO_FILE, json.dumps({"epoch": epoch}) + "\n")


def find_checkpoint(root: str | Path, epoch: int) -> Path:
    """The checkpoint directory under ``root`` (Ray Train's run storage) written at ``epoch``.

    Raises:
        CheckpointError: if none is there (Ray Train deleted it, or it was never written).
    """
    for info in sorted(Path(root).glob(f"*/{INFO_FILE}")):
        try:
            if json.loads(info.read_text()).get("epoch") == epoch:
                return info.parent
        except (OSError, ValueError, AttributeError):
            continue  # a checkpoint being deleted, or not one of ours
    raise CheckpointError(f"{root}: no checkpoint of epoch {epoch}")


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``directory/state.pt``, refusing anything but tensors and plain values.

    Raises:
        CheckpointError: naming the file, if it is missing, truncated or holds other objects.
    """
    path = Path(directory) / STATE_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file is missing") from None
    except pickle.UnpicklingError as exc:
        # torch's message ends with the class it refused, e.g. "Unsupported class posix.system".
        refused = str(exc).rsplit("WeightsUnpickler error:", 1)[-1].strip()
        raise CheckpointError(
            f"{path}: refused, holds more than tensors and plain values ({refused})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a mapping of state, got {type(state).__name__}")
    return state


def save_tables(directory: str | Path, tables: dict[str, ShardedTensor]) -> None:
    """Write this rank's rows of ``tables`` under ``directory/tables`` (collective: every rank
    calls it with the same keys; rank 0 also writes the metadata)."""
    with warnings.catch_warnings():  # DCP 2.2.1's writer still calls tensor.storage()
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        dcp.save(tables, storage_writer=dcp.FileSystemWriter(Path(directory) / TABLES_DIR))


def load_tables(directory: str | Path, targets: dict[str, Tensor | ShardedTensor]) -> None:
    """Fill ``targets`` in place from ``directory/tables``, whatever the row layout it was saved
    with: ``ShardedTensor`` targets (this rank's rows; collective) or whole tensors (one process).

    Raises:
        CheckpointError: naming the file, if it is missing, unreadable, holds more than tensors
            and DCP's metadata, or does not hold every target at its shape.
    """
    root = Path(directory) / TABLES_DIR
    metadata = _read_metadata(root / METADATA_FILE)
    for key, target in targets.items():
        stored = metadata.state_dict_metadata.get(key)
        shape = tuple(stored.size) if isinstance(stored, TensorStorageMetadata) else None
        if shape != tuple(target.size()):
            raise CheckpointError(
                f"{root / METADATA_FILE}: does not fit this run ({key}: stored {shape}, "
                f"expected {tuple(target.size())})"
            )
    reader = _SafeReader(root, metadata)
    try:
        if any(isinstance(t, ShardedTensor) for t in targets.values()):
            dcp.load(targets, storage_reader=reader)
        else:
            with warnings.catch_warnings():  # dcp.load needs a process group; this one does not
                warnings.filterwarnings("ignore", message=".*load_state_dict.* is deprecated")
                dcp.load_state_dict(targets, storage_reader=reader, no_dist=True)
    except CheckpointException as exc:  # DCP gathers every rank's exception into this one
        errors = [error for error, _ in exc.failures.values()]
        ours = [e for e in errors if isinstance(e, CheckpointError)]
        if ours:
            raise ours[0] from None
        first = _first_line(errors[0])
        raise CheckpointError(f"{root}: not a readable checkpoint ({first})") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"Unsupported class {module}.{name}")


def _read_metadata(path: Path) -> Metadata:
    """DCP's ``.metadata``, unpickled through the allowlist and checked to name only data
    files of this checkpoint."""
    try:
        with path.open("rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file is missing") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused, holds more than DCP metadata ({exc})") from None
    except Exception as exc:  # a malformed pickle raises anything from its constructors
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(exc)})") from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise CheckpointError(f"{path}: not a DCP checkpoint's metadata")
    for info in metadata.storage_data.values():
        if not (isinstance(info, _StorageInfo) and _DATA_FILE.fullmatch(str(info.relative_path))):
            raise CheckpointError(f"{path}: refused, names a file that is not its own ({info})")
    return metadata


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader with ``metadata`` already checked and tensors-only data reads."""

    def __init__(self, path: Path, metadata: Metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self) -> Metadata:
        return self._metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[Any]] = {}
        for item in plan.items:
            name = self.storage_data[item.storage_index].relative_path
            per_file.setdefault(name, []).append(item)
        for name, items in per_file.items():
            path = self.path / name
            try:
                with path.open("rb") as fh:
                    for item in items:
                        self._read_item(path, fh, item, planner)
            except FileNotFoundError:
                raise CheckpointError(f"{path}: checkpoint file is missing") from None
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_item(self, path: Path, fh: IO[bytes], item: Any, planner: LoadPlanner) -> None:
        info = self.storage_data[item.storage_index]
        if item.type != LoadItemType.TENSOR:
            raise CheckpointError(f"{path}: refused, holds a pickled object where tensors belong")
        try:
            view = _create_file_view(fh, info.offset, info.length)
            stored = torch.load(view, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = str(exc).rsplit("WeightsUnpickler error:", 1)[-1].strip()
            raise CheckpointError(f"{path}: refused, holds more than tensors ({refused})") from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
            first = _first_line(exc)
            raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
        if not isinstance(stored, Tensor):
            raise CheckpointError(f"{path}: expected a tensor, got {type(stored).__name__}")
        rows = narrow_tensor_by_index(stored, item.storage_offsets, item.lengths)
        target = planner.resolve_tensor(item).detach()
        if target.size() != rows.size():
            raise CheckpointError(f"{path}: does not fit this run ({item.dest_index.fqn})")
        target.copy_(rows)
        planner.commit_tensor(item, target)
