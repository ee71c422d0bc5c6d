"""The runner's aggregation and the report files, with training runs faked (no Ray)."""

import json

import pytest

from sea_dist.bench import runner
from sea_dist.bench.measure import machine
from sea_dist.bench.report import write_results
from sea_dist.bench.roofline import peak_for, run_roofline
from sea_dist.bench.scenario import load_scenario
from sea_dist.config import SEACfg


def _record(epoch, workers, steps, elapsed=None, recall=None):
    # Per worker: 1000 edges/s on one worker, 800 on two (contention), 0.1 s per step of sync.
    per_worker = 1000.0 if workers == 1 else 800.0
    edges = steps * 100
    rec = {
        "epoch": epoch, "steps": steps, "epoch_time_s": edges / per_worker,
        "train_edges_per_s": per_worker + epoch,  # epochs differ a little: a spread to take
        "embedding_bytes_per_step": 1000.0 * (workers - 1), "dense_bytes_per_step": 500,
        "peak_rss_mb": 900.0, "elapsed_s": elapsed if elapsed is not None else epoch + 1.0,
        **{f"time_{t}_s": 0.1 for t in runner.TIMERS},
        "step_sizes": {"batch_size": 100, "negatives": 1, "input_nodes": 900, "input_items": 500,
                       "output_nodes": 250, "output_users": 100, "block_edges": 3000, "block_dst": 1100,
                       "item_graph_edges": 1500, "loss_items": 150},
    }
    if recall is not None:
        rec["valid/recall@20"] = recall
    return rec


class FakeRuns:
    def __init__(self):
        self.calls = []

    def train(self, label, workers, extra):
        self.calls.append((label, workers, extra))
        sets = dict(e.split("=", 1) for e in extra)
        epochs = int(sets["train.epochs"])
        steps = int(sets.get("train.max_steps_per_epoch", 10))
        if label.startswith("tta"):
            full = sets["train.mode"] == "full"
            curve = [0.01, 0.03, 0.05] if full else [0.02, 0.04, 0.045]
            history = [_record(e, workers, steps, elapsed=(e + 1) * (5.0 if full else 2.0), recall=curve[e])
                       for e in range(epochs)]
        else:
            history = [_record(e, workers, steps) for e in range(epochs)]
        report = {"peak_rss_mb_per_worker": [900.0] * workers, "valid": {"recall@20": 0.05}}
        return report, history


@pytest.fixture
def scenario():
    s, _ = load_scenario("tiktok")
    return s.model_copy(update={
        "throughput": s.throughput.model_copy(update={"warmup_epochs": 1, "repeats": 3,
                                                      "total_steps": 8, "steps_per_worker": 4}),
        "time_to_accuracy": s.time_to_accuracy.model_copy(update={"max_epochs": 3}),
    })


def test_throughput_plan_and_aggregation(scenario):
    runs = FakeRuns()
    tp = runner._throughput(runs, scenario, [1, 2])
    # strong: 8 steps on 1 worker, 4 per worker on 2; weak: 4 per worker -> (2, 4) is shared.
    assert [c[0] for c in runs.calls] == ["throughput-w1-s8", "throughput-w2-s4", "throughput-w1-s4"]
    row = tp["runs"][0]
    # Warm-up epoch 0 dropped: epochs 1..3 -> per-worker 1001, 1002, 1003.
    assert row["edges_per_s_per_worker"]["values"] == [1001.0, 1002.0, 1003.0]
    assert row["edges_per_s_per_worker"]["median"] == 1002.0
    two = tp["runs"][1]
    assert two["edges_per_s_total"]["median"] == 2 * 802.0
    assert two["bytes_per_step"]["total"]["median"] == 1500.0
    assert tp["strong"]["efficiency"][2] == pytest.approx(1604.0 / 1002.0 / 2)
    assert tp["weak"]["efficiency"][2] == pytest.approx(1604.0 / 1002.0 / 2)


def test_time_to_accuracy_auto_target(scenario):
    tta = runner._time_to_accuracy(FakeRuns(), scenario, [1, 2])
    # Bests: sampled 0.045, full 0.05 -> target 0.9 * 0.045 = 0.0405.
    assert tta["target"] == pytest.approx(0.0405)
    assert tta["runs"]["sampled"]["time_to_target_s"] == 6.0  # epoch 3 at 2 s per epoch
    assert tta["runs"]["full"]["time_to_target_s"] == 15.0
    assert tta["full_over_sampled"] == pytest.approx(2.5)


def test_report_files(tmp_path, scenario):
    runs = FakeRuns()
    peaks = {"cpu": [{"threads": 1, "gemm_flop_per_s": 50e9, "bandwidth_bytes_per_s": 10e9}],
             "cuda": None, "method": "fake"}

    def roofline(workers, kept):
        peak = peak_for(peaks, "cpu", 1)
        return run_roofline(kept, SEACfg(), {"image": 128, "audio": 128}, peak, workers, runner.TIMER_LABELS)

    results = {
        "scenario": "tiktok", "kind": "training", "description": "fake", "quick": True,
        "device": "cpu", "machine": {**machine(), "peaks": peaks}, "bench_wall_s": 1.0, "workers": [1, 2],
        "config": {"model": "sea", "mode": "sampled", "batch_size": 100, "fanouts": [10, 10]},
        "throughput": runner._throughput(runs, scenario, [1, 2], roofline),
        "time_to_accuracy": runner._time_to_accuracy(runs, scenario, [1, 2]),
    }
    write_results(tmp_path, results)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["logical_cores"] >= 1 and data["machine"]["versions"]["torch"]
    assert set(data["plots"]) == {"scaling.png", "time_breakdown.png", "time_to_accuracy.png"}
    for name in data["plots"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "results.md").read_text()
    assert "| strong | 2 | 4 |" in md and "time to target" in md
    # Every run against the limit: 6 timed phases, the forward-backward split into 4 counts.
    assert md.count("## Against the machine's limit") == 1 and md.count("**throughput-w") == 3
    x = data["throughput"]["runs"][0]["roofline"]
    assert [p["phase"] for p in x["phases"]] == ["sampling", "data movement", "forward-backward",
                                                 "estimator", "communication", "optimizer"]
    fb = x["phases"][2]
    assert x["counted"] and 0 < fb["fraction_of_limit"] < 1.5 and fb["bound"] in ("compute", "memory")
    assert "| *propagation over the blocks* |" in md
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_parse_workers():
    assert runner.parse_workers("4,1,2,2") == [1, 2, 4]
    assert runner.parse_workers(None) is None
    with pytest.raises(Exception, match="comma-separated"):
        runner.parse_workers("1,x")
    with pytest.raises(Exception, match=">= 1"):
        runner.parse_workers("0,1")


def test_time_to_accuracy_without_full_baseline(scenario):
    spec = scenario.time_to_accuracy.model_copy(update={"full_baseline": False})
    runs = FakeRuns()
    tta = runner._time_to_accuracy(runs, scenario.model_copy(update={"time_to_accuracy": spec}), [1, 2])
    assert [c[0] for c in runs.calls] == ["tta-sampled-w2"]
    assert tta["target"] == pytest.approx(0.9 * 0.045) and tta["full_over_sampled"] is None
