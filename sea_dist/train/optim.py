"""Optimizers: the model's (dense, plus row-sparse ID tables) and the separate CLUB estimator's.

SEA trains two sets of parameters with different objectives. The model minimises its loss,
CLUB bound included; the bound's estimator ``q`` is fitted separately, several steps per
model step, between the model's backward and its optimizer step (spec section 2):

    zero_grad -> loss = model(batch) -> loss.backward()
      -> fit_estimator(model, out, optimizers["estimator"], steps)
      -> step every other optimizer
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Adam, Optimizer, SparseAdam

from sea_dist.losses.mi import CLUBStack
from sea_dist.models.base import Recommender


def build_optimizers(
    model: Recommender,
    lr: float,
    weight_decay: float = 0.0,
    estimator_lr: float | None = None,
    sparse_tables: bool = False,
) -> dict[str, Optimizer | None]:
    """Disjoint optimizers covering every parameter of ``model`` once.

    Args:
        model: the recommender.
        lr: learning rate of the model's parameters.
        weight_decay: Adam weight decay of the dense parameters.
        estimator_lr: learning rate of the estimator's own Adam; ``None`` follows ``lr``, as
            the reference's estimator optimizer does (``model.estimator_lr`` unset).
        sparse_tables: put :meth:`Recommender.id_tables` into a ``SparseAdam`` (their gradients
            must be made sparse before its step, see ``train/sparse_sync.py``) instead of the
            dense Adam.

    Returns:
        ``{"model": Adam | None, "tables": SparseAdam | None, "estimator": Adam | None}``;
        an entry is ``None`` when it would have no parameters. The estimator's optimizer is
        stepped by :func:`fit_estimator` only.
    """
    estimator = model.estimator_parameters()
    estimator_lr = lr if estimator_lr is None else estimator_lr
    tables = model.id_tables() if sparse_tables else []
    if tables and weight_decay > 0:
        raise ValueError(
            "train.weight_decay must be 0 with row-sparse ID tables "
            "(SparseAdam has no weight decay)"
        )
    skip = {id(p) for p in tables}
    dense = [p for p in model.model_parameters() if id(p) not in skip]
    return {
        "model": Adam(dense, lr=lr, weight_decay=weight_decay) if dense else None,
        "tables": SparseAdam(tables, lr=lr) if tables else None,
        "estimator": Adam(estimator, lr=estimator_lr) if estimator else None,
    }


def fit_estimator(
    model: Recommender, out: dict[str, Any], estimator_opt: Optimizer | None, steps: int
) -> float | None:
    """Run ``steps`` Adam steps of the CLUB estimators on the detached pairs the forward stashed.

    Call it after the model's backward and before the model optimizer's step. The estimators'
    parameters are packed into one buffer (:class:`~sea_dist.losses.mi.CLUBStack`) and stepped
    with the analytic NLL gradient and an Adam update written on that buffer, which computes
    what ``estimator_opt`` (a plain :class:`~torch.optim.Adam`) would; its state is read
    before and written back after, so checkpoints keep ``torch.optim``'s layout. The model's
    backward left the bound's gradient on ``q``: it is dropped, since ``q`` follows its
    likelihood loss only. For float32 CPU tensors the whole inner loop is one call into a
    compiled kernel (:mod:`sea_dist.losses.native`) where it builds and is the faster route
    on the machine; otherwise (a GPU, float64, no C compiler, a slower build) it runs in
    torch, which is also what the tests hold the kernel to.

    Under ``torch.distributed`` each rank fits its own shard's pairs for all ``steps``, then
    parameters and Adam moments are averaged once: one all-reduce per model step instead of
    one per inner step (local steps with periodic averaging; ``tests/train/test_estimator.py``
    bounds how far the fitted likelihood moves from per-step gradient averaging).

    Returns:
        The loss before the last step (the one it followed), or ``None`` if nothing was fitted.
    """
    terms = model.estimator_terms(out)
    if estimator_opt is None or steps <= 0 or terms is None:
        return None
    stack = CLUBStack(terms.estimators)
    params = stack.parameters()
    for group in params:
        for p in group:
            p.grad = None
    group = estimator_opt.param_groups[0]
    if group["amsgrad"] or group["maximize"] or len(estimator_opt.param_groups) != 1:
        raise ValueError("the CLUB estimator's optimizer must be plain Adam with one group")
    with torch.no_grad():
        theta = stack.pack([[p.detach() for p in g] for g in params])
        states = [[estimator_opt.state[p] for p in g] for g in params]
        fresh = not states[0][0]
        if fresh:
            exp_avg, exp_avg_sq, step = torch.zeros_like(theta), torch.zeros_like(theta), 0
        else:
            exp_avg = stack.pack([[s["exp_avg"] for s in g] for g in states])
            exp_avg_sq = stack.pack([[s["exp_avg_sq"] for s in g] for g in states])
            step = int(states[0][0]["step"])
        loss = stack.adam_fit(
            theta, exp_avg, exp_avg_sq, terms.index, terms.x, terms.y, steps, step,
            group["lr"], group["betas"], group["eps"], group["weight_decay"],
        )  # fmt: skip
        step += steps
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1:
            packed = torch.cat([theta, exp_avg, exp_avg_sq])
            dist.all_reduce(packed)
            packed /= world
            theta, exp_avg, exp_avg_sq = packed.chunk(3)
        stack.unpack(theta, [[p.data for p in g] for g in params])
        for g, group_states in zip(params, states):
            for p, state in zip(g, group_states):
                if fresh:
                    state.update(
                        step=torch.tensor(0.0),
                        exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                        exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                    )
                state["step"].fill_(step)
        stack.unpack(exp_avg, [[s["exp_avg"] for s in g] for g in states])
        stack.unpack(exp_avg_sq, [[s["exp_avg_sq"] for s in g] for g in states])
    return float(loss)
