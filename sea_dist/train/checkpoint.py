"""Training state on disk: what a resumed or replaced worker needs to continue exactly.

A checkpoint directory holds ``state.pt`` (model, optimizers, estimator optimizer, epoch,
early-stopping state, the best model so far) and ``config.yaml`` (the resolved run config), so
a checkpoint is self-describing. It holds no RNG state: the loop re-seeds per epoch and rank.
Only rank 0 writes (nanoGPT's ``master_process``); files are written to a temporary name and
renamed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sea_dist.io import atomic_write_text

STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"


def save_checkpoint(directory: str | Path, state: dict[str, Any], config_yaml: str) -> None:
    """Write ``state`` and the resolved config into ``directory`` atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / STATE_FILE)
    atomic_write_text(directory / CONFIG_FILE, config_yaml)


def load_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(Path(directory) / STATE_FILE, map_location=map_location)
