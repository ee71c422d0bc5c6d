import pytest
import torch

from sea_dist.losses.alignment import cosine_consistency, moment_alignment
from sea_dist.losses.contrastive import info_nce


def test_alignment_is_zero_for_identical_views() -> None:
    view = torch.randn(30, 8)
    assert float(moment_alignment([view, view.clone(), view.clone(), view.clone()])) == 0.0


def test_alignment_is_zero_for_views_sharing_mean_and_variance() -> None:
    view = torch.randn(30, 8)
    shuffled = view.flatten()[torch.randperm(240)].view(30, 8)  # same entries, other places
    assert float(moment_alignment([view, shuffled])) == pytest.approx(0.0, abs=1e-6)


def test_alignment_sums_the_moment_gaps_of_every_pair() -> None:
    a, b, c = torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    # means 0, 1, 1; unbiased variances 0, 0, 4/3
    expected = (0 + 1) + (4 / 3 + 1) + (4 / 3 + 0)
    assert float(moment_alignment([a, b, c])) == pytest.approx(expected, rel=1e-6)


def test_alignment_needs_two_views() -> None:
    with pytest.raises(ValueError, match="two views"):
        moment_alignment([torch.randn(3, 3)])


def test_alignment_gradient_moves_the_moments_together() -> None:
    a = torch.randn(20, 4, requires_grad=True)
    b = torch.randn(20, 4) * 3 + 1
    moment_alignment([a, b]).backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_cosine_consistency_range_and_zero_for_parallel_rows() -> None:
    x = torch.randn(16, 8)
    assert float(cosine_consistency(x, 2.0 * x)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_consistency(x, -x)) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        cosine_consistency(x, x[:, :4])


def test_info_nce_lower_for_matched_than_shuffled_noisy_views() -> None:
    """MENTOR's graph-perturbation term: two noisy copies of one view agree row by row."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(128, 16, generator=gen)
    n1 = base + 0.1 * torch.randn(128, 16, generator=gen)
    n2 = base + 0.1 * torch.randn(128, 16, generator=gen)
    shuffled = n2[torch.randperm(128, generator=gen)]
    assert float(info_nce(n1, n2, 0.2)) < float(info_nce(n1, shuffled, 0.2))
