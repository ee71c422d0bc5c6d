"""ID tables: initial rows depend on the seed and the row range only, so shards draw their own."""

from __future__ import annotations

import math

import pytest
import torch

from sea_dist.models.registry import registered_models
from sea_dist.models.tables import ROWS_PER_DRAW, IdTable, deferred_tables, sparse_table_gradients
from sea_dist.train.sharding import ShardedIdTable
from tests.models.test_registry import build
from tests.models.toy_graph import ToyGraph

ROWS = 2 * ROWS_PER_DRAW + 1234  # three draws, the last one short


@pytest.mark.parametrize("init", ["xavier_normal", "xavier_uniform", "softmax"])
def test_any_row_range_is_drawn_as_the_whole_table_writes_it(init: str) -> None:
    torch.manual_seed(0)
    table = IdTable(ROWS, 3, init=init)
    table.reset_parameters()
    weight = table.weight.detach()
    for start, stop in [(0, 5), (ROWS_PER_DRAW - 3, ROWS_PER_DRAW + 7), (100, ROWS), (ROWS, ROWS)]:
        assert torch.equal(table.initial_rows(start, stop), weight[start:stop])
    if init == "softmax":
        torch.testing.assert_close(weight.sum(dim=1), torch.ones(ROWS))
    else:
        want = math.sqrt(2.0 / (ROWS + 3))  # torch.nn.init's xavier std for [ROWS, 3]
        assert float(weight.std()) == pytest.approx(want, rel=0.01)
    assert not torch.equal(weight[:100], weight[ROWS_PER_DRAW : ROWS_PER_DRAW + 100])


def test_seeded_builds_repeat_and_other_seeds_differ() -> None:
    def build(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        table = IdTable(1000, 4)
        table.reset_parameters()
        return table.weight.detach()

    assert torch.equal(build(1), build(1))
    assert not torch.equal(build(1), build(2))


@pytest.mark.parametrize("name", registered_models())
def test_deferred_model_shards_hold_the_rows_a_filled_model_starts_with(
    toy: ToyGraph, name: str
) -> None:
    """Under deferred_tables no table is written, yet every shard holds its filled rows and the
    dense parameters are the same: the seeds are drawn in the same order."""
    filled = build(toy, name)
    with deferred_tables():
        deferred = build(toy, name)
    tables = {n: m for n, m in deferred.named_modules() if isinstance(m, IdTable)}
    assert tables and not any(t.filled for t in tables.values())
    with pytest.raises(RuntimeError, match="never filled"):
        next(iter(tables.values()))(torch.zeros(1, dtype=torch.long))
    for table_name, table in tables.items():
        whole = filled.get_submodule(table_name).weight.detach()
        for rank in range(3):
            shard = ShardedIdTable(table, rank, 3, group=None)
            rows = whole[rank * shard.block : (rank + 1) * shard.block]
            assert torch.equal(shard.weight.detach()[: len(rows)], rows)
    table_weights = {f"{n}.weight" for n in tables}
    for (n, p), q in zip(deferred.named_parameters(), filled.parameters()):
        if n not in table_weights:
            assert torch.equal(p, q), n


def test_sparse_table_gradients_hold_the_dense_gradient_rows() -> None:
    torch.manual_seed(0)
    tables = [IdTable(50, 4) for _ in range(2)]
    for t in tables:
        t.reset_parameters()
    tables[1].load_state_dict(tables[0].state_dict())
    sparse_table_gradients(tables[1])
    ids = torch.tensor([[3, 7, 3], [49, 0, 7]])
    probe = torch.randn(2, 3, 4)
    for t in tables:
        (t(ids) * probe).sum().backward()
    dense, sparse = tables[0].weight.grad, tables[1].weight.grad
    assert not dense.is_sparse and sparse.is_sparse
    assert sorted(sparse.coalesce().indices()[0].tolist()) == [0, 3, 7, 49]
    torch.testing.assert_close(sparse.to_dense(), dense)
