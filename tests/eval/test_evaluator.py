import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sea_dist.eval.evaluator import EarlyStopping, Evaluator
from tests.eval.reference import (
    Case,
    make_case,
    reference_means,
    reference_per_user,
    reference_users,
)
from tests.ranks import run_ranks

KS = [1, 5, 20, 50]  # 50 is more than the 40 items


def _evaluator(case: Case, **kwargs: int) -> Evaluator:
    return Evaluator(case.num_users, case.num_items, case.train, case.splits, ks=KS, **kwargs)


def _embeddings(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(case.user_emb), torch.from_numpy(case.item_emb)


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("split", ["valid", "test"])
def test_every_metric_matches_brute_force(seed: int, split: str) -> None:
    case = make_case(seed)
    got = _evaluator(case).evaluate(*_embeddings(case), split)
    want = reference_means(case, split, KS)
    assert set(got) == set(want) | {"num_users"}
    _assert_close(got, want)
    assert got["num_users"] == len(reference_users(case, split))


def test_the_case_covers_every_kind_of_user() -> None:
    case = make_case(0)
    evaluator = _evaluator(case)
    users = set(evaluator.users("valid").tolist())
    assert users == set(reference_users(case, "valid"))
    assert not users & set(case.cold_users)  # cold-start users are dropped
    assert set(case.all_masked_users) <= users  # kept, and can never score
    per_user = reference_per_user(case, "valid", KS, case.all_masked_users)
    assert all(v == 0.0 for v in per_user["hit@50"])
    per_user = reference_per_user(case, "valid", KS, case.single_positive_users)
    assert any(v == 1.0 for v in per_user["hit@20"])  # fewer positives than K, found


def test_tiny_tiles_give_the_same_metrics() -> None:
    case = make_case(3)
    emb = _embeddings(case)
    want = _evaluator(case).evaluate(*emb, "valid")
    for batch_users, budget in [(7, 20), (7, 140), (1, 1000), (64, 64 * 13)]:
        evaluator = _evaluator(case, batch_users=batch_users, max_tile_elements=budget)
        _assert_close(evaluator.evaluate(*emb, "valid"), want)


def test_gaussian_embeddings_are_independent_of_tiling() -> None:
    case = make_case(4)
    rng = np.random.default_rng(4)
    user_emb = torch.from_numpy(rng.standard_normal((case.num_users, 16)).astype(np.float32))
    item_emb = torch.from_numpy(rng.standard_normal((case.num_items, 16)).astype(np.float32))
    want = _evaluator(case).evaluate(user_emb, item_emb, "valid")
    got = _evaluator(case, batch_users=5, max_tile_elements=60).evaluate(
        user_emb, item_emb, "valid"
    )
    _assert_close(got, want)
    assert 0 < want["recall@20"] < 1


def test_sampled_users_match_brute_force_with_confidence_intervals() -> None:
    case = make_case(5)
    evaluator = _evaluator(case)
    population = evaluator.users("valid")
    sample = evaluator.sample_users("valid", 30, seed=7)
    assert len(sample) == 30 and set(sample.tolist()) <= set(population.tolist())
    got = evaluator.evaluate(*_embeddings(case), "valid", users_sample=30, seed=7)
    assert got["num_users"] == 30
    per_user = reference_per_user(case, "valid", KS, sample.tolist())
    n, big_n = 30, len(population)
    for key, values in per_user.items():
        assert got[key] == pytest.approx(np.mean(values), rel=1e-12, abs=1e-15), key
        half = (
            1.959963984540054
            * np.std(values, ddof=1)
            / math.sqrt(n)
            * math.sqrt((big_n - n) / (big_n - 1))
        )
        assert got[f"{key}_ci95"] == pytest.approx(half, rel=1e-9, abs=1e-15), key


def test_sample_is_seeded() -> None:
    case = make_case(5)
    evaluator = _evaluator(case)
    emb = _embeddings(case)
    first = evaluator.evaluate(*emb, "valid", users_sample=20, seed=1)
    assert evaluator.evaluate(*emb, "valid", users_sample=20, seed=1) == first
    assert not np.array_equal(
        evaluator.sample_users("valid", 20, 1), evaluator.sample_users("valid", 20, 2)
    )


def test_sample_of_everyone_is_exact_with_zero_interval() -> None:
    case = make_case(6)
    evaluator = _evaluator(case)
    emb = _embeddings(case)
    full = evaluator.evaluate(*emb, "valid")
    sampled = evaluator.evaluate(*emb, "valid", users_sample=10_000)
    _assert_close(sampled, full)
    assert sampled["recall@20_ci95"] == 0.0


def test_cold_and_positive_free_users_only() -> None:
    # Nobody has both a training item and a valid positive: no user is evaluated.
    train = (np.array([0, 0]), np.array([1, 2]))
    valid = (np.array([1]), np.array([0]))
    evaluator = Evaluator(2, 3, train, {"valid": valid}, ks=[2])
    got = evaluator.evaluate(torch.ones(2, 4), torch.ones(3, 4), "valid")
    assert got["num_users"] == 0.0 and math.isnan(got["recall@2"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"train": (np.array([0, 5]), np.array([0, 1]))},
            r"train: row 1 has user id 5, outside 0..3",
        ),
        ({"splits": {"valid": (np.array([0]), np.array([-1]))}}, r"valid: row 0 has item id -1"),
        (
            {"splits": {"valid": (np.array([0, 1]), np.array([0]))}},
            r"valid: user and item id arrays",
        ),
        ({"ks": []}, r"at least one cut-off"),
        ({"ks": [0, 5]}, r"at least one cut-off"),
    ],
)
def test_bad_constructor_input_is_named(kwargs: dict, message: str) -> None:
    args = {
        "train": (np.array([0, 1]), np.array([0, 1])),
        "splits": {"valid": (np.array([0]), np.array([2]))},
        "ks": [5],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Evaluator(4, 3, args["train"], args["splits"], ks=args["ks"])


def test_bad_evaluate_input_is_named() -> None:
    evaluator = Evaluator(
        4, 3, (np.array([0]), np.array([0])), {"valid": (np.array([0]), np.array([1]))}, ks=[2]
    )
    with pytest.raises(ValueError, match=r"unknown split 'test'; the evaluator has \['valid'\]"):
        evaluator.evaluate(torch.ones(4, 2), torch.ones(3, 2), "test")
    with pytest.raises(ValueError, match=r"item_emb has shape \(2, 2\), expected \(3, d\)"):
        evaluator.evaluate(torch.ones(4, 2), torch.ones(2, 2), "valid")
    with pytest.raises(ValueError, match="user_emb has NaN"):
        evaluator.evaluate(torch.full((4, 2), float("nan")), torch.ones(3, 2), "valid")
    with pytest.raises(ValueError, match="users_sample=0"):
        evaluator.evaluate(torch.ones(4, 2), torch.ones(3, 2), "valid", users_sample=0)


def _sharded_worker(rank: int, world: int, out_dir: str) -> None:
    case = make_case(7)
    evaluator = _evaluator(case, batch_users=16)
    emb = _embeddings(case)
    result = {
        "full": evaluator.evaluate(*emb, "valid"),
        "sampled": evaluator.evaluate(*emb, "test", users_sample=41, seed=3),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    run_ranks(_sharded_worker, 2, str(tmp_path), timeout_s=100)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]
    case = make_case(7)
    evaluator = _evaluator(case, batch_users=16)
    emb = _embeddings(case)
    assert len(evaluator.users("valid")) > 3 * 16  # several chunks per rank
    _assert_close(ranks[0]["full"], evaluator.evaluate(*emb, "valid"))
    _assert_close(ranks[0]["sampled"], evaluator.evaluate(*emb, "test", users_sample=41, seed=3))
    _assert_close(ranks[0]["full"], reference_means(case, "valid", KS))


def test_early_stopping_tracks_the_first_best_and_patience() -> None:
    stopper = EarlyStopping("recall@20", patience=2)
    assert stopper.update(0, {"recall@20": 0.1}) is True
    assert stopper.update(1, {"recall@20": 0.3}) is True
    assert stopper.update(2, {"recall@20": 0.3}) is False  # a tie is not an improvement
    assert not stopper.should_stop
    assert stopper.update(3, {"recall@20": float("nan")}) is False
    assert stopper.should_stop
    assert (stopper.best_epoch, stopper.best_value) == (1, 0.3)


def test_early_stopping_resumes_from_its_state() -> None:
    stopper = EarlyStopping("ndcg@10", patience=3)
    stopper.update(0, {"ndcg@10": 0.2})
    stopper.update(1, {"ndcg@10": 0.1})
    resumed = EarlyStopping("ndcg@10", patience=3)
    resumed.load_state_dict(json.loads(json.dumps(stopper.state_dict())))
    assert resumed.state_dict() == stopper.state_dict()
    resumed.update(2, {"ndcg@10": 0.15})
    assert not resumed.should_stop
    resumed.update(3, {"ndcg@10": 0.15})
    assert resumed.should_stop and resumed.best_epoch == 0


def test_early_stopping_errors_are_named() -> None:
    with pytest.raises(ValueError, match="patience=0"):
        EarlyStopping("recall@20", patience=0)
    with pytest.raises(KeyError, match="recall@20"):
        EarlyStopping("recall@20", patience=1).update(0, {"recall@10": 0.1})
    with pytest.raises(ValueError, match="checkpoint tracks 'recall@10'"):
        EarlyStopping("recall@20", patience=1).load_state_dict(
            EarlyStopping("recall@10", 1).state_dict()
        )
