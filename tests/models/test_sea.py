"""SEA / SAND against the equations of spec sections 1 and 2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sea_dist.graph.batch import MiniBatch
from sea_dist.losses.contrastive import info_nce, solo_sim_loss
from sea_dist.models.base import item_feature_rows
from sea_dist.models.sea import SEA, SEAParams, solo_anchor, split_generic_unique

from tests.models.toy_graph import ToyGraph, make_toy_graph

SMALL = dict(embedding_dim=16, feature_hidden=32)


def make_sea(toy: ToyGraph, **overrides: object) -> SEA:
    torch.manual_seed(0)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    params = SEAParams(**{**SMALL, **overrides})  # type: ignore[arg-type]
    return SEA(toy.num_users, toy.num_items, dims, params)


def dense_reference(model: SEA, toy: ToyGraph, num_layers: int) -> Tensor:
    """Spec section 1 written out densely over the whole graph."""
    u = toy.num_users
    users, items = [], []
    for k, m in enumerate(model.modalities):
        f = model.encoders[m](model.maps[m](toy.features[m]))
        x = F.normalize(torch.cat([model.user_tables[m].weight, f]), dim=1)
        xh, h = x.clone(), x
        for _ in range(num_layers):
            h = toy.a_hat @ h
            xh = xh + h
        users.append(model.user_weight.weight[:, k : k + 1] * xh[:u])
        items.append(xh[u:])
    i0 = torch.cat(items, dim=1)
    return torch.cat([torch.cat(users, dim=1), i0 + toy.s_items @ i0])


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_node_embeddings_match_dense_equations(toy: ToyGraph, num_layers: int) -> None:
    model = make_sea(toy, num_layers=num_layers)
    with torch.no_grad():
        emb = model.node_embeddings(toy.full_batch(num_layers, toy.triples(4)))
        expected = dense_reference(model, toy, num_layers)
    assert emb.shape == (toy.num_nodes, 32)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)


def test_item_hop_leaves_users_alone(toy: ToyGraph) -> None:
    model = make_sea(toy)
    triples = toy.triples(4)
    with torch.no_grad():
        with_hop = model.node_embeddings(toy.full_batch(2, triples))
        without = model.node_embeddings(toy.full_batch(2, triples, item_graph=False))
    torch.testing.assert_close(with_hop[: toy.num_users], without[: toy.num_users])
    assert not torch.allclose(with_hop[toy.num_users :], without[toy.num_users :])


def test_fusion_weights_start_as_a_softmax(toy: ToyGraph) -> None:
    w = make_sea(toy).user_weight.weight.detach()
    assert w.shape == (toy.num_users, 2)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(toy.num_users))
    assert w.std() > 0  # not a constant 0.5


def test_positional_split() -> None:
    t = torch.arange(14.0).view(2, 7)
    generic, unique = split_generic_unique(t)
    assert generic.shape == (2, 3) and unique.shape == (2, 4)
    torch.testing.assert_close(torch.cat([generic, unique], 1), t)
    torch.testing.assert_close(generic, t[:, :3])


def test_split_feeds_generic_to_solo_and_both_to_distancing(toy: ToyGraph) -> None:
    """Editing the map's unique output columns changes the distancing term only; editing
    the generic columns changes SoloSim too. Full-width maps: T is d_m wide."""
    model = make_sea(toy, distancing="neg_l2")
    assert model.maps["image"].out_features == 12 and model.maps["text"].out_features == 8
    assert model.heads["image"].net[0].in_features == 6
    assert model.to_unique["text"].in_features == 4
    batch = toy.full_batch(2, toy.triples(4))
    base = model(batch)
    with torch.no_grad():
        model.maps["text"].weight[4:] += 1.0  # unique half of text
    unique_edit = model(batch)
    assert float(unique_edit["solo"]) == pytest.approx(float(base["solo"]), rel=1e-6)
    assert float(unique_edit["dist"]) != pytest.approx(float(base["dist"]), rel=1e-4)
    with torch.no_grad():
        model.maps["text"].weight[:4] += 1.0  # generic half
    generic_edit = model(batch)
    assert float(generic_edit["solo"]) != pytest.approx(float(unique_edit["solo"]), rel=1e-4)


def test_loss_is_bpr_plus_weighted_terms(toy: ToyGraph) -> None:
    for distancing, weight in (("club", "ureg"), ("neg_l2", "l2_weight")):
        model = make_sea(toy, distancing=distancing, alpha=0.5, ureg=0.3, l2_weight=0.7)
        out = model(toy.full_batch(2, toy.triples(6)))
        expected = out["bpr"] + 0.5 * out["solo"] + getattr(model.params, weight) * out["dist"]
        assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    model = make_sea(toy, distancing="none", use_solo=False)
    out = model(toy.full_batch(2, toy.triples(6)))
    assert set(out) == {"loss", "bpr"} and float(out["loss"]) == float(out["bpr"])
    assert not list(model.heads.parameters()) and not model.estimator_parameters()


def test_bpr_uses_log2(toy: ToyGraph) -> None:
    model = make_sea(toy, distancing="none", use_solo=False)
    batch = toy.full_batch(2, toy.triples(6))
    emb = model.node_embeddings(batch)
    diff = (emb[batch.users] * (emb[batch.pos_items] - emb[batch.neg_items[:, 0]])).sum(1)
    expected = -torch.log2(torch.sigmoid(diff)).mean()
    assert float(model(batch)["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_split_losses_cover_exactly_the_loss_items(toy: ToyGraph) -> None:
    """SoloSim over a sampled batch equals SoloSim computed by hand on those items' features."""
    model = make_sea(toy, distancing="none")
    batch, _ = toy.sampled_batch(2, toy.triples(5))
    item_ids = batch.output_nodes[batch.loss_items] - toy.num_users
    with torch.no_grad():
        views = {
            m: model.heads[m](split_generic_unique(model.maps[m](toy.features[m][item_ids]))[0])
            for m in model.modalities
        }
        expected = solo_sim_loss(views["text"], [views["image"]], model.params.tau)
        assert float(model(batch)["solo"]) == pytest.approx(float(expected), rel=1e-5)


def test_item_feature_rows_maps_output_positions_to_item_rows() -> None:
    # Users 0..2 and items 3..; inputs interleave them, outputs are the first four inputs.
    batch = MiniBatch(
        blocks=[],
        input_nodes=torch.tensor([5, 1, 3, 0, 7, 4]),
        output_nodes=torch.tensor([5, 1, 3, 0, 7, 4]),
        users=torch.tensor([1]),
        pos_items=torch.tensor([0]),
        neg_items=torch.tensor([[2]]),
        loss_items=torch.tensor([0, 2, 4, 5]),
        num_users=3,
    )
    # Item rows are in input order: 5 -> 0, 3 -> 1, 7 -> 2, 4 -> 3.
    assert item_feature_rows(batch, torch.tensor([4, 0, 5, 2])).tolist() == [2, 0, 3, 1]


def test_estimators_per_modality_or_shared(toy: ToyGraph) -> None:
    batch = toy.full_batch(2, toy.triples(4))
    own = make_sea(toy)
    assert set(own.estimators) == {"image", "text"}
    terms = own.estimator_terms(own(batch))
    # One term per modality, fitting that modality's q on its (generic, unique) pairs.
    assert terms.estimators == [own.estimators[m] for m in own.modalities]
    assert terms.index.tolist() == [0, 1]
    assert not terms.x.requires_grad and not terms.y.requires_grad
    generic = dict(zip(own.modalities, terms.x))
    unique = dict(zip(own.modalities, terms.y))
    assert generic["image"].shape == (toy.num_items, own.params.mi_dim)

    cross = make_sea(toy, estimator_cross_modal=True)
    assert set(cross.estimators) == {"shared"}
    shared = {k: v for k, v in own.state_dict().items() if not k.startswith("estimators.")}
    cross.load_state_dict(shared, strict=False)
    # The reference fits q(image generic | text generic) and q(image unique | text unique).
    terms = cross.estimator_terms(cross(batch))
    assert terms.estimators == [cross.estimators["shared"]] and terms.index.tolist() == [0, 0]
    torch.testing.assert_close(terms.x, torch.stack([generic["text"], unique["text"]]))
    torch.testing.assert_close(terms.y, torch.stack([generic["image"], unique["image"]]))
    # The conditioning side is the named anchor, not a position.
    cross.anchor = "image"
    terms = cross.estimator_terms(cross(batch))
    torch.testing.assert_close(terms.x, torch.stack([generic["image"], unique["image"]]))
    torch.testing.assert_close(terms.y, torch.stack([generic["text"], unique["text"]]))


def _solo_views(model: SEA, toy: ToyGraph) -> dict[str, Tensor]:
    """Projected generic parts of every item, as a full-graph forward computes them."""
    return {
        m: model.heads[m](split_generic_unique(model.maps[m](toy.features[m]))[0])
        for m in model.modalities
    }


def test_solo_anchor_goes_by_name(toy: ToyGraph) -> None:
    """By default SoloSim anchors on the modality that is not image (the reference's text),
    whatever order the modalities come in; a named anchor turns the direction round."""
    batch = toy.full_batch(2, toy.triples(6))
    tau = SEAParams().tau
    default = make_sea(toy, distancing="none")
    assert default.anchor == "text"
    with torch.no_grad():
        views = _solo_views(default, toy)
        text_anchored = float(default(batch)["solo"])
        assert text_anchored == pytest.approx(float(info_nce(views["text"], views["image"], tau)))
        image_anchored = float(make_sea(toy, distancing="none", solo_anchor="image")(batch)["solo"])
        assert image_anchored == pytest.approx(float(info_nce(views["image"], views["text"], tau)))
        assert image_anchored != pytest.approx(text_anchored, rel=1e-3)
        dims = {m: toy.features[m].shape[1] for m in ("text", "image")}  # the other order
        reordered = SEA(toy.num_users, toy.num_items, dims, SEAParams(**SMALL, distancing="none"))
        reordered.load_state_dict(default.state_dict())  # parameters are keyed by modality
        assert reordered.anchor == "text"
        assert float(reordered(batch)["solo"]) == pytest.approx(text_anchored, rel=1e-6)


def test_solo_anchor_defaults_and_refusals() -> None:
    assert solo_anchor(["audio", "image"]) == "audio"  # TikTok as the store once ordered it
    assert solo_anchor(["image", "text"]) == "text"
    assert solo_anchor(["image", "text"], "image") == "image"
    with pytest.raises(ValueError, match=r"^'audio' is not among the modalities \(image, text\)$"):
        solo_anchor(["image", "text"], "audio")
    for ambiguous in (["visual", "acoustic"], ["image", "text", "audio"]):
        with pytest.raises(ValueError, match="no reference anchor"):
            solo_anchor(ambiguous)
    with pytest.raises(ValueError, match="no reference anchor"):
        SEA(3, 4, {"visual": 4, "acoustic": 4})
    # Nothing has a direction: no anchor is needed, and none is resolved.
    plain = SEA(3, 4, {"visual": 4, "acoustic": 4}, SEAParams(use_solo=False, distancing="neg_l2"))
    assert plain.anchor is None


def test_sand_has_no_estimator_and_a_bounded_term(toy: ToyGraph) -> None:
    model = make_sea(toy, distancing="neg_l2")
    out = model(toy.full_batch(2, toy.triples(4)))
    assert model.estimator_parameters() == [] and model.estimator_terms(out) is None
    assert -4.0 <= float(out["dist"]) <= 0.0


def test_map_dim_narrows_the_features(toy: ToyGraph) -> None:
    model = make_sea(toy, map_dim=6)
    assert model.maps["image"].out_features == 6 and model.encoders["text"].lin1.in_features == 6
    assert model.to_generic["image"].in_features == 3
    out = model(toy.full_batch(2, toy.triples(4)))
    assert torch.isfinite(out["loss"])


def test_three_modalities() -> None:
    toy = make_toy_graph(dims={"image": 10, "text": 6, "audio": 8})
    model = make_sea(toy, solo_anchor="text")  # no single reference anchor among three
    batch = toy.full_batch(2, toy.triples(4))
    assert model.node_embeddings(batch).shape == (toy.num_nodes, 48)
    out = model(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and set(model.estimators) == {"image", "text", "audio"}
    assert model.user_weight.weight.grad is not None and model.user_weight.weight.shape == (toy.num_users, 3)


def test_half_precision_features_are_accepted(toy: ToyGraph) -> None:
    model = make_sea(toy)
    batch = toy.full_batch(2, toy.triples(4))
    batch.item_features = {m: f.half() for m, f in toy.features.items()}
    assert torch.isfinite(model(batch)["loss"])


def test_constructor_rejects_bad_modalities() -> None:
    with pytest.raises(ValueError, match="two modalities"):
        SEA(3, 4, {"image": 8})
    with pytest.raises(ValueError, match="narrower"):
        SEA(3, 4, {"image": 8, "text": 1})


def test_map_folded_into_the_encoder_gives_the_same_inputs_and_gradients(toy: ToyGraph) -> None:
    model = make_sea(toy, feature_hidden=4)  # narrower than the batch's items: the fold applies
    batch, _ = toy.sampled_batch(2, toy.triples(5))
    n_items = int(batch.input_is_item.sum())
    rows = item_feature_rows(batch, batch.loss_items)
    assert 4 < n_items and len(rows) < n_items
    probe = torch.randn(len(batch.input_nodes), 32, generator=torch.Generator().manual_seed(1))
    results = []
    for mapped_rows in (rows, torch.arange(n_items)):  # folded, then the plain two products
        model.zero_grad()
        x, mapped = model._inputs(batch.input_nodes, batch.item_features, mapped_rows)
        mapped = {m: v[rows] if len(mapped_rows) == n_items else v for m, v in mapped.items()}
        ((x * probe).sum() + sum(v.pow(2).sum() for v in mapped.values())).backward()
        grads = [model.maps[m].weight.grad.clone() for m in model.modalities]
        grads += [model.encoders[m].lin1.weight.grad.clone() for m in model.modalities]
        results.append((x.detach(), mapped, grads))
    (x_fold, mapped_fold, grads_fold), (x_plain, mapped_plain, grads_plain) = results
    torch.testing.assert_close(x_fold, x_plain, rtol=1e-5, atol=1e-6)
    for m in model.modalities:
        torch.testing.assert_close(mapped_fold[m], mapped_plain[m], rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_fold, grads_plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bfloat16_tower_stays_close_to_float32(toy: ToyGraph) -> None:
    batch, _ = toy.sampled_batch(2, toy.triples(5))
    out = {}
    for dtype in ("float32", "bfloat16"):
        model = make_sea(toy, feature_hidden=4, tower_dtype=dtype)
        x, _ = model._inputs(batch.input_nodes, batch.item_features)
        assert x.dtype == torch.float32
        out[dtype] = x.detach()
    diff = (out["bfloat16"] - out["float32"]).abs().max()
    assert 0 < diff < 2e-2  # bfloat16 keeps 8 bits of mantissa; rows are unit-normalised
