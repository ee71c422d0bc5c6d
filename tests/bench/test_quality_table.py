import json
from pathlib import Path

from benchmarks.quality_table import seed_table, table


def _report(path: Path, recall20: float, best_epoch: int) -> None:
    path.mkdir(parents=True)
    test = {"recall@10": 0.01, "ndcg@10": 0.02, "recall@20": recall20, "ndcg@20": 0.03}
    path.joinpath("report.json").write_text(json.dumps(
        {"model": "sea", "test": test, "best_epoch": best_epoch, "epochs_run": 10, "wall_time_s": 50.0}))


def test_tables_list_runs_and_pool_seed_repeats(tmp_path: Path) -> None:
    _report(tmp_path / "sea", 0.08, 3)
    _report(tmp_path / "sea_seed1", 0.10, 5)
    _report(tmp_path / "sea_seed2", 0.09, 4)
    _report(tmp_path / "lightgcn", 0.07, 9)  # one seed only: no spread to report
    rows = table([tmp_path]).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| lightgcn", "| sea", "| sea_seed1", "| sea_seed2"]
    assert "| 0.0800 |" in rows[1] and rows[1].endswith("| 5 |")
    pooled = seed_table([tmp_path]).splitlines()[2:]
    assert len(pooled) == 1
    cells = [c.strip() for c in pooled[0].strip("|").split("|")]
    assert cells[:2] == ["sea", "3"]
    assert cells[4] == "0.0900 ± 0.0100"  # recall@20: mean and sample std of 0.08, 0.10, 0.09
    assert cells[-1] == "3, 5, 4"
