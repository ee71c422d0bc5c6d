"""The SGFD plug-in around SEA, MENTOR and VBPR (spec section 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sea_dist.config import MENTORCfg, SEACfg, SGFDCfg, VBPRCfg
from sea_dist.errors import ConfigError
from sea_dist.models.base import Recommender
from sea_dist.models.registry import build_model, resolve_item_labels
from sea_dist.models.sgfd import SGFD, Student, Teacher, kmeans_labels
from sea_dist.train.optim import build_optimizers

from tests.models.toy_graph import ToyGraph

BACKBONES = {
    "sea": lambda sgfd: SEACfg(embedding_dim=16, feature_hidden=32, sgfd=sgfd),
    "mentor": lambda sgfd: MENTORCfg(embedding_dim=16, feature_hidden=32, sgfd=sgfd),
    "vbpr": lambda sgfd: VBPRCfg(embedding_dim=16, sgfd=sgfd),
}


def labels_for(toy: ToyGraph) -> torch.Tensor:
    labels = torch.arange(toy.num_items) % 3
    labels[0] = -1  # one unknown label
    return labels


def build(toy: ToyGraph, name: str, sgfd: SGFDCfg | None = SGFDCfg()) -> Recommender:
    torch.manual_seed(0)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    labels = labels_for(toy) if sgfd else None
    return build_model(BACKBONES[name](sgfd), toy.num_users, toy.num_items, dims, labels)


def batch_for(toy: ToyGraph, name: str, mode: str = "full"):
    layers = 0 if name == "vbpr" else 2
    triples = toy.triples(8, num_negatives=2)
    if mode == "full":
        return toy.full_batch(layers, triples)
    return toy.sampled_batch(layers, triples)[0]


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_forward_backward_reaches_teacher_student_and_heads(
    toy: ToyGraph, name: str, mode: str
) -> None:
    model = build(toy, name)
    assert isinstance(model, SGFD)
    out = model(batch_for(toy, name, mode))
    for key in ("sgfd_ce", "sgfd_fusion", "sgfd_kd", "sgfd_fd"):
        assert torch.isfinite(out[key]) and not out[key].requires_grad, key
    out["loss"].backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    for m in model.modalities:
        assert model.teachers[m].layers[0].weight.grad.abs().sum() > 0
        assert model.students()[m].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BACKBONES)
def test_student_replaces_the_backbone_projection(toy: ToyGraph, name: str) -> None:
    plain, wrapped = build(toy, name, sgfd=None), build(toy, name)
    assert isinstance(wrapped, SGFD)
    projections = wrapped.backbone.feature_projections()
    for m in wrapped.modalities:
        assert isinstance(projections[m], Student)
        original = plain.feature_projections()[m]
        linears = [l for l in original.modules() if isinstance(l, torch.nn.Linear)]
        assert projections[m].out_features == linears[-1].out_features  # latent = replaced width
        assert projections[m].in_features == toy.features[m].shape[1]


@pytest.mark.parametrize("name", BACKBONES)
def test_plug_in_leaves_the_interface_unchanged(toy: ToyGraph, name: str) -> None:
    plain, wrapped = build(toy, name, sgfd=None), build(toy, name)
    batch = batch_for(toy, name)
    with torch.no_grad():
        assert wrapped.node_embeddings(batch).shape == plain.node_embeddings(batch).shape
    out_plain, out_wrapped = plain(batch), wrapped(batch)
    assert set(out_plain) <= set(out_wrapped)
    assert out_wrapped["loss"].dim() == 0
    assert [p.shape for p in wrapped.id_tables()] == [p.shape for p in plain.id_tables()]
    assert len(wrapped.estimator_parameters()) == len(plain.estimator_parameters())
    if name == "sea":  # the CLUB estimator still gets its stash through the wrapper
        assert wrapped.estimator_terms(out_wrapped) is not None
    opts = build_optimizers(wrapped, lr=1e-3, estimator_lr=1e-4, sparse_tables=True)
    groups = [g for o in opts.values() if o is not None for g in o.param_groups]
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in wrapped.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_teacher_is_not_used_at_inference(toy: ToyGraph, name: str) -> None:
    model = build(toy, name).eval()
    assert isinstance(model, SGFD)
    batch = batch_for(toy, name)
    with torch.no_grad():
        before = model.node_embeddings(batch)
        for module in (*model.teachers.values(), model.fusion, model.fusion_classifier):
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        for clf in model.classifiers.values():
            clf.weight.mul_(-3.0)
        after = model.node_embeddings(batch)
    torch.testing.assert_close(before, after)
    model.zero_grad()
    model.node_embeddings(batch).sum().backward()
    for module in (*model.teachers.values(), *model.classifiers.values(), model.fusion):
        assert all(p.grad is None for p in module.parameters())
    for m in model.modalities:  # the student does run at inference
        assert model.students()[m].weight.grad is not None


def test_teacher_still_works_when_removed_after_training(toy: ToyGraph) -> None:
    """Deleting the teachers leaves inference intact: nothing on that path touches them."""
    model = build(toy, "vbpr").eval()
    assert isinstance(model, SGFD)
    batch = batch_for(toy, "vbpr")
    with torch.no_grad():
        before = model.node_embeddings(batch)
        model.teachers = torch.nn.ModuleDict()
        torch.testing.assert_close(model.node_embeddings(batch), before)


def test_sgfd_loss_is_weighted_sum_on_top_of_the_backbone(toy: ToyGraph) -> None:
    sgfd = SGFDCfg(ce_weight=0.3, kd_weight=0.7)
    model = build(toy, "vbpr", sgfd)
    assert isinstance(model, SGFD)
    out = model(batch_for(toy, "vbpr"))
    backbone = out["bpr"] + model.backbone.reg_weight * out["reg"]
    extra = 0.3 * (out["sgfd_ce"] + out["sgfd_fusion"]) + 0.7 * (out["sgfd_kd"] + out["sgfd_fd"])
    assert float(out["loss"]) == pytest.approx(float(backbone + extra), rel=1e-5)


@pytest.mark.parametrize(
    ("in_dim", "latent", "widths"),
    [
        (4096, 128, [4096, 1024, 256, 128]),
        (512, 128, [512, 128]),
        (128, 64, [128, 64]),
        (24, 64, [24, 64]),
    ],
)
def test_teacher_shrinks_by_four_down_to_the_latent_width(
    in_dim: int, latent: int, widths: list[int]
) -> None:
    teacher = Teacher(in_dim, latent)
    assert [teacher.layers[0].in_features] + [l.out_features for l in teacher.layers] == widths
    out = teacher(torch.randn(5, in_dim))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))


def test_kmeans_labels_recover_separated_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    truth = torch.arange(80) % 4
    feats = centres[truth] + 0.1 * torch.randn(80, 4, generator=gen)
    other = centres[truth] + 0.1 * torch.randn(80, 4, generator=gen)
    labels = kmeans_labels([feats, other], num_clusters=4, iters=10, seed=0)
    assert labels.shape == (80,) and labels.dtype == torch.long
    # Same partition up to renaming: each true cluster maps to one label and vice versa.
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    again = kmeans_labels([feats, other], num_clusters=4, iters=10, seed=0)
    assert torch.equal(labels, again)  # seeded: every worker derives the same labels


def test_label_sources(toy: ToyGraph) -> None:
    feats = {m: f.numpy() for m, f in toy.features.items()}
    store = np.arange(toy.num_items) % 5
    none = np.full(toy.num_items, -1)
    assert resolve_item_labels(VBPRCfg(), store, feats) is None  # no sgfd section
    auto = VBPRCfg(sgfd=SGFDCfg())
    assert torch.equal(resolve_item_labels(auto, store, feats), torch.from_numpy(store))
    derived = resolve_item_labels(auto, None, feats)
    assert derived is not None and int(derived.max()) < 20
    assert torch.equal(resolve_item_labels(auto, none, feats), derived)  # all unknown: derive
    kmeans = VBPRCfg(sgfd=SGFDCfg(label_source="kmeans", num_clusters=3))
    assert int(resolve_item_labels(kmeans, store, feats).max()) <= 2
    with pytest.raises(ConfigError, match="no item labels"):
        resolve_item_labels(VBPRCfg(sgfd=SGFDCfg(label_source="store")), None, feats)


def test_build_model_needs_labels_for_sgfd(toy: ToyGraph) -> None:
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    with pytest.raises(ConfigError, match="item labels"):
        build_model(VBPRCfg(sgfd=SGFDCfg()), toy.num_users, toy.num_items, dims)


def test_unknown_labels_are_skipped_by_the_classifiers(toy: ToyGraph) -> None:
    torch.manual_seed(0)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    labels = torch.full((toy.num_items,), -1)
    labels[:2] = torch.tensor([0, 1])
    cfg = VBPRCfg(embedding_dim=8, sgfd=SGFDCfg())
    model = build_model(cfg, toy.num_users, toy.num_items, dims, labels)
    out = model(batch_for(toy, "vbpr"))
    assert torch.isfinite(out["loss"])
