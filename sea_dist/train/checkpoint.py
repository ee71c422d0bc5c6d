"""Training state on disk: what a resumed or replaced worker needs to continue exactly.

A checkpoint directory holds ``state.pt`` (model, optimizers, estimator optimizer, epoch,
early-stopping state), ``config.yaml`` (the resolved run config), so a checkpoint is
self-describing, and ``checkpoint.json`` (its epoch), so that a run can find the checkpoint of
its best epoch without loading every ``state.pt``. It holds no RNG state: the loop re-seeds per
epoch and rank. Only rank 0 writes (nanoGPT's ``master_process``); files are written to a
temporary name and renamed.

Loading unpickles tensors and plain values only (``torch.load(weights_only=True)``): a
checkpoint is a file anyone with write access to the run directory could replace, and full
unpickling would run whatever code it names, on the driver and in every Ray worker.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from sea_dist.errors import CheckpointError
from sea_dist.io import atomic_write_text

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
INFO_FILE = "checkpoint.json"


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
