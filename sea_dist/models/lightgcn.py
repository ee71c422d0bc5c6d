"""LightGCN: the ID-only graph baseline."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sea_dist.graph.batch import MiniBatch
from sea_dist.losses.ranking import bpr_loss, l2_reg
from sea_dist.models.base import Recommender, triple_scores
from sea_dist.models.encoders import layer_sum
from sea_dist.models.tables import IdTable


class LightGCN(Recommender):
    r"""LightGCN from "LightGCN: Simplifying and Powering Graph Convolution Network for
    Recommendation" (He et al., SIGIR 2020, https://arxiv.org/abs/2002.02126).

    Free embeddings :math:`E^{(0)}` for every user and item, propagated without weights or
    non-linearities and averaged over layers:

    .. math::
        E^{(l+1)} = \hat{A} E^{(l)}, \qquad
        E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}, \qquad
        \mathcal{L} = \mathcal{L}_{BPR} + \lambda \cdot \frac{1}{2B}
            \big(\lVert E^{(0)}_u \rVert^2 + \lVert E^{(0)}_{i^+} \rVert^2
                 + \lVert E^{(0)}_{i^-} \rVert^2\big)

    with the regulariser over the batch's layer-0 rows (reference convention) and the
    natural-log BPR of the MMRec LightGCN. It ignores item features and the item-item graph.

    Args:
        num_users (int): number of users U.
        num_items (int): number of items I.
        embedding_dim (int, optional): embedding width. (default: :obj:`64`)
        num_layers (int, optional): propagation layers L; the batch must carry L blocks.
            (default: :obj:`2`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-4`)

    Shapes:
        node_embeddings: batch -> ``[n_out, embedding_dim]``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int = 64,
        num_layers: int = 2,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        self.num_users, self.num_items = num_users, num_items
        self.num_layers, self.reg_weight = num_layers, reg_weight
        # One table indexed by the homogeneous node id: users 0..U-1, items U..U+I-1.
        self.embedding = IdTable(num_users + num_items, embedding_dim, init="xavier_uniform")
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embedding.reset_parameters()

    def id_tables(self) -> list[nn.Parameter]:
        return [self.embedding.weight]

    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        if len(batch.blocks) != self.num_layers:
            raise ValueError(
                f"batch has {len(batch.blocks)} blocks, model has {self.num_layers} layers"
            )
        return layer_sum(batch.blocks, self.embedding(batch.input_nodes), mean=True)

    @property
    def num_inference_layers(self) -> int:
        return self.num_layers

    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        return self.embedding(nodes)

    def inference_outputs(self, nodes: Tensor, layer_sum: Tensor) -> Tensor:
        return layer_sum / (self.num_layers + 1)

    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        emb = self.node_embeddings(batch)
        pos, neg = triple_scores(emb, batch)
        bpr = bpr_loss(pos, neg, log2=False)
        ids = batch.output_nodes
        reg = l2_reg(
            self.embedding(ids[batch.users]),
            self.embedding(ids[batch.pos_items]),
            self.embedding(ids[batch.neg_items]),
        )
        loss = bpr + self.reg_weight * reg
        return {"loss": loss, "bpr": bpr.detach(), "reg": reg.detach()}
