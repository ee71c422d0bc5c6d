"""A scenario's data, prepared once and cached under ``<cache_dir>/bench/``.

- ``data.path``: an MMRec directory or a store, used as it is (the trainer imports an MMRec
  directory into its cache on first use).
- ``data.path`` + ``standin_features``: an MMRec directory without item features (gowalla).
  A copy of the directory is made with the ``.inter`` file linked and one generated
  ``<name>_feat.npy`` per requested modality: a fixed Gaussian random projection of the
  item's *training* interactions (``A_train^T R_m``, rows L2-normalised) plus Gaussian noise
  of the same scale. The features thus carry collaborative signal, as content features do,
  but never see valid or test interactions. They are stand-ins, stated as such in results.
- ``data.generate``: a synthetic catalogue (:func:`sea_dist.data.synthetic.generate_store`),
  keyed by its parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv

from sea_dist.bench.scenario import DataSpec, GenerateSpec, resolve_relative
from sea_dist.io import atomic_dir

log = logging.getLogger(__name__)

STANDIN_NOISE = 1.0


def _key(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def prepare_scenario_data(data: DataSpec, scenario_file: Path, cache_dir: Path) -> Path:
    """The directory to train on (``data.path`` of the run config); builds it if needed."""
    root = Path(cache_dir) / "bench"
    if data.generate is not None:
        return generated_store(data.generate, root)
    assert data.path is not None
    src = resolve_relative(scenario_file, data.path)
    if not src.is_dir():
        from sea_dist.errors import DataError

        raise DataError(f"{src}: scenario data directory not found")
    if data.standin_features and not any(src.glob("*_feat.npy")):
        return standin_copy(src, data.standin_features, root)
    return src


def generated_store(spec: GenerateSpec, root: Path) -> Path:
    """Generate the catalogue once; later calls with the same parameters reuse it."""
    from sea_dist.data.synthetic import generate_store

    path = root / f"synth-{spec.items}i-{spec.users}u-{spec.interactions}e-{_key(spec.model_dump())}"
    if (path / "meta.json").is_file():
        return path
    log.info("generating %s", path)
    root.mkdir(parents=True, exist_ok=True)
    generate_store(
        path,
        spec.users,
        spec.items,
        spec.interactions,
        dict(spec.modalities),
        spec.seed,
        progress=False,
        feature_dtype=spec.feature_dtype,
    )
    return path


def standin_copy(src: Path, modalities: dict[str, int], root: Path, seed: int = 0) -> Path:
    """An MMRec directory: ``src``'s ``.inter`` linked, stand-in ``*_feat.npy`` generated."""
    inters = sorted(src.glob("*.inter"))
    if len(inters) != 1:
        from sea_dist.errors import DataError

        raise DataError(f"{src}: expected one *.inter file, found {len(inters)}")
    inter = inters[0].resolve()
    stat = inter.stat()
    key = _key([inter.name, stat.st_size, stat.st_mtime_ns, modalities, seed, STANDIN_NOISE])
    path = root / f"{src.name}-standin-{key}"
    if path.is_dir():
        return path
    log.info("writing stand-in features for %s into %s", src, path)
    table = pacsv.read_csv(
        inter,
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(include_columns=["userID", "itemID", "x_label"]),
    )
    users = table["userID"].to_numpy().astype(np.int64)
    items = table["itemID"].to_numpy().astype(np.int64)
    train = table["x_label"].to_numpy() == 0
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    with atomic_dir(path, overwrite=True) as tmp:
        (tmp / inter.name).symlink_to(inter)
        for index, (name, width) in enumerate(modalities.items()):
            feats = standin_features(
                users[train], items[train], num_users, num_items, width, seed=seed + index
            )
            np.save(tmp / f"{name}_feat.npy", feats)
    return path


def standin_features(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, width: int, seed: int
) -> np.ndarray:
    """``[num_items, width]`` float32: unit rows of ``A^T R`` plus ``N(0, noise^2 / width)``."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((num_users, width), dtype=np.float32)
    import scipy.sparse as sp

    adjacency = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (items, users)), shape=(num_items, num_users)
    )
    out = np.asarray(adjacency @ proj, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, 1e-12)
    out += rng.standard_normal(out.shape, dtype=np.float32) * (STANDIN_NOISE / np.sqrt(width))
    return out
