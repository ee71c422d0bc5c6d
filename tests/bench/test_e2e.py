"""Each shipped scenario end to end: ``sea-dist bench NAME --quick`` on a real local Ray cluster.

Each takes minutes on 2 cores (several Ray Train runs), hence ``slow``.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# The bench subprocess's own 1200 s limit fires first, with its stderr in the failure.
pytestmark = pytest.mark.timeout(1500)

ROOT = Path(__file__).resolve().parents[2]
SEA_DIST = str(Path(sys.executable).with_name("sea-dist"))


def bench(name: str, out: Path, *args: str) -> dict:
    cmd = [SEA_DIST, "--log-level", "WARNING", "bench", name, "--quick", "--out", str(out),
           "--set", f"data.cache_dir={out.parent / 'cache'}", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def check_training(results: dict, out: Path, workers: list[int], full_baseline: bool = True) -> None:
    assert results["kind"] == "training" and results["workers"] == workers
    tp = results["throughput"]
    for row in tp["runs"]:
        assert row["edges_per_s_total"]["median"] > 0
        assert row["edges_per_s_total"]["n"] == tp["repeats"]
        assert row["edges_per_s_total"]["min"] <= row["edges_per_s_total"]["median"] <= row["edges_per_s_total"]["max"]
        assert len(row["peak_rss_mb_per_worker"]) == row["workers"]
        assert set(row["time_s"]) == {"sampling", "data movement", "forward-backward", "communication",
                                      "estimator", "optimizer"}
        check_roofline(row["roofline"])
    for regime in ("strong", "weak"):
        assert set(map(int, tp[regime]["efficiency"])) == set(workers)
        assert tp[regime]["efficiency"][str(min(workers))] == 1.0
    assert results["sampler"]["seed_edges_per_s"]["median"] > 0
    assert results["eval"]["users_per_s"]["median"] > 0
    assert 0 < results["eval"]["roofline"]["fraction_of_gemm_peak"] < 1.5
    tta = results.get("time_to_accuracy")
    if tta is None:  # the scenario measures throughput only
        return
    assert set(tta["runs"]) == ({"sampled", "full"} if full_baseline else {"sampled"})
    if full_baseline:
        assert tta["runs"]["full"]["workers"] == 1
    for run in tta["runs"].values():
        assert len(run["elapsed_s"]) == tta["max_epochs"]
        assert run["elapsed_s"] == sorted(run["elapsed_s"])
    assert results["machine"]["versions"]["dgl"] == "2.1.0"
    for plot in results["plots"]:
        assert (out / plot).stat().st_size > 1000
    assert "## Scaling" in (out / "results.md").read_text()
    assert "## Against the machine's limit" in (out / "results.md").read_text()


def check_roofline(x: dict) -> None:
    """Counted phases: positive rates, each below 1.5x the measured peak (noise, not physics)."""
    assert x["counted"] and x["step_sizes"]["input_nodes"] > x["step_sizes"]["batch_size"]
    for p in x["phases"]:
        if p["phase"] in ("forward-backward", "optimizer"):
            assert p["flops_per_step"] > 0 and p["bytes_per_step"] > 0
            assert 0 < p["fraction_of_limit"] < 1.5 and p["bound"] in ("compute", "memory")
    assert 0 < sum(p["share"] for p in x["phases"]) <= 1.01
    assert all(c["ideal_s_per_step"] > 0 for c in x["components"] if c["component"] != "item_hop")


@pytest.mark.slow
def test_tiktok_quick(tmp_path):
    out = tmp_path / "tiktok"
    check_training(bench("tiktok", out, "--workers", "1,2"), out, [1, 2])


@pytest.mark.slow
def test_gowalla_quick(tmp_path):
    out = tmp_path / "gowalla"
    results = bench("gowalla", out, "--workers", "2")
    check_training(results, out, [2], full_baseline=False)
    assert "standin" in results["config"]["data"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["synth_100k", "synth_1m"])
def test_synthetic_quick(tmp_path, name):
    out = tmp_path / name
    check_training(bench(name, out, "--workers", "1,2"), out, [1, 2], full_baseline=False)


@pytest.mark.slow
def test_million_epoch_quick(tmp_path):
    out = tmp_path / "million_epoch"
    results = bench("million_epoch", out)
    check_training(results, out, [1])
    assert "time_to_accuracy" not in results
    assert (results["config"]["sampler"], results["config"]["item_fanout"]) == ("labor", 2)


@pytest.mark.slow
def test_million_stages_quick(tmp_path):
    out = tmp_path / "million"
    results = bench("million", out)
    assert [s["stage"] for s in results["stages"]] == [
        "generate", "export", "import", "graph", "knn", "partition", "train", "evaluate"]
    for stage in results["stages"]:
        assert stage["seconds"] > 0 and stage["peak_rss_mib"] > 0
    check_roofline(next(s for s in results["stages"] if s["stage"] == "train")["roofline"])
    train = next(s for s in results["stages"] if s["stage"] == "train")["notes_json"]
    assert train["steps_per_worker"] == 3 and len(train["worker_peak_rss_mb"]) == 2
    evaluate = next(s for s in results["stages"] if s["stage"] == "evaluate")["notes_json"]
    assert evaluate["users"] == 200
    assert not (out / "work").exists()  # data removed unless keep_data
    assert "| train |" in (out / "results.md").read_text()
