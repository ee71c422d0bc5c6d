"""sea_dist: distributed training of multimodal recommenders on Ray with DGL sampling."""

import os
from importlib.metadata import PackageNotFoundError, version

# Without it DGL warns on first import and writes ~/.dgl/config.json; Ray workers inherit it.
os.environ.setdefault("DGLBACKEND", "pytorch")
# torch's CPU allocator backs tensors of 2 MB and more with transparent huge pages (read once,
# at torch's first allocation, so it must be set before torch is imported; Ray workers inherit
# it). A sampled step at catalogue scale allocates GBs of fresh temporaries, and faulting them
# in 4 KB pages took a third of it (README: "The million-item epoch at catalogue-scale settings").
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

try:
    __version__ = version("sea-dist")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
