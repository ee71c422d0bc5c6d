"""Contrastive losses: InfoNCE and SEA's SoloSimLoss over any number of modalities."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    tau: float,
    normalize: bool = True,
    group: int | None = None,
) -> Tensor:
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
        group (int, optional): contrast each row only with the rows of its group: rows
            ``k, k + g, k + 2g, ...`` for ``g = ceil(N / group)`` groups of at most ``group``
            rows, the loss the mean over all rows. ``O(N group d)`` instead of ``O(N^2 d)``,
            what a batch of ``group`` rows would cost each. (default: :obj:`None`, one group)

    Shapes:
        anchors, candidates: ``[N, d]`` -> scalar.
    """
    if anchors.shape != candidates.shape:
        raise ValueError(
            f"views differ in shape: {tuple(anchors.shape)} vs {tuple(candidates.shape)}"
        )
    n = anchors.shape[0]
    if group is not None and n > group:
        groups = -(-n // group)
        total = anchors.new_zeros(())
        for k in range(groups):
            term = info_nce(anchors[k::groups], candidates[k::groups], tau, normalize)
            total = total + len(range(k, n, groups)) * term
        return total / n
    if normalize:
        anchors, candidates = F.normalize(anchors, dim=1), F.normalize(candidates, dim=1)
    anchors = anchors / tau  # scaling [N, d] rather than the [N, N] logits
    positive = (anchors * candidates).sum(dim=1)  # the logits' diagonal
    return _MeanLogSumExp.apply(anchors, candidates) - positive.mean()


class _MeanLogSumExp(torch.autograd.Function):
    r""":math:`\frac1N \sum_i \log \sum_j \exp \langle a_i, c_j \rangle`, in row blocks.

    The ``[N, N]`` logits are never held whole: each block of rows is computed, reduced and
    dropped, and the backward recomputes it (``N^2 d`` more FLOPs, small next to what it
    saves). At SEA's sizes (every item in full-graph mode, thousands per sampled batch) the
    whole-matrix version allocates several ``N x N`` temporaries per step (180 MB each at
    6,710 items), and on this machine filling fresh pages cost more than the arithmetic.
    """

    @staticmethod
    def forward(ctx: Any, anchors: Tensor, candidates: Tensor) -> Tensor:
        lse = anchors.new_empty(anchors.shape[0])
        for rows in _row_blocks(anchors.shape[0], candidates.shape[0]):
            torch.logsumexp(anchors[rows] @ candidates.T, dim=1, out=lse[rows])
        ctx.save_for_backward(anchors, candidates, lse)
        return lse.mean()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        anchors, candidates, lse = ctx.saved_tensors
        scale = grad / anchors.shape[0]
        grad_anchors = torch.empty_like(anchors)
        grad_candidates = torch.zeros_like(candidates)
        for rows in _row_blocks(anchors.shape[0], candidates.shape[0]):
            # softmax of the block's logits, times the upstream gradient of the mean
            weights = (anchors[rows] @ candidates.T).sub_(lse[rows, None]).exp_().mul_(scale)
            torch.mm(weights, candidates, out=grad_anchors[rows])
            grad_candidates.addmm_(weights.T, anchors[rows])
        return grad_anchors, grad_candidates


def _row_blocks(rows: int, cols: int, block_bytes: int = 4 << 20) -> list[slice]:
    """Row slices whose ``[block, cols]`` float32 logits take about ``block_bytes``."""
    step = max(1, block_bytes // (4 * max(cols, 1)))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def solo_sim_loss(
    anchor: Tensor, others: Sequence[Tensor], tau: float, group: int | None = None
) -> Tensor:
    r"""SEA's SoloSimLoss, generalised from two modalities to any number ``M >= 2``.

    From "It is Never Too Late to Mend: Separate Learning for Multimedia Recommendation"
    (https://arxiv.org/abs/2406.08270), eq. 16. The anchor modality ``a`` (named by the caller:
    the reference's is its t_feat modality, text on the Amazon sets, audio on TikTok) is
    contrasted with each other modality's candidates, and the terms are averaged:

    .. math::
        \mathcal{L}_{solo} = \frac{1}{M - 1} \sum_{m \ne a} \mathrm{InfoNCE}(z_a \to z_m)

    For ``M = 2`` this is exactly the reference's text-anchored loss against image candidates.
    With more modalities every one is aligned with the anchor (a star, not all pairs), so a
    single name fixes the direction of every term, as it does in the reference.

    Args:
        anchor: the anchor modality's projected generic parts.
        others: every other modality's, for the same items in the same order.
        tau (float): temperature.
        group (int, optional): groups of at most this many items (:func:`info_nce`).

    Shapes:
        anchor: ``[N, d]``; others: ``M - 1`` tensors ``[N, d]`` -> scalar.
    """
    if not others:
        raise ValueError("solo_sim_loss needs at least one view besides the anchor")
    return torch.stack([info_nce(anchor, other, tau, group=group) for other in others]).mean()
