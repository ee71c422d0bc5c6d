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
from torch import nn
from torch.optim import Adam, Optimizer, SparseAdam

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
    """Run ``steps`` estimator steps on the detached tensors the model's forward stashed.

    Call it after the model's backward and before the model optimizer's step. The model's
    backward also left gradients of the bound on the estimator's parameters; they are
    discarded here, since ``q`` follows its likelihood loss only. Under
    ``torch.distributed`` every rank fits on its own shard and the gradients are averaged each
    step, so all replicas of ``q`` stay identical.

    Returns:
        The last step's estimator loss, or ``None`` if nothing was fitted.
    """
    if estimator_opt is None or steps <= 0:
        return None
    params = model.estimator_parameters()
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    loss = None
    for _ in range(steps):
        estimator_opt.zero_grad(set_to_none=True)
        loss = model.estimator_loss(out)
        if loss is None:
            return None
        loss.backward()
        if distributed:
            _average_grads(params)
        estimator_opt.step()
    return None if loss is None else float(loss.detach())


def _average_grads(params: list[nn.Parameter]) -> None:
    """One all-reduce for the whole (small) estimator instead of one per tensor."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n
