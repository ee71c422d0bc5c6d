"""SGFD's semantic-guidance and distillation losses (spec section 4)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Cross-entropy over the rows that have a label; rows labelled ``-1`` are skipped.

    .. math::
        \mathcal{L} = -\frac{1}{|V|} \sum_{i \in V} \log \mathrm{softmax}(z_i)[y_i],
        \qquad V = \{i : y_i \ge 0\}

    ``logits`` are raw scores: the SGFD reference applies a softmax before
    ``cross_entropy``, i.e. twice, which the spec says not to copy. With no labelled row the
    loss is ``0`` but stays attached to ``logits``, so every parameter still gets a (zero)
    gradient and DDP sees the same graph on every rank.

    Shapes:
        logits: ``[N, C]``, labels: ``[N]`` int64 in ``[-1, C)`` -> scalar.
    """
    per_row = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")  # [N]
    keep = (labels >= 0).to(per_row.dtype)
    return (per_row * keep).sum() / keep.sum().clamp(min=1.0)


def response_distillation(
    teacher_logits: Tensor, student_logits: Tensor, temperature: float
) -> Tensor:
    r"""Response-based distillation: L1 distance of the temperature-softened class posteriors.

    .. math::
        \mathcal{L}_{LD} = \frac{1}{NC} \sum_{i, c}
            \big| \mathrm{softmax}(z^T_i / T)_c - \mathrm{softmax}(z^S_i / T)_c \big|

    The mean runs over all ``N x C`` entries, as ``F.l1_loss`` in the SGFD reference.
    Neither side is detached (reference behaviour): the teacher is also pulled towards the
    student, while its classification loss keeps it on the labels.

    Args:
        teacher_logits: classifier scores of the teacher's features.
        student_logits: scores of the student's features by the same classifier.
        temperature (float): softmax temperature ``T`` (reference: 5 to 100).

    Shapes:
        teacher_logits, student_logits: ``[N, C]`` -> scalar.
    """
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    student = F.softmax(student_logits / temperature, dim=1)
    return F.l1_loss(student, teacher)


def feature_distillation(student: Tensor, teacher: Tensor) -> Tensor:
    r"""Feature-based distillation: mean squared error between student and teacher features.

    .. math::
        \mathcal{L}_{FD} = \frac{1}{Nd} \lVert S - T \rVert_F^2

    Shapes:
        student, teacher: ``[N, d]`` -> scalar.
    """
    return F.mse_loss(student, teacher)
