from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_reference import (
    AFTER_EPOCH,
    PATCHES,
    apply_patches,
    markdown,
    parse_reference_log,
    per_epoch_spread,
    user_graph_dict,
)

# Two epochs as the reference's trainer logs them (format of main_experiment_log/baby_log.log).
LOG = """\
08 Apr 14:41    INFO epoch 0 training [time: 23.04s, train loss: 344.9587]
08 Apr 14:41    INFO epoch 0 evaluating [time: 1.49s, valid_score: 0.051300]
08 Apr 14:41    INFO valid result:
recall@10: 0.0322    recall@20: 0.0513    ndcg@10: 0.0169    ndcg@20: 0.0217
08 Apr 14:41    INFO test result:
recall@10: 0.0316    recall@20: 0.0519    ndcg@10: 0.0165    ndcg@20: 0.0217
08 Apr 14:41    INFO \u2588\u2588 SEA--Best validation results updated!!!
08 Apr 14:41    INFO epoch 1 training [time: 17.49s, train loss: 271.8500]
08 Apr 14:42    INFO epoch 1 evaluating [time: 1.52s, valid_score: 0.059500]
08 Apr 14:42    INFO valid result:
recall@10: 0.0366    recall@20: 0.0595    ndcg@10: 0.0195    ndcg@20: 0.0253
08 Apr 14:42    INFO test result:
recall@10: 0.0376    recall@20: 0.0599    ndcg@10: 0.0202    ndcg@20: 0.0259
"""


def test_parse_reference_log_reads_each_epoch() -> None:
    epochs = parse_reference_log(LOG)
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert epochs[0]["epoch_time_s"] == 23.04 and epochs[0]["loss"] == 344.9587
    assert epochs[0]["valid/recall@20"] == 0.0513 and epochs[0]["test/recall@20"] == 0.0519
    assert epochs[1]["valid/ndcg@10"] == 0.0195 and epochs[1]["eval_time_s"] == 1.52


def test_parse_reference_log_keeps_an_unevaluated_last_epoch() -> None:
    cut = LOG + "08 Apr 14:43    INFO epoch 2 training [time: 18.00s, train loss: 250.0000]\n"
    epochs = parse_reference_log(cut)
    assert epochs[-1] == {"epoch": 2, "epoch_time_s": 18.0, "loss": 250.0}


def test_user_graph_counts_shared_training_items(tmp_path: Path) -> None:
    inter = tmp_path / "t.inter"
    # users 0 and 1 share items 0 and 1; user 2 shares item 1 with both; the valid row (x_label 1)
    # of user 2 on item 0 does not count.
    rows = ["0\t0\t0", "0\t1\t0", "1\t0\t0", "1\t1\t0", "2\t1\t0", "2\t0\t1", "3\t5\t0"]
    inter.write_text("userID\titemID\tx_label\n" + "\n".join(rows) + "\n")
    graph = user_graph_dict(inter)
    assert graph[0] == [[1, 2], [2.0, 1.0]]
    assert graph[2] == [[0, 1], [1.0, 1.0]]
    assert graph[3] == [[], []]


def test_patches_are_distinct_and_documented() -> None:
    assert len({(p.path, p.old) for p in PATCHES}) == len(PATCHES)
    assert all(p.count > 0 and p.why for p in PATCHES)


def test_markdown_has_a_row_per_seed_and_epoch() -> None:
    run: dict[str, Any] = {"seed": 1,
           "reference": {"epochs": [{"epoch": 0, "epoch_time_s": 40.0, "valid/recall@20": 0.05}]},
           "sea_dist": {"epochs": [{"epoch": 0, "epoch_time_s": 30.0, "valid/recall@20": 0.06},
                                   {"epoch": 1, "epoch_time_s": 31.0, "valid/recall@20": 0.07}]}}
    result = {"protocol": {"summary": "s"}, "machine": {"cpu": "c", "logical_cores": 2},
              "runs": [run]}
    first_table = markdown(result).split("\n\n")[2].splitlines()
    assert first_table[2:] == ["| 1 | 0 | 0.0500 | – | 0.0600 | – | – | 40.0 | – | 30.0 | – | – |",
                               "| 1 | 1 | – | – | 0.0700 | – | – | – | – | 31.0 | – | – |"]


def _seed(seed: int, ref: float, after: float, ours: float, sampled: float) -> dict[str, Any]:
    def side(recall: float, seconds: float) -> dict[str, Any]:
        return {"epochs": [{"epoch": 0, "epoch_time_s": seconds, "valid/recall@20": recall}]}

    return {"seed": seed, "reference": side(ref, 30.0), "reference_after_epoch": side(after, 30.0),
            "sea_dist": side(ours, 10.0), "sea_dist_sampled": side(sampled, 5.0)}


def test_spread_says_whether_each_side_is_inside_each_references_seeds() -> None:
    runs = [_seed(0, 0.05, 0.060, 0.060, 0.080), _seed(1, 0.06, 0.062, 0.065, 0.081),
            _seed(2, 0.07, 0.064, 0.070, 0.079)]
    result = {"protocol": {"summary": "s"}, "machine": {"cpu": "c", "logical_cores": 2},
              "runs": runs}
    spread = per_epoch_spread(result)
    assert spread[0]["sea_dist_inside_reference"] is True  # mean 0.065 within 0.05-0.07
    assert spread[0]["sea_dist_inside_reference_after_epoch"] is False  # above 0.060-0.064
    assert spread[0]["sea_dist_sampled_inside_reference"] is False  # mean 0.080 above it
    text = markdown(result)
    row = ("| 0 | 0.0600 ± 0.0100 | 0.0500-0.0700 | 0.0620 ± 0.0020 | 0.0600-0.0640 "
           "| 0.0650 ± 0.0050 | 0.0800 ± 0.0010 | – | yes / no | no / no | – / – |")
    assert row in text
    assert "| sea_dist | 3 | 10.0 | 10.0 | 3.00 |" in text  # 3x faster than the reference
    assert "| sea_dist_sampled | 3 | 5.0 | 5.0 | 6.00 |" in text


def test_after_epoch_patch_refreshes_the_ranking_embeddings(tmp_path: Path) -> None:
    trainer = tmp_path / "common" / "trainer.py"
    trainer.parent.mkdir()
    trainer.write_text("    def evaluate(self, eval_data):\n        self.model.eval()\n"
                       "        scores = self.model.full_sort_predict(eval_data)\n")
    apply_patches(tmp_path, (AFTER_EPOCH,))
    lines = trainer.read_text().splitlines()
    assert lines[1:3] == ["        self.model.eval()", "        self.model.forward([torch.zeros("
                          "1, dtype=torch.long, device=self.device) for _ in range(3)])"]
    trainer.write_text("        self.model.eval()\n" * 2)  # changed upstream: refused
    with pytest.raises(RuntimeError, match="expected 1 .* found 2"):
        apply_patches(tmp_path, (AFTER_EPOCH,))
