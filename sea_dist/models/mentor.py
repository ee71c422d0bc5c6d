"""MENTOR (multi-level self-supervised learning for multimodal recommendation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.graph.ops import propagate
from sea_dist.losses.alignment import cosine_consistency, moment_alignment
from sea_dist.losses.contrastive import info_nce
from sea_dist.losses.ranking import bpr_loss
from sea_dist.models.base import Recommender, assemble_inputs, triple_scores
from sea_dist.models.encoders import FeatureMLP, layer_sum
from sea_dist.models.tables import IdTable

_NOISY_VIEWS = (1, 2)


@dataclass(frozen=True)
class MENTORParams:
    """Hyperparameters of :class:`MENTOR`; defaults are the reference values (spec section 3)."""

    embedding_dim: int = 64
    num_layers: int = 2
    feature_hidden: int = 256
    reg_weight: float = 1e-3
    align_weight: float = 0.1
    mask_f_weight: float = 1.5
    mask_g_weight: float = 1e-3
    tau: float = 0.2
    dropout: float = 0.5
    noise_eps: float = 0.1


def noisy_layer_sum(blocks: list[Block], x: Tensor, num_branches: int, eps: float) -> Tensor:
    r""":func:`~sea_dist.models.encoders.layer_sum` with SimGCL-style noise after every layer.

    .. math::
        h_{l+1} = \hat{A}_l h_l + \epsilon \,\mathrm{sign}(\hat{A}_l h_l) \odot
            \frac{\Delta}{\lVert \Delta \rVert_2}, \quad \Delta \sim U[0, 1)^{d}, \qquad
        \mathrm{out} = \sum_{l=0}^{L} h_l[:n_{out}]

    ``x`` holds ``num_branches`` independent GCN inputs side by side; the noise is normalised
    per row within each branch, as the reference does for each of its separate GCNs.

    Shapes:
        x: ``[N_in, num_branches * d]`` -> ``[n_out, num_branches * d]``.
    """
    n_out = blocks[-1].num_dst if blocks else x.shape[0]
    h, total = x, x[:n_out]
    for block in blocks:
        h = propagate(block, h)
        noise = torch.rand(h.shape[0], num_branches, h.shape[1] // num_branches, device=h.device)
        noise = F.normalize(noise, dim=-1).view_as(h).to(h.dtype)
        h = h + eps * torch.sign(h) * noise
        total = total + h[:n_out]
    return total


class MENTOR(Recommender):
    r"""MENTOR from "MENTOR: Multi-level Self-supervised Learning for Multimodal
    Recommendation" (Xu et al., AAAI 2025, https://arxiv.org/abs/2402.19407).

    Branches, each the backbone GCN of spec section 1 (free user table ``P_b``, item MLP
    ``W_2 lrelu(W_1 .)``, row-normalised input, sum of layers ``0..L``): one per modality on
    the raw features, an ID branch whose item "feature" is a free ``I x d`` table, and two
    noisy copies of every modality branch (own parameters, :func:`noisy_layer_sum`). Views,
    all ``M d`` wide, the item side always followed by the item-item hop ``i + S i``:

    * fused ``r``: users ``\Vert_m w_{u,m} \hat{x}_m[u]``, items ``\Vert_m \hat{x}_m[i]``
      (section 1; the only view used for scoring);
    * ID ``g`` and per-modality ``v_m``: ``M`` copies of that branch's output side by side;
    * noisy ``n_1, n_2``: fused like ``r`` from the two noisy copies.

    .. math::
        \mathcal{L} = \mathcal{L}_{BPR}^{\log_2} + \mathcal{L}_{reg}
            + \lambda_a \mathcal{L}_{align} + \lambda_f \mathcal{L}_{mask\_f}
            + \lambda_g \mathcal{L}_{mask\_g}

    * :math:`\mathcal{L}_{reg} = \lambda_r (\sum_m \mathrm{mean}(P_m[u]^2) + \mathrm{mean}(w_u^2))`
      over the batch users (spec; the reference averages ``w`` over all users);
    * :math:`\mathcal{L}_{align}`: :func:`~sea_dist.losses.alignment.moment_alignment` of
      ``[g, r, v_1, ..., v_M]`` (the reference's six pairs for two modalities);
    * :math:`\mathcal{L}_{mask\_f}`: ``1 - cos(dropout(r), MLP(r))`` averaged over rows, users
      plus items (:func:`~sea_dist.losses.alignment.cosine_consistency`), WITH gradients: the
      reference computes both sides under ``no_grad``, which makes the term a constant;
    * :math:`\mathcal{L}_{mask\_g}`: cosine InfoNCE (temperature ``tau``) between ``n_1`` and
      ``n_2``, users plus items.

    The three self-supervised terms cover the batch's "loss rows": the user rows among the
    output nodes and ``batch.loss_items``, i.e. every node in full-graph mode (the reference)
    and the batch's users and items when sampled.

    Args:
        num_users (int): number of users U.
        num_items (int): number of items I.
        feature_dims (dict[str, int]): raw feature width per modality, at least one; the
            spec's order is ``[image, text]``.
        params (MENTORParams, optional): hyperparameters. (default: reference values)

    Shapes:
        node_embeddings: batch -> ``[n_out, M * embedding_dim]``.
    """

    item_hop = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: dict[str, int],
        params: MENTORParams = MENTORParams(),
    ) -> None:
        super().__init__()
        if not feature_dims:
            raise ValueError("MENTOR needs at least one modality")
        self.num_users, self.num_items, self.params = num_users, num_items, params
        self.modalities = list(feature_dims)
        d, hidden, num_mod = params.embedding_dim, params.feature_hidden, len(feature_dims)
        # Branch name -> modality whose features it reads; noisy copies are "<m>_n1", "<m>_n2".
        self._source = {m: m for m in self.modalities}
        self._noisy = [f"{m}_n{k}" for k in _NOISY_VIEWS for m in self.modalities]
        self._source.update({f"{m}_n{k}": m for k in _NOISY_VIEWS for m in self.modalities})
        self.user_tables = nn.ModuleDict({b: IdTable(num_users, d) for b in self._source})
        self.encoders = nn.ModuleDict(
            {b: FeatureMLP(feature_dims[m], hidden, d) for b, m in self._source.items()}
        )
        # ID branch: a free item table goes through the same MLP shape as a feature would.
        self.id_users = IdTable(num_users, d)
        self.id_items = IdTable(num_items, d)
        self.id_encoder = FeatureMLP(d, hidden, d)
        self.user_weight = IdTable(num_users, num_mod, init="softmax")  # w_u, [U, M]
        self.mask_mlp = nn.Linear(num_mod * d, num_mod * d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        tables = (*self.user_tables.values(), self.id_users, self.id_items, self.user_weight)
        for table in tables:  # w_u starts as a softmax, as SEA's
            table.reset_parameters()
        for module in (*self.encoders.values(), self.id_encoder, self.mask_mlp):
            module.reset_parameters()

    def feature_projections(self) -> nn.ModuleDict:
        """Per modality, the item-feature projection of the clean (ranking) branch. Keys that
        are not modalities belong to the noisy training-only branches."""
        return self.encoders

    def id_tables(self) -> list[nn.Parameter]:
        tables = (*self.user_tables.values(), self.id_users, self.id_items, self.user_weight)
        return [t.weight for t in tables]

    def _branch_input(self, is_item: Tensor, users: Tensor, items: Tensor) -> Tensor:
        return F.normalize(assemble_inputs(is_item, users, items), dim=1)

    def _inputs(
        self, nodes: Tensor, item_features: dict[str, Tensor], branches: list[str]
    ) -> Tensor:
        """Normalised inputs of the named feature branches for ``nodes``, side by side
        ``[n, B * d]``; ``item_features`` holds the rows of the items among ``nodes``."""
        is_item = nodes >= self.num_users
        user_ids = nodes[~is_item]
        dtype = self.id_items.weight.dtype
        xs = []
        for b in branches:
            items = self.encoders[b](item_features[self._source[b]].to(dtype))
            xs.append(self._branch_input(is_item, self.user_tables[b](user_ids), items))
        return torch.cat(xs, dim=1)

    def _fuse(self, nodes: Tensor, xh: Tensor) -> Tensor:
        """Users: each modality's block scaled by ``w_u``; items unchanged."""
        n_out, num_mod = xh.shape[0], len(self.modalities)
        user_pos = torch.nonzero(nodes < self.num_users, as_tuple=True)[0]
        scale = xh.new_ones(n_out, num_mod).index_copy(
            0, user_pos, self.user_weight(nodes[user_pos])
        )
        return (xh.view(n_out, num_mod, xh.shape[1] // num_mod) * scale.unsqueeze(2)).flatten(1)

    def _check_layers(self, batch: MiniBatch) -> None:
        if len(batch.blocks) != self.params.num_layers:
            raise ValueError(
                f"batch has {len(batch.blocks)} blocks, model has {self.params.num_layers} layers"
            )

    @staticmethod
    def _item_hop(batch: MiniBatch, views: Tensor) -> Tensor:
        # i = i0 + S i0 on every view at once; S has no edges into user rows.
        return views if batch.item_graph is None else views + propagate(batch.item_graph, views)

    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        self._check_layers(batch)
        x = self._inputs(batch.input_nodes, batch.item_features, self.modalities)
        xh = layer_sum(batch.blocks, x)  # [n_out, M * d]
        return self._item_hop(batch, self._fuse(batch.output_nodes, xh))

    @property
    def num_inference_layers(self) -> int:
        return self.params.num_layers

    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        return self._inputs(nodes, item_features, self.modalities)

    def inference_outputs(self, nodes: Tensor, layer_sum: Tensor) -> Tensor:
        return self._fuse(nodes, layer_sum)

    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        self._check_layers(batch)
        p, num_mod, d = self.params, len(self.modalities), self.params.embedding_dim
        # Clean branches (modalities, then ID) in one pass: propagation is column-wise.
        item_ids = batch.input_nodes[batch.input_is_item] - self.num_users
        user_ids = batch.input_nodes[~batch.input_is_item]
        x_id = self._branch_input(
            batch.input_is_item, self.id_users(user_ids), self.id_encoder(self.id_items(item_ids))
        )
        nodes, features = batch.input_nodes, batch.item_features
        clean = layer_sum(
            batch.blocks, torch.cat([self._inputs(nodes, features, self.modalities), x_id], 1)
        )
        noisy = noisy_layer_sum(
            batch.blocks, self._inputs(nodes, features, self._noisy), len(self._noisy), p.noise_eps
        )  # [n_out, 2 * M * d]: view 1's modalities, then view 2's
        per_branch = clean.split(d, dim=1)  # M modality blocks, then the ID block
        views = [
            self._fuse(batch.output_nodes, clean[:, : num_mod * d]),  # r
            torch.cat([per_branch[-1]] * num_mod, dim=1),  # g
            *(torch.cat([per_branch[k]] * num_mod, dim=1) for k in range(num_mod)),  # v_m
            *(self._fuse(batch.output_nodes, n) for n in noisy.split(num_mod * d, 1)),  # n_1, n_2
        ]
        r, g, *rest = self._item_hop(batch, torch.cat(views, dim=1)).split(num_mod * d, dim=1)
        modal, (n1, n2) = rest[:num_mod], rest[num_mod:]

        pos, neg = triple_scores(r, batch)
        bpr = bpr_loss(pos, neg, log2=True)
        batch_users = batch.output_nodes[batch.users]
        reg = torch.stack([self.user_tables[m](batch_users).pow(2).mean() for m in self.modalities])
        reg = reg.sum() + self.user_weight(batch_users).pow(2).mean()

        user_rows = torch.nonzero(batch.output_nodes < self.num_users, as_tuple=True)[0]
        item_rows = batch.loss_items
        rows = torch.cat([user_rows, item_rows])
        align = moment_alignment([g[rows], r[rows], *(v[rows] for v in modal)])
        r_users, r_items = r[user_rows], r[item_rows]
        mask_f = cosine_consistency(
            F.dropout(r_users, p.dropout, self.training), self.mask_mlp(r_users)
        ) + cosine_consistency(F.dropout(r_items, p.dropout, self.training), self.mask_mlp(r_items))
        mask_g = info_nce(n1[user_rows], n2[user_rows], p.tau) + info_nce(
            n1[item_rows], n2[item_rows], p.tau
        )
        loss = (
            bpr
            + p.reg_weight * reg
            + p.align_weight * align
            + p.mask_f_weight * mask_f
            + p.mask_g_weight * mask_g
        )
        terms = {"bpr": bpr, "reg": reg, "align": align, "mask_f": mask_f, "mask_g": mask_g}
        return {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
