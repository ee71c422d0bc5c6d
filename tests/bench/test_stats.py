"""Aggregation math with hand-computed numbers."""

import math

import pytest

from sea_dist.bench import stats


def test_spread_odd_count():
    s = stats.spread([3.0, 1.0, 2.0, 10.0, 4.0])
    assert s["median"] == 3.0
    assert (s["min"], s["max"]) == (1.0, 10.0)
    # numpy linear interpolation on sorted [1, 2, 3, 4, 10]: q1 at index 1, q3 at index 3.
    assert (s["q1"], s["q3"], s["iqr"]) == (2.0, 4.0, 2.0)
    assert s["n"] == 5


def test_spread_even_count_interpolates():
    s = stats.spread([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5
    assert s["q1"] == pytest.approx(1.75)  # index 0.75 between 1 and 2
    assert s["q3"] == pytest.approx(3.25)


def test_spread_empty_is_nan():
    s = stats.spread([])
    assert s["n"] == 0 and math.isnan(s["median"]) and math.isnan(s["iqr"])


def test_strong_scaling_efficiency():
    # Fixed total work: 1 worker 1000 edges/s, 2 workers 1800 (speedup 1.8), 4 workers 3000.
    eff = stats.scaling_efficiency({1: 1000.0, 2: 1800.0, 4: 3000.0})
    assert eff == {1: 1.0, 2: pytest.approx(0.9), 4: pytest.approx(0.75)}
    assert stats.speedup({1: 1000.0, 2: 1800.0}) == {1: 1.0, 2: pytest.approx(1.8)}


def test_weak_scaling_efficiency_from_epoch_times():
    # Fixed work per worker (8 steps x 1024 edges): epoch 2.0 s on 1 worker, 2.5 s on 2.
    work = 8 * 1024
    throughput = {1: work / 2.0, 2: 2 * work / 2.5}
    assert stats.scaling_efficiency(throughput)[2] == pytest.approx(2.0 / 2.5)


def test_efficiency_relative_to_smallest_count():
    # Baseline 2 workers: 4 workers at 1.5x the throughput -> 1.5 / 2 = 0.75.
    assert stats.scaling_efficiency({2: 100.0, 4: 150.0}) == {2: 1.0, 4: pytest.approx(0.75)}
    assert math.isnan(stats.scaling_efficiency({1: 0.0, 2: 5.0})[2])


def test_time_to_target():
    curve = [(1.0, 0.01), (2.5, 0.04), (4.0, 0.03), (6.0, 0.05)]
    assert stats.time_to_target(curve, 0.035) == 2.5
    assert stats.time_to_target(curve, 0.05) == 6.0
    assert stats.time_to_target(curve, 0.06) is None
    assert stats.time_to_target([(1.0, math.nan), (2.0, 0.1)], 0.05) == 2.0


def test_auto_target_is_reached_by_every_curve():
    a = [(1.0, 0.02), (2.0, 0.05)]
    b = [(3.0, 0.01), (9.0, 0.04)]
    target = stats.auto_target([a, b])
    assert target == pytest.approx(0.9 * 0.04)
    assert stats.time_to_target(a, target) == 2.0 and stats.time_to_target(b, target) == 9.0
