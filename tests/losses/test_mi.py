import math

import pytest
import torch

from sea_dist.losses.mi import CLUB, neg_l2_distancing


def _gaussians(
    n: int, d: int, rho: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d`` independent coordinate pairs with correlation ``rho``: MI = -d/2 log(1 - rho^2)."""
    x = torch.randn(n, d, generator=gen)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=gen)


def _fitted_estimate(rho: float, d: int = 3, hidden: int = 8) -> float:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    club = CLUB(d, d, hidden)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    x, y = _gaussians(2000, d, rho, gen)
    for _ in range(800):
        opt.zero_grad()
        club.learning_loss(x, y).backward()
        opt.step()
    x, y = _gaussians(4000, d, rho, gen)  # fresh samples: no credit for memorising
    with torch.no_grad():
        return float(torch.stack([club(x, y) for _ in range(10)]).mean())


def test_club_upper_bounds_true_mi_of_correlated_gaussians() -> None:
    d, rho = 3, 0.7
    true_mi = -d / 2 * math.log(1 - rho**2)  # 1.01 nats
    # With q equal to the true conditional the halved estimate is d rho^2 / (2 (1 - rho^2)).
    ideal = d * rho**2 / (2 * (1 - rho**2))  # 1.44
    estimate = _fitted_estimate(rho, d)
    assert true_mi < estimate < 1.25 * ideal


def test_club_is_near_zero_for_independent_inputs() -> None:
    assert 0.0 <= _fitted_estimate(0.0) < 0.05


def test_club_bound_is_clamped_and_differentiable() -> None:
    torch.manual_seed(0)
    club = CLUB(4, 4, 8)
    x, y = torch.randn(32, 4, requires_grad=True), torch.randn(32, 4, requires_grad=True)
    values = [float(club(x, y)) for _ in range(20)]
    assert min(values) >= 0.0
    bound = club(x, y)
    while float(bound) == 0.0:  # clamped draws have no gradient; take another permutation
        bound = club(x, y)
    bound.backward()
    assert x.grad is not None and y.grad is not None and y.grad.abs().sum() > 0


def test_learning_loss_is_negative_mean_log_likelihood() -> None:
    torch.manual_seed(0)
    club = CLUB(2, 3, 8)
    x, y = torch.randn(5, 2), torch.randn(5, 3)
    mu, logvar = club.mu(x), club.logvar(x)
    manual = (-((mu - y) ** 2) / (2 * logvar.exp()) - logvar / 2).sum(1).mean()
    assert float(club.learning_loss(x, y)) == pytest.approx(-float(manual), rel=1e-6)
    assert club.log_likelihood(x, y).shape == (5,)


def test_neg_l2_is_bounded_and_scale_free() -> None:
    x = torch.randn(50, 8)
    assert float(neg_l2_distancing(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(neg_l2_distancing(x, -3 * x)) == pytest.approx(-4.0, rel=1e-5)
    y = torch.randn(50, 8)
    value = float(neg_l2_distancing(x, y))
    assert -4.0 <= value <= 0.0
    assert float(neg_l2_distancing(10 * x, 0.1 * y)) == pytest.approx(value, rel=1e-5)
