import math

import pytest
import torch

from sea_dist.losses.ranking import bpr_loss, l2_reg


def test_bpr_hand_computed_log2() -> None:
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (-math.log2(1 / (1 + math.exp(-2.0))) + 1.0) / 2  # log2 sigmoid(0) = -1
    assert float(bpr_loss(pos, neg)) == pytest.approx(expected, rel=1e-6)


def test_bpr_natural_log_is_log2_times_ln2() -> None:
    pos, neg = torch.randn(16), torch.randn(16)
    assert float(bpr_loss(pos, neg, log2=False)) == pytest.approx(
        float(bpr_loss(pos, neg)) * math.log(2), rel=1e-6
    )


def test_bpr_averages_over_several_negatives() -> None:
    pos, neg = torch.randn(8), torch.randn(8, 3)
    per_negative = [float(bpr_loss(pos, neg[:, k])) for k in range(3)]
    assert float(bpr_loss(pos, neg)) == pytest.approx(sum(per_negative) / 3, rel=1e-6)


def test_bpr_is_finite_for_extreme_margins() -> None:
    loss = bpr_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert float(loss) == pytest.approx(200 / math.log(2), rel=1e-4)


def test_l2_reg_hand_computed() -> None:
    users = torch.tensor([[1.0, 2.0], [0.0, 1.0]])  # squared norm 6
    items = torch.tensor([[3.0, 0.0], [0.0, 0.0]])  # 9
    assert float(l2_reg(users, items)) == pytest.approx((6 + 9) / (2 * 2))


def test_l2_reg_needs_a_tensor() -> None:
    with pytest.raises(ValueError):
        l2_reg()
