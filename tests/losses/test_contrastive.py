import math

import pytest
import torch
import torch.nn.functional as F

from sea_dist.losses.contrastive import info_nce, solo_sim_loss


def test_info_nce_hand_computed() -> None:
    eye = torch.eye(2)  # cosine 1 with itself, 0 with the other row
    expected = -math.log(math.e / (math.e + 1))
    assert float(info_nce(eye, eye, tau=1.0)) == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_lower_for_aligned_than_shuffled_pairs() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(64, 32, generator=gen)
    aligned = z + 0.1 * torch.randn(64, 32, generator=gen)
    shuffled = aligned[torch.randperm(64, generator=gen)]
    low, high = float(info_nce(z, aligned, 0.2)), float(info_nce(z, shuffled, 0.2))
    # Aligned: the positive dominates; shuffled: about log N, the loss of a uniform guess.
    assert low < 1.0
    assert high > math.log(64) - 0.5


def test_solo_sim_two_views_is_the_anchored_info_nce() -> None:
    gen = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(20, 8, generator=gen), dim=1)
    text = F.normalize(image + torch.randn(20, 8, generator=gen), dim=1)
    loss = solo_sim_loss(text, [image], tau=0.2)
    assert float(loss) == pytest.approx(float(info_nce(text, image, 0.2)), rel=1e-6)
    # The direction matters: it is not the image-anchored loss.
    assert float(loss) != pytest.approx(float(solo_sim_loss(image, [text], 0.2)), rel=1e-3)


def test_solo_sim_three_views_averages_the_anchor_against_each_other() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b, c = (torch.randn(10, 4, generator=gen) for _ in range(3))
    expected = (info_nce(b, a, 0.5) + info_nce(b, c, 0.5)) / 2
    assert float(solo_sim_loss(b, [a, c], 0.5)) == pytest.approx(float(expected), rel=1e-6)


def test_solo_sim_lower_for_aligned_views() -> None:
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(32, 16, generator=gen)
    text = image + 0.05 * torch.randn(32, 16, generator=gen)
    shuffled = text[torch.randperm(32, generator=gen)]
    assert float(solo_sim_loss(text, [image], 0.2)) < float(solo_sim_loss(shuffled, [image], 0.2))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        solo_sim_loss(torch.randn(4, 2), [], 0.2)
    with pytest.raises(ValueError):
        info_nce(torch.randn(4, 2), torch.randn(3, 2), 0.2)


def _whole_matrix_info_nce(anchors: torch.Tensor, candidates: torch.Tensor, tau: float) -> torch.Tensor:
    """The textbook form: every logit at once, minus the diagonal of the log-softmax."""
    logits = F.normalize(anchors, dim=1) @ F.normalize(candidates, dim=1).T / tau
    return -torch.diagonal(F.log_softmax(logits, dim=1)).mean()


@pytest.mark.parametrize("rows", [1, 7, 300, 3000])
def test_blocked_info_nce_equals_the_whole_matrix_form(rows: int) -> None:
    """Value and gradients, in float64 so that any slip in the blocked backward shows; 3000
    rows span several row blocks with a ragged last one."""
    gen = torch.Generator().manual_seed(rows)
    a = torch.randn(rows, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    c = (a.detach() + torch.randn(rows, 16, generator=gen, dtype=torch.float64)).requires_grad_()
    got = info_nce(a, c, 0.2)
    grads = torch.autograd.grad(got, (a, c))
    want = _whole_matrix_info_nce(a, c, 0.2)
    expected = torch.autograd.grad(want, (a, c))
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_blocked_info_nce_passes_gradcheck() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.5), (a, c))


def test_grouped_info_nce_averages_the_groups_info_nce() -> None:
    g = torch.Generator().manual_seed(3)
    a, c = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    # 10 rows, groups of at most 4: 3 groups, rows k, k+3, k+6, ...
    want = sum(len(range(k, 10, 3)) * info_nce(a[k::3], c[k::3], 0.5) for k in range(3)) / 10
    torch.testing.assert_close(info_nce(a, c, 0.5, group=4), want)
    torch.testing.assert_close(info_nce(a, c, 0.5, group=10), info_nce(a, c, 0.5))
    assert abs(float(info_nce(a, c, 0.5, group=4) - info_nce(a, c, 0.5))) > 1e-3
    torch.testing.assert_close(
        solo_sim_loss(a, [c], 0.5, group=4), info_nce(a, c, 0.5, group=4)
    )
