"""The model optimizer and the CLUB estimator's optimizer (``sea_dist/train/optim.py``)."""

from __future__ import annotations

import pytest
import torch

from sea_dist.models.registry import registered_models
from sea_dist.models.sea import SEA, SEAParams
from sea_dist.train.optim import build_optimizers, fit_estimator

from tests.models.test_registry import build
from tests.models.toy_graph import ToyGraph


def _ids(opt: torch.optim.Optimizer | None) -> set[int]:
    if opt is None:
        return set()
    return {id(p) for group in opt.param_groups for p in group["params"]}


@pytest.mark.parametrize("name", registered_models())
@pytest.mark.parametrize("sparse_tables", [False, True])
def test_optimizers_are_disjoint_and_cover_every_parameter(
    toy: ToyGraph, name: str, sparse_tables: bool
) -> None:
    model = build(toy, name)
    opts = build_optimizers(model, lr=1e-3, estimator_lr=1e-4, sparse_tables=sparse_tables)
    sets = [_ids(o) for o in opts.values()]
    assert sum(len(s) for s in sets) == len({id(p) for p in model.parameters()})
    assert set().union(*sets) == {id(p) for p in model.parameters()}
    estimator = {id(p) for p in model.estimator_parameters()}
    assert _ids(opts["estimator"]) == estimator
    assert not estimator & _ids(opts["model"]) and not estimator & _ids(opts["tables"])
    assert _ids(opts["tables"]) == ({id(p) for p in model.id_tables()} if sparse_tables else set())
    assert (opts["estimator"] is None) == (name != "sea")


def _snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params: list[torch.nn.Parameter]) -> bool:
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


def test_estimator_steps_touch_only_the_estimator(toy: ToyGraph) -> None:
    model = build(toy, "sea")
    opts = build_optimizers(model, lr=1e-2, estimator_lr=1e-2)
    batch = toy.full_batch(2, toy.triples(8))
    out = model(batch)
    out["loss"].backward()  # the model's backward leaves the bound's gradient on q too
    model_before = _snapshot(model.model_parameters())
    q_before = _snapshot(model.estimator_parameters())
    terms = model.estimator_terms(out)
    first = sum(float(terms.estimators[e].learning_loss(terms.x[t], terms.y[t])) for t, e in enumerate(terms.index))
    last = fit_estimator(model, out, opts["estimator"], steps=50)
    assert last is not None and last < first
    assert _changed(q_before, model.estimator_parameters())
    assert not _changed(model_before, model.model_parameters())

    # With q fitted the bound is positive (it is clamped at 0, as the authors' is), and its
    # gradient reaches the encoders; the model's step leaves q alone.
    model.zero_grad(set_to_none=True)
    out = model(batch)
    assert float(out["dist"]) > 0
    out["loss"].backward()
    assert model.to_generic["image"].weight.grad.abs().sum() > 0
    q_before = _snapshot(model.estimator_parameters())
    opts["model"].step()
    assert _changed(model_before, model.model_parameters())
    assert not _changed(q_before, model.estimator_parameters())


def test_sparse_tables_step_with_sparse_adam(toy: ToyGraph) -> None:
    model = build(toy, "sea")
    opts = build_optimizers(model, lr=1e-2, estimator_lr=1e-4, sparse_tables=True)
    batch, _ = toy.sampled_batch(2, toy.triples(3))
    model(batch)["loss"].backward()
    tables = model.id_tables()
    before = _snapshot(tables)
    for table in tables:
        table.grad = table.grad.to_sparse()  # what the trainer's row-sparse sync hands over
    opts["tables"].step()
    input_users = set(batch.input_nodes[batch.input_nodes < toy.num_users].tolist())
    batch_users = set(batch.ids(batch.users).tolist())
    # P_m rows of every input user may move; w_u rows only for the batch's output users.
    for old, table, allowed in zip(before, tables, [input_users, input_users, batch_users]):
        moved = {int(r) for r in torch.nonzero((old != table.detach()).any(1)).flatten()}
        assert moved and moved <= allowed


def test_estimator_lr_follows_the_model_lr_unless_set(toy: ToyGraph) -> None:
    """The reference's estimator Adam takes the model's learning rate (model.estimator_lr
    unset); a set value still wins."""
    model = build(toy, "sea")
    for estimator_lr, expected in ((None, 1e-3), (1e-4, 1e-4)):
        opts = build_optimizers(model, lr=1e-3, estimator_lr=estimator_lr)
        assert [g["lr"] for g in opts["estimator"].param_groups] == [expected]
        assert [g["lr"] for g in opts["model"].param_groups] == [1e-3]


def test_bad_optimizer_settings(toy: ToyGraph) -> None:
    model = build(toy, "sea")
    with pytest.raises(ValueError, match="weight_decay"):
        build_optimizers(model, lr=1e-3, weight_decay=1e-4, estimator_lr=1e-4, sparse_tables=True)
    plain = SEA(3, 4, {"a": 4, "b": 4}, SEAParams(distancing="neg_l2", solo_anchor="b"))
    assert build_optimizers(plain, lr=1e-3)["estimator"] is None
