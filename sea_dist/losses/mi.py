"""Mutual-information terms for SEA's distancing: the CLUB upper bound and SAND's bounded -L2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CLUB(nn.Module):
    r"""Contrastive Log-ratio Upper Bound of mutual information, sampled version.

    From Cheng et al., "CLUB: A Contrastive Log-ratio Upper Bound of Mutual Information"
    (ICML 2020, https://arxiv.org/abs/2006.12013), in the form SEA uses (spec section 2).
    A variational Gaussian :math:`q(y \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}(e^{s(x)}))`
    with

    .. math::
        \ell_i(y) = \sum_d \Big[ -\frac{(\mu_d(x_i) - y_d)^2}{2 e^{s_d(x_i)}}
                                 - \frac{s_d(x_i)}{2} \Big],
        \qquad
        \widehat{I}(x; y) = \max\Big(0, \tfrac12 \cdot \tfrac1N \sum_i
                            \big[\ell_i(y_i) - \ell_i(y_{\pi(i)})\big]\Big)

    for a random permutation :math:`\pi`. The factor :math:`\tfrac12` and the clamp follow the
    SEA reference; for Gaussians the halved estimate still upper-bounds the true MI once
    :math:`q` fits (``rho^2 / (2 (1 - rho^2)) >= -log(1 - rho^2) / 2``).

    The module has the two methods of the original estimator: :meth:`forward` is the bound
    the MODEL minimises (gradients flow into ``x`` and ``y``), :meth:`learning_loss` is the
    negative log-likelihood the ESTIMATOR minimises on detached samples, with its own optimizer.

    Args:
        x_dim (int): width of the conditioning samples ``x``.
        y_dim (int): width of the predicted samples ``y``.
        hidden (int): hidden width of the ``mu`` and ``logvar`` networks (SEA: 8).

    Shapes:
        x: ``[N, x_dim]``, y: ``[N, y_dim]`` -> scalar.
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        # tanh keeps log-variances in [-1, 1], so the likelihood cannot blow up.
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for net in (self.mu, self.logvar):
            for layer in net:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-row ``l_i(y_i)``, without the constant ``-log(2 pi) / 2`` per coordinate."""
        return _gaussian_log_likelihood(self.mu(x), self.logvar(x), y)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        mu, logvar = self.mu(x), self.logvar(x)
        perm = torch.randperm(x.shape[0], device=x.device)
        positive = _gaussian_log_likelihood(mu, logvar, y)  # l_i(y_i)
        negative = _gaussian_log_likelihood(mu, logvar, y[perm])  # l_i(y_pi(i))
        return torch.clamp(0.5 * (positive - negative).mean(), min=0.0)

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``-mean_i l_i(y_i)``: fit ``q`` to the pairs (call on detached samples)."""
        return -self.log_likelihood(x, y).mean()


def _gaussian_log_likelihood(mu: Tensor, logvar: Tensor, y: Tensor) -> Tensor:
    return (-((mu - y) ** 2) / (2 * logvar.exp()) - logvar / 2).sum(dim=1)  # [N]


def neg_l2_distancing(x: Tensor, y: Tensor) -> Tensor:
    r"""SAND's distancing term, bounded: minus the mean squared distance of unit vectors.

    .. math::
        \mathcal{L} = -\frac{1}{N} \sum_i \Big\lVert \frac{x_i}{\lVert x_i \rVert}
                      - \frac{y_i}{\lVert y_i \rVert} \Big\rVert^2 \in [-4, 0]

    The unnormalised ``-||x - y||^2`` of the SAND paper is unbounded below, so minimising it
    only inflates the projections; on the unit sphere the minimum (-4) means ``y_i = -x_i``.

    Shapes:
        x, y: ``[N, d]`` -> scalar.
    """
    diff = F.normalize(x, dim=1) - F.normalize(y, dim=1)
    return -diff.pow(2).sum(dim=1).mean()
