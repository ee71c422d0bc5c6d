"""Ranking losses: BPR and the L2 regulariser of ID embeddings."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

_LN2 = math.log(2.0)


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor, log2: bool = True) -> Tensor:
    r"""Bayesian personalised ranking loss (Rendle et al., UAI 2009).

    .. math::
        \mathcal{L} = -\frac{1}{BK} \sum_{b=1}^{B} \sum_{k=1}^{K}
            \log_2 \sigma\big(y_{b}^{+} - y_{b,k}^{-}\big)

    SEA's reference code takes the logarithm to base 2 (spec section 2), which only scales the
    usual natural-log loss by :math:`1/\ln 2`; ``log2=False`` gives the usual one.

    Args:
        pos_scores: scores of the positive items.
        neg_scores: scores of the sampled negatives; with several negatives per positive the
            loss averages over them.
        log2 (bool, optional): logarithm to base 2 instead of e. (default: :obj:`True`)

    Shapes:
        pos_scores: ``[B]``; neg_scores: ``[B]`` or ``[B, K]`` -> scalar.
    """
    if neg_scores.dim() == 1:
        neg_scores = neg_scores.unsqueeze(1)
    # logsigmoid is exact where log(sigmoid(x)) underflows to -inf for very negative x.
    loss = -F.logsigmoid(pos_scores.unsqueeze(1) - neg_scores).mean()
    return loss / _LN2 if log2 else loss


def l2_reg(*embeddings: Tensor) -> Tensor:
    r"""Squared L2 norm of the batch's embeddings, halved and averaged over the batch.

    .. math::
        \mathcal{R} = \frac{1}{2B} \sum_{E} \lVert E \rVert_F^2

    This is the convention of the LightGCN reference code (the loss multiplies it by its
    ``reg_weight``): ``B`` is the number of rows of the first tensor, i.e. the batch size when
    called as ``l2_reg(user_emb, pos_emb, neg_emb)``.

    Shapes:
        embeddings: ``[B, d]`` (or ``[B, K, d]`` for several negatives) -> scalar.
    """
    if not embeddings:
        raise ValueError("l2_reg needs at least one tensor")
    total = sum(e.pow(2).sum() for e in embeddings)
    return total / (2 * embeddings[0].shape[0])


def norm_reg(*embeddings: Tensor) -> Tensor:
    r"""MMRec's ``EmbLoss``: the (unsquared) Frobenius norms of the batch's embeddings.

    .. math::
        \mathcal{R} = \frac{1}{B} \sum_{E} \lVert E \rVert_F

    ``B`` is the number of rows of the LAST tensor (MMRec's convention; the batch size when
    called as ``norm_reg(user_emb, pos_emb, neg_emb)``). VBPR's reference weights this term.

    Shapes:
        embeddings: ``[B, d]`` (or ``[B, K, d]``) -> scalar.
    """
    if not embeddings:
        raise ValueError("norm_reg needs at least one tensor")
    total = sum(e.norm(p=2) for e in embeddings)
    return total / embeddings[-1].shape[0]
