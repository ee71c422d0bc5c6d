import pytest
import torch
import torch.nn.functional as F

from sea_dist.losses.distill import (
    feature_distillation,
    masked_cross_entropy,
    response_distillation,
)


def test_cross_entropy_takes_raw_logits() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 2])
    assert float(masked_cross_entropy(logits, labels)) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-6
    )
    # The reference's softmax-then-cross-entropy is a different (flatter) loss.
    twice = F.cross_entropy(F.softmax(logits, dim=1), labels)
    assert float(masked_cross_entropy(logits, labels)) != pytest.approx(float(twice), rel=1e-3)


def test_cross_entropy_skips_unknown_labels() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([1, -1, 2, -1])
    expected = F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    loss = masked_cross_entropy(logits, labels)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and float(logits.grad[[1, 3]].abs().sum()) == 0.0


def test_cross_entropy_with_no_labelled_row_is_an_attached_zero() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.full((3,), -1))
    assert float(loss) == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None


def test_response_distillation_is_zero_for_equal_logits_and_l1_of_soft_posteriors() -> None:
    t = torch.randn(5, 4)
    assert float(response_distillation(t, t.clone(), 10.0)) == 0.0
    s = torch.randn(5, 4)
    expected = (F.softmax(t / 2.0, 1) - F.softmax(s / 2.0, 1)).abs().mean()
    assert float(response_distillation(t, s, 2.0)) == pytest.approx(float(expected), rel=1e-6)
    # A higher temperature softens both posteriors and shrinks the gap.
    assert float(response_distillation(t, s, 100.0)) < float(response_distillation(t, s, 1.0))


def test_feature_distillation_is_mse_and_pulls_both_sides() -> None:
    s = torch.randn(6, 3, requires_grad=True)
    t = torch.randn(6, 3, requires_grad=True)
    loss = feature_distillation(s, t)
    assert float(loss) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-6)
    assert float(feature_distillation(t, t)) == 0.0
    loss.backward()
    assert s.grad is not None and t.grad is not None
