import numpy as np
import pytest
import torch

from sea_dist.data.splits import user_item_csr
from sea_dist.eval.ranking import csr_rows, match_hits, order_by_score, plan_tiles, topk_items
from tests.eval.reference import make_case, reference_ranking


def _case_tensors(seed: int):
    case = make_case(seed)
    indptr, indices = user_item_csr(*case.train, case.num_users)
    return case, torch.from_numpy(indptr), torch.from_numpy(indices)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("item_chunk", [1, 7, 16, 40])
@pytest.mark.parametrize("k", [1, 5, 33, 60])
def test_topk_matches_brute_force_under_ties(seed: int, item_chunk: int, k: int) -> None:
    case, indptr, indices = _case_tensors(seed)
    users = torch.arange(case.num_users)
    rows, cols = csr_rows(indptr, indices, users)
    scores, items = topk_items(
        torch.from_numpy(case.user_emb),
        torch.from_numpy(case.item_emb),
        k,
        seen_rows=rows,
        seen_cols=cols,
        item_chunk=item_chunk,
    )
    assert items.shape == (case.num_users, min(k, case.num_items))
    for user in range(case.num_users):
        want = reference_ranking(case, user, k)
        finite = scores[user] > float("-inf")
        # Masked items only pad lists of users with fewer than k unseen items.
        assert items[user][finite].tolist() == want, user
        assert int((~finite).sum()) == min(k, case.num_items) - len(want)


def test_reused_buffer_gives_the_same_lists() -> None:
    case, indptr, indices = _case_tensors(2)
    users = torch.arange(0, case.num_users, 3)
    rows, cols = csr_rows(indptr, indices, users)
    args = (torch.from_numpy(case.user_emb)[users], torch.from_numpy(case.item_emb), 10)
    fresh = topk_items(*args, seen_rows=rows, seen_cols=cols, item_chunk=9)
    buffer = torch.full((len(users) * 9,), 123.0)
    reused = topk_items(*args, seen_rows=rows, seen_cols=cols, item_chunk=9, buffer=buffer)
    assert torch.equal(fresh[0], reused[0]) and torch.equal(fresh[1], reused[1])


def test_all_equal_scores_rank_lowest_ids_first() -> None:
    user_emb = torch.zeros(3, 4)
    item_emb = torch.randn(50, 4)
    rows, cols = torch.tensor([1, 1]), torch.tensor([0, 2])
    _, items = topk_items(user_emb, item_emb, 5, seen_rows=rows, seen_cols=cols, item_chunk=50)
    assert items.tolist() == [[0, 1, 2, 3, 4], [1, 3, 4, 5, 6], [0, 1, 2, 3, 4]]


def test_order_by_score_breaks_ties_by_item_id() -> None:
    scores = torch.tensor([[1.0, 3.0, 1.0, 3.0, float("-inf")]])
    items = torch.tensor([[9, 7, 2, 8, 0]])
    s, i = order_by_score(scores, items)
    assert i.tolist() == [[7, 8, 2, 9, 0]]
    assert s.tolist() == [[3.0, 3.0, 1.0, 1.0, float("-inf")]]


def test_csr_rows_gathers_requested_rows_in_order() -> None:
    indptr, indices = user_item_csr(np.array([0, 0, 2, 3, 3, 3]), np.array([5, 1, 4, 0, 9, 2]), 4)
    rows, cols = csr_rows(
        torch.from_numpy(indptr), torch.from_numpy(indices), torch.tensor([3, 1, 0, 2])
    )
    assert rows.tolist() == [0, 0, 0, 2, 2, 3]
    assert cols.tolist() == [0, 2, 9, 1, 5, 4]


def test_match_hits_ignores_masked_entries() -> None:
    pos_keys = torch.tensor([0 * 10 + 3, 1 * 10 + 2, 1 * 10 + 5])
    items = torch.tensor([[3, 4, 2], [5, 2, 3]])
    scores = torch.tensor([[2.0, 1.0, 0.0], [1.0, float("-inf"), float("-inf")]])
    hits = match_hits(torch.tensor([0, 1]), items, scores, pos_keys, 10)
    assert hits.tolist() == [[True, False, False], [True, False, False]]


def test_match_hits_without_positives() -> None:
    hits = match_hits(
        torch.tensor([0]),
        torch.tensor([[1, 2]]),
        torch.zeros(1, 2),
        torch.zeros(0, dtype=torch.long),
        5,
    )
    assert hits.tolist() == [[False, False]]


@pytest.mark.parametrize(
    ("num_items", "max_rows", "budget", "rows", "chunk"),
    [
        (1_000_000, 4096, 1 << 26, 512, 131072),
        (100_000, 4096, 1 << 26, 671, 100_000),
        (10_000, 4096, 1 << 26, 4096, 10_000),
        (50, 7, 20, 1, 20),
        (50, 7, 140, 2, 50),
    ],
)
def test_plan_tiles_respects_the_budget(
    num_items: int, max_rows: int, budget: int, rows: int, chunk: int
) -> None:
    plan = plan_tiles(num_items, max_rows, budget)
    assert (plan.rows, plan.item_chunk) == (rows, chunk)
    assert plan.rows * plan.item_chunk <= budget


def test_plan_tiles_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="positive sizes"):
        plan_tiles(0, 10)
