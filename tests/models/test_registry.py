"""Every registered model: forward, backward and finite loss on full and sampled batches."""

from __future__ import annotations

import pytest
import torch

from sea_dist.config import LightGCNCfg, MENTORCfg, ModelCfg, SEACfg, VBPRCfg
from sea_dist.errors import ConfigError
from sea_dist.models.base import Recommender
from sea_dist.models.registry import build_model, registered_models
from sea_dist.models.sea import SEA

from tests.models.toy_graph import ToyGraph, make_toy_graph


# Models that propagate nothing: they only take zero-layer batches.
NO_LAYERS = {"vbpr"}


def model_cfg(name: str, num_layers: int = 2) -> ModelCfg:
    if name == "lightgcn":
        return LightGCNCfg(num_layers=num_layers, embedding_dim=16)
    if name == "vbpr":
        return VBPRCfg(embedding_dim=16)
    if name == "mentor":
        return MENTORCfg(num_layers=num_layers, embedding_dim=16, feature_hidden=32)
    return SEACfg(name=name, num_layers=num_layers, embedding_dim=16, feature_hidden=32)


def layers(name: str, num_layers: int = 2) -> int:
    """The layer count a test can use for ``name``: 0 for models that propagate nothing."""
    return 0 if name in NO_LAYERS else num_layers


def build(toy: ToyGraph, name: str, num_layers: int = 2) -> Recommender:
    torch.manual_seed(0)
    num_layers = layers(name, num_layers)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    return build_model(model_cfg(name, num_layers), toy.num_users, toy.num_items, dims)


def test_registry_lists_the_configurable_models() -> None:
    assert set(registered_models()) == {"lightgcn", "sea", "sand", "mentor", "vbpr"}


@pytest.mark.parametrize("name", registered_models())
@pytest.mark.parametrize("num_layers", [0, 1, 2])
@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_forward_backward_finite(toy: ToyGraph, name: str, num_layers: int, mode: str) -> None:
    if name in NO_LAYERS and num_layers:
        pytest.skip(f"{name} propagates nothing")
    model = build(toy, name, num_layers)
    triples = toy.triples(8, num_negatives=2)
    if mode == "full":
        batch = toy.full_batch(num_layers, triples)
    else:
        batch, _ = toy.sampled_batch(num_layers, triples)
    out = model(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    for key, value in out.items():
        if key != "loss" and not key.startswith("_"):
            assert not value.requires_grad and torch.isfinite(torch.as_tensor(value)), key
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", registered_models())
def test_node_embeddings_shape(toy: ToyGraph, name: str) -> None:
    model = build(toy, name)
    batch = toy.full_batch(layers(name), toy.triples(4))
    emb = model.node_embeddings(batch)
    width = 16 if name == "lightgcn" else 16 * len(toy.features)  # VBPR: [ID | features]
    assert emb.shape == (toy.num_nodes, width)


@pytest.mark.parametrize("name", registered_models())
def test_full_and_sampled_batches_agree(toy: ToyGraph, name: str) -> None:
    """With every neighbour in the blocks, a sampled batch reproduces the full-graph rows."""
    model = build(toy, name).eval()
    triples = toy.triples(6, num_negatives=2)
    num_layers = layers(name)
    sampled, seed_pos = toy.sampled_batch(num_layers, triples)
    if num_layers:
        assert len(sampled.input_nodes) > len(sampled.output_nodes)  # a real 2-hop subgraph
    with torch.no_grad():
        full = model.node_embeddings(toy.full_batch(num_layers, triples))
        part = model.node_embeddings(sampled)
    expected = full[sampled.output_nodes[seed_pos]]
    torch.testing.assert_close(part[seed_pos], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", registered_models())
def test_layer_count_mismatch_is_an_error(toy: ToyGraph, name: str) -> None:
    model = build(toy, name, num_layers=2)
    with pytest.raises(ValueError, match="blocks"):
        model(toy.full_batch(1, toy.triples(4)))


def test_models_that_propagate_nothing_refuse_layers() -> None:
    with pytest.raises(ValueError):
        VBPRCfg(num_layers=2)


@pytest.mark.parametrize("name", ["sea", "sand"])
def test_sea_needs_two_modalities(name: str) -> None:
    one = make_toy_graph(dims={"image": 6, "text": 4})
    with pytest.raises(ConfigError, match="at least two modalities"):
        build_model(model_cfg(name), one.num_users, one.num_items, {"image": 6})


@pytest.mark.parametrize("name", ["sea", "sand"])
def test_solo_anchor_is_refused_as_its_config_key(name: str) -> None:
    def anchor(dims: dict[str, int], **overrides: object) -> str | None:
        model = build_model(model_cfg(name).model_copy(update=overrides), 5, 6, dims)
        assert isinstance(model, SEA)
        return model.anchor

    tiktok = {"image": 6, "audio": 4}
    assert anchor(tiktok) == "audio"
    with pytest.raises(ConfigError, match=r"^model\.solo_anchor: 'text' is not among the modal"):
        anchor(tiktok, solo_anchor="text")
    with pytest.raises(ConfigError, match=r"^model\.solo_anchor: no reference anchor"):
        anchor({"visual": 6, "acoustic": 4})
    assert anchor({"visual": 6, "acoustic": 4}, solo_anchor="acoustic") == "acoustic"
