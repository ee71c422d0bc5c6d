"""SEA (Separate Learning) and its SAND variant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sea_dist.data.schema import IMAGE
from sea_dist.graph.batch import MiniBatch
from sea_dist.graph.ops import propagate
from sea_dist.losses.contrastive import solo_sim_loss
from sea_dist.losses.mi import CLUB, CLUBTerms, neg_l2_distancing
from sea_dist.losses.ranking import bpr_loss
from sea_dist.models.base import Recommender, assemble_inputs, item_feature_rows, triple_scores
from sea_dist.models.encoders import FeatureMLP, ProjectionHead, layer_sum
from sea_dist.models.tables import IdTable

_SHARED = "shared"  # key of the single estimator in the reference's cross-modal fit
_CLUB_INPUTS = "_club_inputs"  # forward -> estimator_terms stash (detached projections)


def folds_map(input_items: int, loss_rows: int | None, hidden: int) -> bool:
    """Whether SEA folds a linear ``L_m`` into its encoder's first layer: when the encoder reads
    more rows than its hidden width and more than the split losses need (``loss_rows``,
    ``None`` for none), so that the folded product is the cheaper one."""
    return input_items > hidden and (loss_rows is None or loss_rows < input_items)


@dataclass(frozen=True)
class SEAParams:
    """Hyperparameters of :class:`SEA`; defaults are the reference values (spec section 2).

    ``distancing`` is ``"club"`` (SEA), ``"neg_l2"`` (SAND) or ``"none"``; ``map_dim`` maps raw
    features to that width instead of the full width; ``solo_anchor`` names the anchor
    modality (:func:`solo_anchor`; ``None``: the reference's); ``estimator_cross_modal``
    reproduces the reference code's single CLUB estimator fitted on cross-modal pairs.
    """

    embedding_dim: int = 64
    num_layers: int = 2
    feature_hidden: int = 256
    map_dim: int | None = None
    distancing: Literal["club", "neg_l2", "none"] = "club"
    use_solo: bool = True
    solo_anchor: str | None = None
    alpha: float = 0.012
    tau: float = 0.2
    solo_group: int | None = None
    tower_dtype: Literal["float32", "bfloat16"] = "float32"
    ureg: float = 0.006
    l2_weight: float = 0.006
    mi_dim: int = 32
    club_hidden: int = 8
    proj_hidden: int = 64
    proj_dim: int = 32
    estimator_cross_modal: bool = False

    @property
    def needs_anchor(self) -> bool:
        """Whether a term has a direction (SoloSim, the cross-modal fit) or an anchor is named."""
        cross_modal = self.distancing == "club" and self.estimator_cross_modal
        return self.use_solo or cross_modal or self.solo_anchor is not None


def solo_anchor(modalities: Sequence[str], anchor: str | None = None) -> str:
    """The modality SoloSim anchors on, and the cross-modal CLUB fit conditions on.

    Args:
        modalities: the model's modalities.
        anchor: a modality name; ``None`` picks the reference's anchor, its t_feat modality:
            the one modality that is not ``image`` (text on the Amazon sets, audio on TikTok).

    Raises:
        ValueError: ``anchor`` is not one of ``modalities``, or it is ``None`` and the
            modalities are not ``image`` plus exactly one other.
    """
    if anchor is not None:
        if anchor not in modalities:
            raise ValueError(f"{anchor!r} is not among the modalities ({', '.join(modalities)})")
        return anchor
    others = [m for m in modalities if m != IMAGE]
    if IMAGE not in modalities or len(others) != 1:
        raise ValueError(
            f"no reference anchor among {', '.join(modalities)} (it is the one modality "
            f"besides {IMAGE}); name one"
        )
    return others[0]


def split_generic_unique(mapped: Tensor) -> tuple[Tensor, Tensor]:
    """Positional split: generic = first ``d // 2`` columns, unique = the rest.

    Shapes:
        mapped: ``[N, d]`` -> ``[N, d // 2]``, ``[N, d - d // 2]``.
    """
    half = mapped.shape[1] // 2
    return mapped[:, :half], mapped[:, half:]


class SEA(Recommender):
    r"""SEA from "It is Never Too Late to Mend: Separate Learning for Multimedia
    Recommendation" (https://arxiv.org/abs/2406.08270), and SAND's distancing variant.

    Per modality ``m`` (roles are by name; the order of ``feature_dims`` only lays out the
    fused columns):

    .. math::
        T_m = L_m(F_m) = [T_m^{g} \,|\, T_m^{u}], \quad
        x_m = \mathrm{norm}\big([P_m ; W_2\,\mathrm{lrelu}(W_1 T_m)]\big), \quad
        \hat{x}_m = \sum_{l=0}^{L} \hat{A}^l x_m

    fused as :math:`u = \Vert_m\, w_{u,m} \hat{x}_m[u]`, :math:`i_0 = \Vert_m \hat{x}_m[i]`,
    :math:`i = i_0 + S i_0`, scored by :math:`\langle u, i \rangle`. The loss is

    .. math::
        \mathcal{L} = \mathcal{L}_{BPR}^{\log_2}
            + \frac{1}{M} \sum_m \mathcal{L}_{dist,m}
            + \alpha \, \mathcal{L}_{solo}

    with :math:`\mathcal{L}_{solo}` over the projected generic parts
    (:func:`~sea_dist.losses.contrastive.solo_sim_loss` from the anchor modality, see
    :func:`solo_anchor`) and :math:`\mathcal{L}_{dist,m}` = ``ureg`` x CLUB(generic; unique)
    of modality ``m`` (SEA) or ``l2_weight`` x the bounded negative L2 between them (SAND).
    Both split losses cover ``batch.loss_items``: every item in full-graph mode (the
    reference), the batch's unique items when sampled.

    CLUB's variational networks ``q`` are estimators, not model parameters: see
    :meth:`estimator_parameters` and :meth:`estimator_terms`. Following the paper, each
    modality has its own ``q``, fitted on its own (generic, unique) pairs; with
    ``estimator_cross_modal`` one shared ``q`` is fitted, as in the reference code, on
    (generic of the anchor -> generic of another modality) plus (unique -> unique) for every
    other modality, i.e. ``q(image | text)`` pairs for the reference's two modalities.

    Args:
        num_users (int): number of users U.
        num_items (int): number of items I.
        feature_dims (dict[str, int]): raw feature width per modality, at least two.
        params (SEAParams, optional): hyperparameters. (default: reference values)

    Shapes:
        node_embeddings: batch -> ``[n_out, M * embedding_dim]``.
    """

    item_hop = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        feature_dims: dict[str, int],
        params: SEAParams = SEAParams(),
    ) -> None:
        super().__init__()
        if len(feature_dims) < 2:
            raise ValueError(f"SEA needs at least two modalities, got {list(feature_dims)}")
        widths = {m: params.map_dim or d for m, d in feature_dims.items()}
        narrow = [m for m, w in widths.items() if w < 2]
        if narrow:
            raise ValueError(f"modalities {narrow} are narrower than 2 columns; cannot split them")
        self.num_users, self.num_items, self.params = num_users, num_items, params
        self.modalities = list(feature_dims)
        self.anchor: str | None = None
        if params.needs_anchor:
            self.anchor = solo_anchor(self.modalities, params.solo_anchor)
        d, num_mod = params.embedding_dim, len(feature_dims)
        self.user_tables = nn.ModuleDict({m: IdTable(num_users, d) for m in self.modalities})
        self.user_weight = IdTable(num_users, num_mod, init="softmax")  # w_u, [U, M]
        # Per modality: full-width map L_m, feature MLP, and the split losses' projections.
        self.maps, self.encoders, self.heads = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.to_generic, self.to_unique = nn.ModuleDict(), nn.ModuleDict()
        for m, w in widths.items():
            self.maps[m] = nn.Linear(feature_dims[m], w)
            self.encoders[m] = FeatureMLP(w, params.feature_hidden, d)
            if params.use_solo:
                self.heads[m] = ProjectionHead(w // 2, params.proj_hidden, params.proj_dim)
            if params.distancing != "none":
                self.to_generic[m] = nn.Linear(w // 2, params.mi_dim)
                self.to_unique[m] = nn.Linear(w - w // 2, params.mi_dim)
        self.estimators = nn.ModuleDict()
        if params.distancing == "club":
            names = [_SHARED] if params.estimator_cross_modal else self.modalities
            self.estimators.update(
                {n: CLUB(params.mi_dim, params.mi_dim, params.club_hidden) for n in names}
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # w_u starts as a softmax; training then moves the weights freely (no softmax after).
        for table in (*self.user_tables.values(), self.user_weight):
            table.reset_parameters()
        groups = (self.maps, self.encoders, self.heads, self.to_generic, self.to_unique)
        for group in (*groups, self.estimators):
            for module in group.values():
                module.reset_parameters()

    def feature_projections(self) -> nn.ModuleDict:
        """Per modality, the full-width map ``L_m`` (what the SGFD plug-in replaces)."""
        return self.maps

    def estimator_parameters(self) -> list[nn.Parameter]:
        return list(self.estimators.parameters())

    def id_tables(self) -> list[nn.Parameter]:
        return [t.weight for t in (*self.user_tables.values(), self.user_weight)]

    def _encode(
        self, batch: MiniBatch, mapped_rows: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Fused output-node representations and each modality's mapped features of the input
        items at ``mapped_rows`` (see :meth:`_inputs`)."""
        if len(batch.blocks) != self.params.num_layers:
            raise ValueError(
                f"batch has {len(batch.blocks)} blocks, model has {self.params.num_layers} layers"
            )
        x, mapped = self._inputs(batch.input_nodes, batch.item_features, mapped_rows)
        # Propagation is linear and column-wise, so one pass over [x_1 | ... | x_M] equals M
        # per-modality passes (spec: each modality has its own parameter-free GCN).
        emb = self._fuse(batch.output_nodes, layer_sum(batch.blocks, x))  # [n_out, M * d]
        if batch.item_graph is not None:
            # i = i0 + S i0; the item graph has no edges into user rows, so users are unchanged.
            emb = emb + propagate(batch.item_graph, emb)
        return emb, mapped

    def _inputs(
        self, nodes: Tensor, item_features: dict[str, Tensor], mapped_rows: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Normalised layer-0 inputs ``[x_1 | ... | x_M]`` of ``nodes`` ``[n, M * d]``, and
        each modality's mapped features ``L_m(F_m)`` of the input items at ``mapped_rows``
        (none when ``None``).

        When ``L_m`` is a plain linear map and the split losses need fewer rows than the
        encoder reads, ``L_m`` is folded into the encoder's first layer (there is no
        nonlinearity between them): one GEMM per input item instead of two, the same values
        up to rounding, and ``L_m`` runs on ``mapped_rows`` alone.
        """
        is_item = nodes >= self.num_users
        user_ids = nodes[~is_item]
        mapped, users, items_in = {}, [], []
        for m in self.modalities:
            lin, encoder = self.maps[m], self.encoders[m]
            features = item_features[m].to(lin.weight.dtype)  # [I_in, F_m]
            n = features.shape[0]
            loss_rows = None if mapped_rows is None else len(mapped_rows)
            fold = type(lin) is nn.Linear and folds_map(n, loss_rows, encoder.lin1.out_features)
            full = None if fold else lin(features)  # [I_in, w_m]
            with self._tower_autocast(features):
                items = encoder(features, pre=lin) if fold else encoder(full)
            if mapped_rows is not None:
                mapped[m] = lin(features[mapped_rows]) if fold else full[mapped_rows]
            # Rows are normalised on their own, so users and items are assembled once.
            items_in.append(F.normalize(items.to(lin.weight.dtype), dim=1))
            users.append(F.normalize(self.user_tables[m](user_ids), dim=1))
        return assemble_inputs(is_item, torch.cat(users, dim=1), torch.cat(items_in, dim=1)), mapped

    def _tower_autocast(self, features: Tensor) -> torch.autocast:
        """The feature encoder's products in ``tower_dtype`` (weights stay float32)."""
        on = self.params.tower_dtype == "bfloat16"
        return torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=on)

    def _fuse(self, nodes: Tensor, xh: Tensor) -> Tensor:
        """Users: each modality's block of ``xh`` scaled by ``w_u``; items unchanged."""
        n_out, num_mod = xh.shape[0], len(self.modalities)
        user_pos = torch.nonzero(nodes < self.num_users, as_tuple=True)[0]
        scale = xh.new_ones(n_out, num_mod).index_copy(
            0, user_pos, self.user_weight(nodes[user_pos])
        )  # users: w_u, items: 1
        return (xh.view(n_out, num_mod, xh.shape[1] // num_mod) * scale.unsqueeze(2)).flatten(1)

    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        return self._encode(batch)[0]

    @property
    def num_inference_layers(self) -> int:
        return self.params.num_layers

    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        return self._inputs(nodes, item_features)[0]

    def inference_outputs(self, nodes: Tensor, layer_sum: Tensor) -> Tensor:
        return self._fuse(nodes, layer_sum)

    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        rows = item_feature_rows(batch, batch.loss_items)
        emb, mapped = self._encode(batch, rows)
        pos, neg = triple_scores(emb, batch)
        bpr = bpr_loss(pos, neg, log2=True)
        loss, out = bpr, {"bpr": bpr.detach()}

        parts = {m: split_generic_unique(mapped[m]) for m in self.modalities}
        # Batch norm needs two rows; a one-item batch has no negatives for InfoNCE anyway.
        if self.heads and len(rows) >= 2:
            assert self.anchor is not None  # set whenever use_solo is
            views = {m: self.heads[m](parts[m][0]) for m in self.modalities}  # [N, proj_dim]
            others = [views[m] for m in self.modalities if m != self.anchor]
            solo = solo_sim_loss(
                views[self.anchor], others, self.params.tau, self.params.solo_group
            )
            loss = loss + self.params.alpha * solo
            out["solo"] = solo.detach()
        if self.to_generic:
            generic = {m: self.to_generic[m](parts[m][0]) for m in self.modalities}  # [N, mi_dim]
            unique = {m: self.to_unique[m](parts[m][1]) for m in self.modalities}
            if self.estimators:
                terms = [self._estimator(m)(generic[m], unique[m]) for m in self.modalities]
                weight = self.params.ureg
                out[_CLUB_INPUTS] = self._club_terms(generic, unique)
            else:
                terms = [neg_l2_distancing(generic[m], unique[m]) for m in self.modalities]
                weight = self.params.l2_weight
            dist = torch.stack(terms).mean()
            loss = loss + weight * dist
            out["dist"] = dist.detach()
        out["loss"] = loss
        return out

    def _estimator(self, modality: str) -> CLUB:
        key = _SHARED if self.params.estimator_cross_modal else modality
        estimator: CLUB = self.estimators[key]
        return estimator

    def _club_terms(self, generic: dict[str, Tensor], unique: dict[str, Tensor]) -> CLUBTerms:
        """The estimator's fitting pairs, detached: per modality (generic -> unique of the same
        modality), or with ``estimator_cross_modal`` the reference's single ``q`` fitted on
        anchor -> other modality, generic -> generic and unique -> unique."""
        if not self.params.estimator_cross_modal:
            pairs = [(generic[m], unique[m]) for m in self.modalities]
            estimators = [self._estimator(m) for m in self.modalities]
        else:
            anchor = self.anchor
            assert anchor is not None  # set whenever the fit is cross-modal
            views = (generic, unique)
            pairs = [(v[anchor], v[m]) for m in self.modalities if m != anchor for v in views]
            estimators = [self.estimators[_SHARED]]
        device = generic[self.modalities[0]].device
        index = torch.arange(len(pairs), device=device)
        return CLUBTerms(
            estimators,
            index if len(estimators) > 1 else torch.zeros_like(index),
            torch.stack([x.detach() for x, _ in pairs]),
            torch.stack([y.detach() for _, y in pairs]),
        )

    def estimator_terms(self, out: dict[str, Any]) -> CLUBTerms | None:
        return out.get(_CLUB_INPUTS)
