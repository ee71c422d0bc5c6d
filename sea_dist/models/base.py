"""The contract every recommender follows, and helpers for reading a :class:`MiniBatch`.

One forward code path serves both execution modes: the graph layer hands a full-graph batch
(blocks = the whole normalised adjacency, positions = global ids) or a sampled one (DGL
blocks whose destination nodes are a prefix of their sources); models only rely on that.

Inference has a second, layer-wise entry (DGL's "minibatch inference"): a driver computes
layer 0 for chunks of nodes (:meth:`Recommender.inference_inputs`), then each layer from the
previous one (:meth:`Recommender.inference_layer`), sums the layers per node, finishes the
rows (:meth:`Recommender.inference_outputs`) and, for models with an item hop, applies it
(:meth:`Recommender.inference_item_hop`). The models only see node ids, feature rows and
:class:`Block` s; how nodes are chunked and spread over workers is the driver's
(:mod:`sea_dist.eval.inference`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.graph.ops import propagate
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

    # Layer-wise inference. ``node_embeddings`` on a full-graph batch equals
    # ``inference_outputs(nodes, sum_l h_l)`` with ``h_0 = inference_inputs(nodes, ...)`` and
    # ``h_{l+1} = inference_layer(l, A_hat, h_l)``, followed by the item hop when ``item_hop``.

    #: Whether the final item rows are ``e + S e`` (:meth:`inference_item_hop`), when the
    #: run has an item graph.
    item_hop: bool = False

    @property
    @abstractmethod
    def num_inference_layers(self) -> int:
        """Propagation layers L of the user-item graph (0: none)."""

    @abstractmethod
    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        """Layer-0 representations ``h_0`` of ``nodes``.

        Every ID-table lookup must run whatever ``nodes`` holds (even none): a row-sharded
        table's lookup is a collective that every worker calls as often as the others.

        Args:
            nodes: ``[n]`` global node ids, users and items in any mix.
            item_features: per modality the raw rows of the items among ``nodes``, in order.

        Shapes:
            -> ``[n, D]``.
        """

    def inference_layer(self, layer: int, block: Block, h_src: Tensor) -> Tensor:
        """``h_{layer+1}`` of ``block``'s destination nodes from ``h_layer`` of its sources
        (parameter-free propagation unless a model says otherwise).

        Shapes:
            h_src: ``[N_src, D]`` -> ``[num_dst, D]``.
        """
        return propagate(block, h_src)

    def inference_outputs(self, nodes: Tensor, layer_sum: Tensor) -> Tensor:
        """Final representations of ``nodes`` (before the item hop) from ``sum_l h_l``.

        Shapes:
            layer_sum: ``[n, D]`` -> ``[n, d]``.
        """
        return layer_sum

    def inference_item_hop(self, block: Block, e_src: Tensor, e_dst: Tensor) -> Tensor:
        """``i = i_0 + S i_0`` for ``block``'s destination items (item-local blocks of ``S``).

        Shapes:
            e_src: ``[N_src, d]``, e_dst: ``[num_dst, d]`` -> ``[num_dst, d]``.
        """
        return e_dst + propagate(block, e_src)

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


def assemble_inputs(is_item: Tensor, user_rows: Tensor, item_rows: Tensor) -> Tensor:
    """Scatter user rows and item rows into node order (``is_item``: which nodes are items).

    Shapes:
        is_item: ``[N]`` bool, user_rows: ``[#users, d]``, item_rows: ``[#items, d]``
        -> ``[N, d]``.
    """
    # One gather from [users; items]: a single pass over [N, d] each way, where scattering both
    # into a zeroed [N, d] makes three (each out-of-place index_copy copies the whole output).
    source = torch.empty(len(is_item), dtype=torch.long, device=is_item.device)
    source[~is_item] = torch.arange(len(user_rows), device=is_item.device)
    source[is_item] = torch.arange(len(item_rows), device=is_item.device) + len(user_rows)
    return torch.cat([user_rows, item_rows]).index_select(0, source)


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
