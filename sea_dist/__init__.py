"""sea_dist: distributed training of multimodal recommenders on Ray with DGL sampling."""

import os
from importlib.metadata import PackageNotFoundError, version

# Without it DGL warns on first import and writes ~/.dgl/config.json; Ray workers inherit it.
os.environ.setdefault("DGLBACKEND", "pytorch")

try:
    __version__ = version("sea-dist")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
