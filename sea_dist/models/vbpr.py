"""VBPR: the classic multimodal matrix-factorisation baseline."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from sea_dist.graph.batch import MiniBatch
from sea_dist.losses.ranking import bpr_loss, norm_reg
from sea_dist.models.base import Recommender, triple_scores
from sea_dist.models.tables import IdTable


class VBPR(Recommender):
    r"""VBPR from "VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback"
    (He & McAuley, AAAI 2016, https://arxiv.org/abs/1510.01784), as in MMRec's
    ``src/models/vbpr.py`` (the version the multimodal papers compare against).

    A user has one free ``2d`` vector; an item is its free ID vector concatenated with a
    learned projection of its features, scored by a dot product:

    .. math::
        e_i = \big[\, q_i \;\Vert\; \textstyle\sum_m E_m F_m[i] + b \,\big], \qquad
        y(u, i) = \langle p_u, e_i \rangle, \qquad
        \mathcal{L} = \mathcal{L}_{BPR}^{\ln}
            + \lambda \cdot \frac{1}{B} \big(\lVert P_b \rVert_F + \lVert E_{b^+} \rVert_F
                                         + \lVert E_{b^-} \rVert_F\big)

    MMRec applies one ``Linear`` to the concatenated features; it is kept here as one
    ``Linear(d_m, d)`` per modality whose outputs are summed, the same function (one block of
    the weight matrix per modality; the per-modality biases add up to one bias), initialised
    with the concatenated matrix's Xavier-normal scale and zero biases. The split lets the SGFD
    plug-in replace each modality's block by its student (:meth:`feature_projections`). The
    regulariser is MMRec's ``EmbLoss`` (unsquared norms) over the batch's full user and item
    vectors. VBPR propagates nothing: batches must carry zero blocks, and the item-item graph is
    ignored.

    Args:
        num_users (int): number of users U.
        num_items (int): number of items I.
        feature_dims (dict[str, int]): raw feature width per modality, at least one.
        embedding_dim (int, optional): ``d``; users are ``2d`` wide. (default: :obj:`64`)
        reg_weight (float, optional): :math:`\lambda`. (default: :obj:`1e-4`)

    Shapes:
        node_embeddings: batch -> ``[n_out, 2 * embedding_dim]``.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: dict[str, int],
        embedding_dim: int = 64,
        reg_weight: float = 1e-4,
    ) -> None:
        super().__init__()
        if not feature_dims:
            raise ValueError("VBPR needs at least one modality")
        self.num_users, self.num_items, self.reg_weight = num_users, num_items, reg_weight
        self.modalities = list(feature_dims)
        self._fan_in = sum(feature_dims.values())
        self.user_embedding = IdTable(num_users, 2 * embedding_dim, init="xavier_uniform")
        self.item_embedding = IdTable(num_items, embedding_dim, init="xavier_uniform")
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, embedding_dim) for m, d in feature_dims.items()}
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.user_embedding.reset_parameters()
        self.item_embedding.reset_parameters()
        # Xavier normal of the one [d, sum_m d_m] matrix MMRec uses, block by block.
        for proj in self.projections.values():
            if type(proj) is nn.Linear:
                std = math.sqrt(2.0 / (self._fan_in + proj.out_features))
                nn.init.normal_(proj.weight, std=std)
                nn.init.zeros_(proj.bias)
            else:  # a plug-in's replacement (SGFD student) keeps its own init
                proj.reset_parameters()

    def feature_projections(self) -> nn.ModuleDict:
        """Per modality, the module mapping raw features ``[N, d_m]`` to ``[N, d]`` (summed)."""
        return self.projections

    def id_tables(self) -> list[nn.Parameter]:
        return [self.user_embedding.weight, self.item_embedding.weight]

    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        if batch.blocks:
            raise ValueError(f"batch has {len(batch.blocks)} blocks, VBPR propagates nothing")
        # With no blocks the input nodes are the output nodes, features in their item order.
        return self._embed(batch.output_nodes, batch.item_features)

    @property
    def num_inference_layers(self) -> int:
        return 0

    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        return self._embed(nodes, item_features)

    def _embed(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        """Rows of ``nodes``: ``p_u`` for users, ``[q_i | sum_m E_m F_m[i] + b]`` for items;
        ``item_features`` holds the rows of the items among ``nodes``, in order."""
        is_item = nodes >= self.num_users
        positions = torch.nonzero(is_item, as_tuple=True)[0]
        dtype = self.item_embedding.weight.dtype
        visual = torch.stack(
            [self.projections[m](item_features[m].to(dtype)) for m in self.modalities]
        ).sum(dim=0)  # [I_out, d]
        items = torch.cat([self.item_embedding(nodes[positions] - self.num_users), visual], dim=1)
        users = self.user_embedding(nodes[~is_item])  # [U_out, 2d]
        out = users.new_empty((len(nodes), users.shape[1]))
        out = out.index_copy(0, torch.nonzero(~is_item, as_tuple=True)[0], users)
        return out.index_copy(0, positions, items)

    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        emb = self.node_embeddings(batch)
        pos, neg = triple_scores(emb, batch)
        bpr = bpr_loss(pos, neg, log2=False)
        reg = norm_reg(emb[batch.users], emb[batch.pos_items], emb[batch.neg_items])
        loss = bpr + self.reg_weight * reg
        return {"loss": loss, "bpr": bpr.detach(), "reg": reg.detach()}
