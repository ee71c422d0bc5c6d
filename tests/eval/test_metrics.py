import math

import numpy as np
import pytest
import torch

from sea_dist.eval.metrics import METRICS, metric_names, per_user_metrics
from tests.eval.reference import reference_user_metrics

HITS = torch.tensor(
    [
        [True, False, True, False],  # 2 positives, both found at ranks 1 and 3
        [False, False, False, False],  # 3 positives, none found
        [False, True, False, False],  # 5 positives, one found at rank 2
    ]
)
NUM_POS = torch.tensor([2, 3, 5])


def test_hand_computed_values_at_4() -> None:
    values = per_user_metrics(HITS, NUM_POS, [4])
    l2 = math.log2
    expected = {
        "recall@4": [1.0, 0.0, 0.2],
        "precision@4": [0.5, 0.0, 0.25],
        "hit@4": [1.0, 0.0, 1.0],
        "ndcg@4": [
            (1 + 1 / l2(4)) / (1 + 1 / l2(3)),
            0.0,
            (1 / l2(3)) / (1 + 1 / l2(3) + 1 / l2(4) + 1 / l2(5)),
        ],
        # MMRec map_: sum of precision at hit ranks / min(num_pos, k).
        "map@4": [(1 / 1 + 2 / 3) / 2, 0.0, (1 / 2) / 4],
    }
    for key, want in expected.items():
        assert values[key].dtype == torch.float64
        assert values[key].tolist() == pytest.approx(want, abs=1e-15), key


def test_hand_computed_values_at_1() -> None:
    values = per_user_metrics(HITS, NUM_POS, [1])
    assert values["recall@1"].tolist() == [0.5, 0.0, 0.0]
    assert values["precision@1"].tolist() == [1.0, 0.0, 0.0]
    assert values["ndcg@1"].tolist() == [1.0, 0.0, 0.0]  # IDCG over min(2, 1) = 1 position
    assert values["map@1"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("seed", range(5))
def test_random_hit_matrices_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hits = rng.random((40, 12)) < 0.3
    # Number of positives at least the hits found and at least 1, sometimes far more than K.
    num_pos = np.maximum(hits.sum(1), 1) + rng.integers(0, 15, 40)
    ks = [1, 3, 12]
    values = per_user_metrics(torch.from_numpy(hits), torch.from_numpy(num_pos), ks)
    assert list(values) == metric_names(ks)
    for user in range(40):
        # Positives named by rank: hit ranks are positives, the rest lie outside the list.
        positives = {r for r in range(12) if hits[user, r]}
        positives |= {100 + j for j in range(num_pos[user] - len(positives))}
        for k in ks:
            want = reference_user_metrics(list(range(12)), positives, k)
            for name in METRICS:
                got = float(values[f"{name}@{k}"][user])
                assert got == pytest.approx(want[name], rel=1e-12, abs=1e-15), (user, name, k)


def test_values_are_in_unit_interval() -> None:
    rng = np.random.default_rng(0)
    hits = torch.from_numpy(rng.random((200, 20)) < 0.5)
    num_pos = hits.sum(1).clamp(min=1)
    for key, value in per_user_metrics(hits, num_pos, [5, 20]).items():
        assert bool(((value >= 0) & (value <= 1 + 1e-12)).all()), key


def test_k_wider_than_the_hit_matrix_is_an_error() -> None:
    with pytest.raises(ValueError, match="k=5 outside 1..4"):
        per_user_metrics(HITS, NUM_POS, [5])


def test_users_without_positives_are_an_error() -> None:
    with pytest.raises(ValueError, match="num_pos must be at least 1"):
        per_user_metrics(HITS, torch.tensor([2, 0, 5]), [2])


def test_hits_must_be_boolean() -> None:
    with pytest.raises(ValueError, match="2-D bool"):
        per_user_metrics(HITS.int(), NUM_POS, [2])
