"""SGFD (semantic-guided feature distillation) as a plug-in around any feature-projecting model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.losses.distill import (
    feature_distillation,
    masked_cross_entropy,
    response_distillation,
)
from sea_dist.losses.mi import CLUBTerms
from sea_dist.models.base import Recommender, item_feature_rows

_SHRINK = 4  # the teacher divides the width by this much per layer (reference: 4)


@runtime_checkable
class FeatureProjecting(Protocol):
    """A model whose raw item features pass through one replaceable module per modality."""

    def feature_projections(self) -> nn.ModuleDict:
        """Modality -> module mapping ``[N, d_m]`` to ``[N, latent]``; the model calls
        ``feature_projections()[m]`` on every forward, so replacing an entry rewires it."""
        ...


@dataclass(frozen=True)
class SGFDParams:
    """Loss weights of :class:`SGFD`; defaults are the reference's (BM3 ``main.py``)."""

    ce_weight: float = 0.2
    kd_weight: float = 0.2
    temperature: float = 10.0


class Student(nn.Linear):
    r"""SGFD's student: ``normalize(leaky_relu(W x + b))``, one linear layer.

    A :class:`~torch.nn.Linear` subclass, so a backbone that reads its projection's ``weight``
    (e.g. for the input dtype) keeps working after the swap.

    Shapes:
        x: ``[N, in_features]`` -> ``[N, out_features]``, unit rows.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(F.leaky_relu(super().forward(x)), dim=1)


class Teacher(nn.Module):
    r"""SGFD's teacher: linear layers shrinking the width by 4 per step down to ``latent``
    (e.g. 4096 -> 1024 -> 256 -> 128; a step that would undershoot goes to ``latent``
    directly), with no activation in between (reference), then leaky_relu and unit rows.

    With features narrower than ``4 * latent`` (e.g. tiktok's 128-d features and a 64-d
    latent) this is a single layer, the student's architecture.

    Shapes:
        x: ``[N, in_dim]`` -> ``[N, latent]``, unit rows.
    """

    def __init__(self, in_dim: int, latent: int) -> None:
        super().__init__()
        widths = [in_dim]
        while True:
            nxt = widths[-1] // _SHRINK
            widths.append(max(nxt, latent))
            if nxt <= latent:
                break
        self.layers = nn.Sequential(*(nn.Linear(a, b) for a, b in zip(widths, widths[1:])))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in self.layers:
            layer.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(F.leaky_relu(self.layers(x)), dim=1)


def kmeans_labels(features: list[Tensor], num_clusters: int, iters: int, seed: int) -> Tensor:
    r"""Item labels for data sets without categories: k-means over the item features.

    Each modality's rows are L2-normalised (so every modality weighs the same whatever its
    scale or width), the modalities are concatenated, and Lloyd's algorithm runs ``iters``
    steps from a k-means++ start drawn with ``seed`` (so every worker gets the same labels).
    An emptied cluster is re-seeded at the point farthest from its centre.

    Shapes:
        features: per modality ``[I, d_m]`` -> ``[I]`` int64 labels in ``[0, num_clusters)``.
    """
    x = torch.cat([F.normalize(f.float(), dim=1) for f in features], dim=1)  # [I, sum d_m]
    num_items = x.shape[0]
    k = min(num_clusters, num_items)
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(num_items, (1,), generator=gen)]
    while len(centres) < k:  # k-means++: draw proportionally to the squared distance
        dist = torch.cdist(x, centres).min(dim=1).values.pow(2)
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full_like(dist, 1.0 / num_items)
        centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=gen)]])
    labels = torch.zeros(num_items, dtype=torch.long)
    for _ in range(iters):
        dist = torch.cdist(x, centres)  # [I, k]
        labels = dist.argmin(dim=1)
        for c in range(k):
            members = labels == c
            if members.any():
                centres[c] = x[members].mean(dim=0)
            else:
                far = int(dist.min(dim=1).values.argmax())
                centres[c], labels[far] = x[far], c
    return labels


class SGFD(Recommender):
    r"""SGFD from "Semantic-Guided Feature Distillation for Multimodal Recommendation"
    (Liu et al., ACM MM 2023; code: https://github.com/HuilinChenJN/SGFD), as a plug-in.

    Wraps a backbone that implements :class:`FeatureProjecting` and replaces each modality's
    projection by a :class:`Student` of the same output width ``latent_m``, which is all that
    runs at inference (:meth:`node_embeddings` is the backbone's). For training, per modality
    ``m``: a :class:`Teacher` ``T_m``, a classifier ``C_m: latent_m -> C`` shared by teacher
    and student, and a fusion head over all teachers,
    ``C_f(leaky_relu(Linear(sum_m latent_m, h)(concat_m T_m)))`` with ``h`` the largest
    latent width. On the batch's items (its positives and negatives; the same set in both
    execution modes) with labels ``y``:

    .. math::
        \mathcal{L} = \mathcal{L}_{backbone}
            + \lambda_{ce} \big(\tfrac{1}{M} \textstyle\sum_m CE(C_m(T_m), y)
                                + CE(C_f(\cdot), y)\big)
            + \lambda_{kd} \big(\tfrac{1}{M} \textstyle\sum_m
                \lvert \sigma(C_m(T_m)/T) - \sigma(C_m(S_m)/T) \rvert_1
              + \tfrac{1}{M} \textstyle\sum_m \mathrm{mse}(S_m, T_m)\big)

    Cross-entropy takes raw logits (the reference applies a softmax first, i.e. twice) and
    skips items labelled ``-1`` (unknown). Everything else (ID tables, estimators, their loss)
    is the backbone's, so the wrapped model's interface is unchanged.

    Args:
        backbone (Recommender): a model implementing :class:`FeatureProjecting`.
        feature_dims (dict[str, int]): raw feature width per modality (the backbone's).
        item_labels (Tensor): ``[I]`` int64 class per item, ``-1`` where unknown.
        params (SGFDParams, optional): loss weights and temperature. (default: reference)

    Shapes:
        node_embeddings: batch -> the backbone's.
    """

    def __init__(
        self,
        backbone: Recommender,
        feature_dims: dict[str, int],
        item_labels: Tensor,
        params: SGFDParams = SGFDParams(),
    ) -> None:
        super().__init__()
        if not isinstance(backbone, FeatureProjecting):
            name = type(backbone).__name__
            raise TypeError(f"{name} has no feature_projections(); SGFD cannot wrap it")
        num_classes = int(item_labels.max()) + 1
        if num_classes < 2:
            raise ValueError("SGFD needs item labels with at least two classes")
        self.backbone, self.params = backbone, params
        self.modalities = list(feature_dims)
        projections = backbone.feature_projections()
        latent = {m: _out_width(projections[m]) for m in self.modalities}
        self.teachers, self.classifiers = nn.ModuleDict(), nn.ModuleDict()
        for m, d in feature_dims.items():
            projections[m] = Student(d, latent[m])  # the backbone now calls the student
            self.teachers[m] = Teacher(d, latent[m])
            self.classifiers[m] = nn.Linear(latent[m], num_classes)
        self.fusion = nn.Linear(sum(latent.values()), max(latent.values()))
        self.fusion_classifier = nn.Linear(max(latent.values()), num_classes)
        # Labels travel with the model (to its device) but not in checkpoints: they are data.
        self.register_buffer("item_labels", item_labels.long(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        projections = self.backbone.feature_projections()  # type: ignore[operator]
        for m in self.modalities:
            projections[m].reset_parameters()
        for module in (*self.teachers.values(), *self.classifiers.values()):
            module.reset_parameters()
        self.fusion.reset_parameters()
        self.fusion_classifier.reset_parameters()

    def students(self) -> dict[str, Student]:
        projections = self.backbone.feature_projections()  # type: ignore[operator]
        return {m: projections[m] for m in self.modalities}

    def estimator_parameters(self) -> list[nn.Parameter]:
        return self.backbone.estimator_parameters()

    def estimator_terms(self, out: dict[str, Any]) -> CLUBTerms | None:
        return self.backbone.estimator_terms(out)

    def id_tables(self) -> list[nn.Parameter]:
        return self.backbone.id_tables()

    def node_embeddings(self, batch: MiniBatch) -> Tensor:
        return self.backbone.node_embeddings(batch)

    # Inference is the backbone's, through the students it now calls.
    @property
    def item_hop(self) -> bool:  # type: ignore[override]
        return self.backbone.item_hop

    @property
    def num_inference_layers(self) -> int:
        return self.backbone.num_inference_layers

    def inference_inputs(self, nodes: Tensor, item_features: dict[str, Tensor]) -> Tensor:
        return self.backbone.inference_inputs(nodes, item_features)

    def inference_layer(self, layer: int, block: Block, h_src: Tensor) -> Tensor:
        return self.backbone.inference_layer(layer, block, h_src)

    def inference_outputs(self, nodes: Tensor, layer_sum: Tensor) -> Tensor:
        return self.backbone.inference_outputs(nodes, layer_sum)

    def inference_item_hop(self, block: Block, e_src: Tensor, e_dst: Tensor) -> Tensor:
        return self.backbone.inference_item_hop(block, e_src, e_dst)

    def forward(self, batch: MiniBatch) -> dict[str, Any]:
        out = self.backbone(batch)
        positions = torch.unique(torch.cat([batch.pos_items, batch.neg_items.reshape(-1)]))
        rows = item_feature_rows(batch, positions)
        labels = self.item_labels[batch.output_nodes[positions] - batch.num_users]  # [N]
        students = self.students()
        teacher_feats, ce, kd, fd = [], [], [], []
        for m in self.modalities:
            x = batch.item_features[m][rows].to(self.fusion.weight.dtype)  # [N, d_m]
            t, s = self.teachers[m](x), students[m](x)  # [N, latent_m]
            t_logits, s_logits = self.classifiers[m](t), self.classifiers[m](s)
            ce.append(masked_cross_entropy(t_logits, labels))
            kd.append(response_distillation(t_logits, s_logits, self.params.temperature))
            fd.append(feature_distillation(s, t))
            teacher_feats.append(t)
        fused = self.fusion_classifier(F.leaky_relu(self.fusion(torch.cat(teacher_feats, dim=1))))
        fusion = masked_cross_entropy(fused, labels)
        ce_term, kd_term, fd_term = (torch.stack(v).mean() for v in (ce, kd, fd))
        p = self.params
        sgfd = p.ce_weight * (ce_term + fusion) + p.kd_weight * (kd_term + fd_term)
        out["loss"] = out["loss"] + sgfd
        out.update(
            sgfd_ce=ce_term.detach(), sgfd_fusion=fusion.detach(),
            sgfd_kd=kd_term.detach(), sgfd_fd=fd_term.detach(),
        )
        return out


def _out_width(module: nn.Module) -> int:
    """Output width of a projection: that of its last ``Linear``."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TypeError(f"cannot tell the output width of {type(module).__name__}")
    return linears[-1].out_features
