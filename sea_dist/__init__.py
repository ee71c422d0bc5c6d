"""sea_dist: distributed training of multimodal recommenders on Ray with DGL sampling."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sea-dist")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
