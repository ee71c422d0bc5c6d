"""MENTOR against the equations of spec sections 1 and 3."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sea_dist.losses.alignment import moment_alignment
from sea_dist.losses.contrastive import info_nce
from sea_dist.models.encoders import layer_sum
from sea_dist.models.mentor import MENTOR, MENTORParams, noisy_layer_sum

from tests.models.toy_graph import ToyGraph, dense_block

SMALL = dict(embedding_dim=8, feature_hidden=16)


def make_mentor(toy: ToyGraph, **overrides: object) -> MENTOR:
    torch.manual_seed(0)
    dims = {m: f.shape[1] for m, f in toy.features.items()}
    params = MENTORParams(**{**SMALL, **overrides})  # type: ignore[arg-type]
    return MENTOR(toy.num_users, toy.num_items, dims, params)


def _gcn(toy: ToyGraph, users: Tensor, items: Tensor, num_layers: int) -> Tensor:
    x = F.normalize(torch.cat([users, items]), dim=1)
    xh, h = x.clone(), x
    for _ in range(num_layers):
        h = toy.a_hat @ h
        xh = xh + h
    return xh


def dense_views(model: MENTOR, toy: ToyGraph, num_layers: int) -> dict[str, Tensor]:
    """The clean views r, g, v_m over the whole graph, written out densely."""
    u, hop = toy.num_users, toy.s_full
    branch = {
        m: _gcn(toy, model.user_tables[m].weight, model.encoders[m](toy.features[m]), num_layers)
        for m in model.modalities
    }
    branch["id"] = _gcn(toy, model.id_users.weight, model.id_encoder(model.id_items.weight), num_layers)
    num_mod = len(model.modalities)
    users = [
        model.user_weight.weight[:, k : k + 1] * branch[m][:u] for k, m in enumerate(model.modalities)
    ]
    r = torch.cat([torch.cat(users, 1), torch.cat([branch[m][u:] for m in model.modalities], 1)])
    views = {"r": r, "g": torch.cat([branch["id"]] * num_mod, 1)}
    views.update({m: torch.cat([branch[m]] * num_mod, 1) for m in model.modalities})
    return {k: v + hop @ v for k, v in views.items()}


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_node_embeddings_are_the_fused_view(toy: ToyGraph, num_layers: int) -> None:
    model = make_mentor(toy, num_layers=num_layers)
    with torch.no_grad():
        emb = model.node_embeddings(toy.full_batch(num_layers, toy.triples(4)))
        expected = dense_views(model, toy, num_layers)["r"]
    assert emb.shape == (toy.num_nodes, 16)
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-6)


def test_loss_terms_match_the_spec_on_a_full_batch(toy: ToyGraph) -> None:
    model = make_mentor(toy, mask_f_weight=0.0, mask_g_weight=0.0)
    batch = toy.full_batch(2, toy.triples(6))
    out = model(batch)
    with torch.no_grad():
        views = dense_views(model, toy, 2)
        r = views["r"]
        diff = (r[batch.users] * (r[batch.pos_items] - r[batch.neg_items[:, 0]])).sum(1)
        bpr = -torch.log2(torch.sigmoid(diff)).mean()
        users = batch.users
        reg = sum(model.user_tables[m](users).pow(2).mean() for m in model.modalities)
        reg = reg + model.user_weight(users).pow(2).mean()
        # Over every node in full-graph mode; the reference's pairs for [g, r, image, text].
        align = moment_alignment([views["g"], r, views["image"], views["text"]])
    assert float(out["bpr"]) == pytest.approx(float(bpr), rel=1e-5)
    assert float(out["reg"]) == pytest.approx(float(reg), rel=1e-5)
    assert float(out["align"]) == pytest.approx(float(align), rel=1e-4)
    p = model.params
    expected = bpr + p.reg_weight * reg + p.align_weight * align
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_feature_masking_has_gradients(toy: ToyGraph) -> None:
    """The reference computes the masking term under no_grad; here it trains the MLP and r."""
    model = make_mentor(toy, reg_weight=0.0, align_weight=0.0, mask_g_weight=0.0)
    batch = toy.full_batch(2, toy.triples(6))
    out = model(batch)
    assert float(out["mask_f"]) > 0
    (out["loss"] - out["bpr"]).backward()  # the masking term alone
    assert model.mask_mlp.weight.grad is not None and model.mask_mlp.weight.grad.abs().sum() > 0
    assert model.encoders["image"].lin1.weight.grad.abs().sum() > 0  # flows back into r


def test_graph_perturbation_contrasts_the_two_noisy_views(toy: ToyGraph) -> None:
    """With no noise and the noisy branches copied from the clean ones, n1 = n2 = r."""
    model = make_mentor(toy, noise_eps=0.0, align_weight=0.0, mask_f_weight=0.0)
    with torch.no_grad():
        for m in model.modalities:
            for k in (1, 2):
                model.user_tables[f"{m}_n{k}"].weight.copy_(model.user_tables[m].weight)
                model.encoders[f"{m}_n{k}"].load_state_dict(model.encoders[m].state_dict())
    batch = toy.full_batch(2, toy.triples(6))
    with torch.no_grad():
        out = model(batch)
        r = model.node_embeddings(batch)
        u = toy.num_users
        expected = info_nce(r[:u], r[:u], 0.2) + info_nce(r[u:], r[u:], 0.2)
    assert float(out["mask_g"]) == pytest.approx(float(expected), rel=1e-5)


def test_noise_is_random_and_bounded(toy: ToyGraph) -> None:
    nodes = torch.arange(toy.num_nodes)
    blocks = [dense_block(nodes, toy.num_nodes, toy.a_hat)] * 2
    x = torch.randn(toy.num_nodes, 12)
    clean = layer_sum(blocks, x)
    torch.testing.assert_close(noisy_layer_sum(blocks, x, 3, 0.0), clean)
    a, b = noisy_layer_sum(blocks, x, 3, 0.1), noisy_layer_sum(blocks, x, 3, 0.1)
    assert not torch.allclose(a, b)
    # One layer adds sign(h) * unit noise * 0.1 per branch and row: norm 0.1 where h != 0.
    one = noisy_layer_sum(blocks[:1], x, 3, 0.1)
    gap = (one - layer_sum(blocks[:1], x)).view(toy.num_nodes, 3, 4).norm(dim=-1)
    assert float(gap.max()) == pytest.approx(0.1, rel=1e-4)


def test_sampled_losses_cover_the_batch_rows(toy: ToyGraph) -> None:
    model = make_mentor(toy)
    batch, _ = toy.sampled_batch(2, toy.triples(5))
    out = model(batch)
    assert torch.isfinite(out["loss"])
    for key in ("align", "mask_f", "mask_g"):
        assert float(out[key]) > 0, key


def test_id_tables_hold_every_per_id_parameter(toy: ToyGraph) -> None:
    model = make_mentor(toy)
    tables = {id(p) for p in model.id_tables()}
    for name, p in model.named_parameters():
        rows = p.shape[0] in (toy.num_users, toy.num_items)
        per_id = p.dim() == 2 and rows and "encoders" not in name
        assert (id(p) in tables) == per_id, name
