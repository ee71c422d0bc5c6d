"""Modality roles go by name: the item-graph weights and the SoloSim anchor of a run, checked
against the reference on TikTok and refused, before Ray starts, when they name no modality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sea_dist.cli import main
from sea_dist.config import RunCfg, load_config
from sea_dist.data.store import Store
from sea_dist.errors import ConfigError
from sea_dist.graph.knn import exact_knn
from sea_dist.train.loop import prepare_data
from sea_dist.train.preflight import check_run

from tests.train.conftest import ROOT

TIKTOK = ROOT.parent / "shared" / "data" / "tiktok"


def _cfg(data_path: Path, cache: Path, *sets: str, config: str = "sea.yaml") -> RunCfg:
    overrides = [f"data.path={data_path}", f"data.cache_dir={cache}", *sets]
    return load_config(ROOT / "configs" / config, overrides)


def _weighted_knn(weighted: list[tuple[float, np.ndarray]], k: int) -> torch.Tensor:
    """``sum_m w_m S_m`` as a coalesced sparse matrix, each ``S_m`` a 1/k top-k graph."""
    rows, cols, vals = [], [], []
    for weight, features in weighted:
        neighbours = exact_knn(features, k)
        rows.append(np.repeat(np.arange(len(features)), k))
        cols.append(neighbours.ravel())
        vals.append(np.full(neighbours.size, weight / k))
    indices = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]))
    size = (len(rows[0]) // k,) * 2
    return torch.sparse_coo_tensor(indices, torch.from_numpy(np.concatenate(vals)), size).coalesce()


@pytest.mark.skipif(not TIKTOK.is_dir(), reason="../shared/data/tiktok not present")
def test_tiktok_item_graph_is_the_references(tmp_path: Path) -> None:
    """Defaults give S = 0.1 S_image + 0.9 S_audio (the reference's), whatever the order."""
    data = prepare_data(_cfg(TIKTOK, tmp_path))
    assert data.modalities == ["image", "audio"]  # imported in MMRec's order, vision first
    assert data.item_graph is not None
    info = data.item_graph.info["modalities"]
    assert [(m["name"], m["weight"]) for m in info] == [("image", 0.1), ("audio", 0.9)]
    expected = _weighted_knn([(0.1, data.features["image"]), (0.9, data.features["audio"])], k=10)
    # The order the store used to have (alphabetical) changes nothing.
    reordered = prepare_data(_cfg(TIKTOK, tmp_path, "data.modalities=[audio, image]"))
    for graph in (data.item_graph, reordered.item_graph):
        assert graph is not None
        got = graph.to_torch().to_sparse_coo().coalesce()
        torch.testing.assert_close(got.indices(), expected.indices())
        torch.testing.assert_close(got.values().double(), expected.values(), rtol=1e-6, atol=0)


def test_weights_naming_an_unused_modality_are_refused(tiny_store: Store, tmp_path: Path) -> None:
    for config in ("sea.yaml", "lightgcn.yaml"):  # also where no item graph is built
        cfg = _cfg(tiny_store.path, tmp_path, "graph.modality_weights={audio: 0.9}", config=config)
        with pytest.raises(ConfigError, match=(
            r"^graph\.modality_weights: audio not among the run's modalities \(image, text\)$"
        )):
            prepare_data(cfg)
    cfg = _cfg(tiny_store.path, tmp_path, "graph.modality_weights={image: 0.1, text: 0.5}")
    with pytest.raises(ConfigError, match=r"^graph\.modality_weights: .*sum to 1$"):
        prepare_data(cfg)


def test_anchor_naming_an_unused_modality_is_refused(tiny_store: Store, tmp_path: Path) -> None:
    cfg = _cfg(tiny_store.path, tmp_path, "model.solo_anchor=audio")
    with pytest.raises(ConfigError, match=(
        r"^model\.solo_anchor: 'audio' is not among the modalities \(image, text\)$"
    )):
        check_run(cfg, prepare_data(cfg))
    named = _cfg(tiny_store.path, tmp_path, "model.solo_anchor=image")
    check_run(named, prepare_data(named))


def test_cli_refuses_before_writing_the_run(
    tiny_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main([
        "train", "--config", str(ROOT / "configs" / "sea.yaml"), "--output", str(out), "--quiet",
        "--set", f"data.path={tiny_store.path}", "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "model.solo_anchor=audio",
    ])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: model.solo_anchor: 'audio' is not among the modalities")
    assert not out.exists()
