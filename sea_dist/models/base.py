"""The contract every recommender follows, and helpers for reading a :class:`MiniBatch`.

One forward code path serves both execution modes: the graph layer hands a full-graph batch
(blocks = the whole normalised adjacency, positions = global ids) or a sampled one (DGL
blocks whose destination nodes are a prefix of their sources); models only rely on that.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from sea_dist.graph.batch import MiniBatch
from sea_dist.losses.mi import CLUBTerms


class Recommender(nn.Module, ABC):
    """Base class: a model maps a :class:`MiniBatch` to a loss and to node representations.

    Entries of the ``forward`` output other than ``"loss"`` are detached terms for logging;
    keys starting with ``_`` are stashes for :meth:`estimator_terms`, not terms.
    """

    @abstractmethod
    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        """Training step: ``{"loss": scalar with grad, **terms}``."""

    @abstractmethod
    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        """Final representations of the batch's output nodes, ``[n_out, d]``; scores are dot
        products of rows. On a full-graph batch rows ``[:U]`` are users, ``[U:]`` items."""

    def estimator_parameters(self) -> list[nn.Parameter]:
        """Parameters of inner estimators (e.g. CLUB's ``q``); they have their own optimizer."""
        return []

    def estimator_terms(self, out: dict[str, Any]) -> CLUBTerms | None:
        """What the inner estimators fit, from the detached tensors ``forward`` stashed."""
        return None

    def id_tables(self) -> list[nn.Parameter]:
        """Per-ID tables (one row per user or item) whose gradients touch few rows per step,
        so the trainer may sync them row-sparse and update them with a sparse optimizer."""
        return []

    def model_parameters(self) -> list[nn.Parameter]:
        """Everything the model optimizer updates: all parameters minus the estimators'."""
        skip = {id(p) for p in self.estimator_parameters()}
        return [p for p in self.parameters() if id(p) not in skip]


def item_feature_rows(batch: MiniBatch, positions: Tensor) -> Tensor:
    """Rows of ``batch.item_features[m]`` that belong to the output nodes at ``positions``.

    Output nodes are a prefix of the input nodes, so output position ``p`` is input position
    ``p``; item features are stored for the input items only, in input order, hence the
    running count of items up to ``p``. ``positions`` must point at items.

    Shapes:
        positions: ``[N]`` -> ``[N]`` indices into the item-feature rows.
    """
    item_rank = torch.cumsum(batch.input_is_item.long(), dim=0) - 1  # [N_in]
    return item_rank[positions]


def assemble_inputs(batch: MiniBatch, user_rows: Tensor, item_rows: Tensor) -> Tensor:
    """Scatter user rows and item rows into input-node order.

    Shapes:
        user_rows: ``[#input users, d]``, item_rows: ``[#input items, d]`` -> ``[N_in, d]``.
    """
    is_item = batch.input_is_item
    out = user_rows.new_zeros((len(batch.input_nodes), user_rows.shape[1]))
    out = out.index_copy(0, torch.nonzero(~is_item, as_tuple=True)[0], user_rows)
    return out.index_copy(0, torch.nonzero(is_item, as_tuple=True)[0], item_rows)


def triple_scores(emb: Tensor, batch: MiniBatch) -> tuple[Tensor, Tensor]:
    """Dot-product scores of the batch's (user, positive) and (user, negatives) pairs.

    Shapes:
        emb: ``[n_out, d]`` -> pos ``[B]``, neg ``[B, K]``.
    """
    users = emb[batch.users]  # [B, d]
    pos = (users * emb[batch.pos_items]).sum(dim=-1)
    neg_items = batch.neg_items if batch.neg_items.dim() == 2 else batch.neg_items.unsqueeze(1)
    neg = (users.unsqueeze(1) * emb[neg_items]).sum(dim=-1)  # [B, K]
    return pos, neg
