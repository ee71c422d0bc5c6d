"""The equal-time quality benchmark's parsing and selection (its runs are real trainings)."""

import json

import pytest

from benchmarks.bench_equal_time import _points, best_within, parse_variant


def test_parse_variant_keeps_bracketed_lists_whole():
    assert parse_variant("base=") == ("base", [])
    assert parse_variant("fast=train.sampler=labor,train.fanouts=[5,5],train.lr=2e-3") == (
        "fast", ["train.sampler=labor", "train.fanouts=[5,5]", "train.lr=2e-3"])
    with pytest.raises(ValueError, match="no name"):
        parse_variant("=train.lr=1")


def test_points_accumulate_training_time_and_best_respects_the_budget(tmp_path):
    rows = [
        {"epoch": 0, "epoch_time_s": 100.0, "train_edges_per_s": 10.0, "valid/recall@20": 0.10},
        {"epoch": 1, "epoch_time_s": 100.0, "train_edges_per_s": 10.0, "valid/recall@20": 0.30},
        {"epoch": 2, "epoch_time_s": 100.0, "train_edges_per_s": 10.0, "valid/recall@20": 0.20},
        {"done": True},
    ]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps(r) for r in rows))
    points = _points(metrics)
    assert [p["train_s"] for p in points] == [100.0, 200.0, 300.0]
    assert best_within(points, 150)["recall@20"] == 0.10
    assert best_within(points, 1000)["epoch"] == 1
    assert best_within(points, 50) is None
