"""MENTOR's alignment losses: moment matching between views and masked-feature consistency."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moment_alignment(views: list[Tensor]) -> Tensor:
    r"""MENTOR's multilevel alignment: match the first two moments of every pair of views.

    From "MENTOR: Multi-level Self-supervised Learning for Multimodal Recommendation"
    (https://arxiv.org/abs/2402.19407). Each view :math:`R` is summarised by the scalar mean
    :math:`\mu_R` and (unbiased) variance :math:`\sigma^2_R` of ALL its entries, and

    .. math::
        \mathcal{L}_{align} = \sum_{a < b}
            \big|\sigma^2_a - \sigma^2_b\big| + \big|\mu_a - \mu_b\big|

    For MENTOR's four views (ID, fused, image, text) this is the reference's six pairs.
    It is zero when all views share their mean and variance, identical views in particular.

    Args:
        views: the views, each any shape with at least two entries.

    Shapes:
        views: ``M`` tensors -> scalar.
    """
    if len(views) < 2:
        raise ValueError(f"moment_alignment needs at least two views, got {len(views)}")
    means = torch.stack([v.mean() for v in views])
    variances = torch.stack([v.var() for v in views])
    a, b = torch.triu_indices(len(views), len(views), offset=1, device=means.device)
    return ((variances[a] - variances[b]).abs() + (means[a] - means[b]).abs()).sum()


def cosine_consistency(x: Tensor, y: Tensor) -> Tensor:
    r"""One minus the mean row-wise cosine similarity of two views of the same rows.

    .. math::
        \mathcal{L} = 1 - \frac{1}{N} \sum_{i=1}^{N}
            \frac{\langle x_i, y_i \rangle}{\max(\lVert x_i \rVert \lVert y_i \rVert, \epsilon)}

    MENTOR's feature masking calls it with ``x = dropout(R)`` and ``y = MLP(R)``.

    Shapes:
        x, y: ``[N, d]`` -> scalar in ``[0, 2]``.
    """
    if x.shape != y.shape:
        raise ValueError(f"views differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    return 1.0 - F.cosine_similarity(x, y, dim=1).mean()
