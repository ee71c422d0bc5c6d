"""Contrastive losses: InfoNCE and SEA's SoloSimLoss over any number of modalities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(anchors: Tensor, candidates: Tensor, tau: float, normalize: bool = True) -> Tensor:
    r"""One-directional InfoNCE: row ``i`` of ``anchors`` should pick row ``i`` of ``candidates``.

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_{i=1}^{N}
            \log \frac{\exp(\langle a_i, c_i \rangle / \tau)}
                      {\sum_{j=1}^{N} \exp(\langle a_i, c_j \rangle / \tau)}

    Its negative is a lower bound on the mutual information between the two views (up to
    :math:`\log N`), which is why SEA uses it to align the generic parts.

    Args:
        anchors: the anchor view.
        candidates: the candidate view; other rows act as negatives.
        tau (float): temperature.
        normalize (bool, optional): L2-normalise rows first, so scores are cosines.
            (default: :obj:`True`)

    Shapes:
        anchors, candidates: ``[N, d]`` -> scalar.
    """
    if anchors.shape != candidates.shape:
        raise ValueError(
            f"views differ in shape: {tuple(anchors.shape)} vs {tuple(candidates.shape)}"
        )
    if normalize:
        anchors, candidates = F.normalize(anchors, dim=1), F.normalize(candidates, dim=1)
    logits = anchors @ candidates.T / tau  # [N, N]
    return -torch.diagonal(F.log_softmax(logits, dim=1)).mean()


def solo_sim_loss(views: list[Tensor], tau: float) -> Tensor:
    r"""SEA's SoloSimLoss, generalised from two modalities to any number ``M >= 2``.

    From "It is Never Too Late to Mend: Separate Learning for Multimedia Recommendation"
    (https://arxiv.org/abs/2406.08270), eq. 16. With the modalities in their configured order
    (the spec's is ``[image, text]``), every pair ``i < j`` contributes an InfoNCE term with
    the LATER modality as anchor and the earlier one as candidates, and the terms are averaged:

    .. math::
        \mathcal{L}_{solo} = \binom{M}{2}^{-1} \sum_{i<j} \mathrm{InfoNCE}(z_j \to z_i)

    For ``M = 2`` this is exactly the reference's text-anchored loss against image
    candidates. All pairs (rather than consecutive ones) keep every modality's generic part
    directly aligned with every other's.

    Args:
        views: per modality, the projected generic parts of the same items in the same order.
        tau (float): temperature.

    Shapes:
        views: ``M`` tensors ``[N, d]`` -> scalar.
    """
    if len(views) < 2:
        raise ValueError(f"solo_sim_loss needs at least two views, got {len(views)}")
    terms = [
        info_nce(views[j], views[i], tau)
        for i in range(len(views))
        for j in range(i + 1, len(views))
    ]
    return torch.stack(terms).mean()
