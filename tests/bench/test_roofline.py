"""The cost model against hand-computed counts, the peaks, and the phase table's arithmetic."""

import math

import pytest
import torch

from sea_dist.bench import roofline, runner
from sea_dist.bench.roofline import Work, measure_peaks, peak_for, phase_table, step_work
from sea_dist.config import LightGCNCfg, SEACfg
from sea_dist.graph.batch import Block, MiniBatch
from sea_dist.models.sea import SEA, SEAParams

# Two modalities (raw widths 4 and 6), H 3, d 2, SoloSim heads 2 -> 2 -> 2, CLUB 2 -> 1 -> 2.
CFG = SEACfg(embedding_dim=2, num_layers=1, feature_hidden=3, proj_hidden=2, proj_dim=2, mi_dim=2,
             club_hidden=1, estimator_steps=3)
DIMS = {"image": 4, "text": 6}
SIZES = {"batch_size": 2, "negatives": 1, "input_nodes": 5, "input_items": 3, "output_nodes": 4,
         "output_users": 2, "block_edges": 6, "block_dst": 4, "item_graph_edges": 2, "loss_items": 2}


def test_minibatch_sizes():
    # Users 0..2, items 3..6 (global ids). One block: 5 sources, the first 3 are destinations.
    src = torch.tensor([0, 3, 1, 4, 5])
    block = Block.from_edges(src, 3, torch.tensor([1, 3, 4, 0, 2]), torch.tensor([0, 0, 1, 2, 2]),
                             torch.ones(5))
    hop = Block.from_edges(src[:3], 3, torch.tensor([1, 1]), torch.tensor([1, 1]), torch.ones(2))
    batch = MiniBatch(blocks=[block], input_nodes=src, output_nodes=src[:3], users=torch.tensor([0, 2]),
                      pos_items=torch.tensor([1, 1]), neg_items=torch.tensor([[1], [1]]),
                      loss_items=torch.tensor([1]), num_users=3, item_graph=hop)
    assert batch.sizes() == {"batch_size": 2, "negatives": 1, "input_nodes": 5, "input_items": 3,
                             "output_nodes": 3, "output_users": 2, "block_edges": 5, "block_dst": 3,
                             "item_graph_edges": 1,  # the duplicate edge coalesces
                             "loss_items": 1}


def test_sea_counts_by_hand():
    work = step_work(CFG, DIMS, SIZES, sync_bytes=500.0, world=2)
    # inputs, FLOP: 2 map + 3 lin1 + 3 lin2 on 3 items: image 2*96 + 3*72 + 3*36, text 2*216 + 3*108 + 3*36
    assert work["inputs"].flops == 516 + 864
    # bytes: 2 reads of 2 users x 2 tables x 2 wide; Linear 4(n in + in out + n out) x its factor
    assert work["inputs"].bytes == 64 + (2 * 160 + 3 * 132 + 3 * 84) + (2 * 288 + 3 * 180 + 3 * 84)
    # propagation at W = 4: 2 x (2 E W) FLOP; 2 x (E (12 + 16) + 4 D W) bytes
    assert (work["propagation"].flops, work["propagation"].bytes) == (96, 464)
    assert (work["item_hop"].flops, work["item_hop"].bytes) == (32, 240)
    # losses, FLOP (a Linear on 2 rows: 4 in out): heads 3 (16 + 16 + 16) + 3 (24 + 16 + 16),
    # projections 3 (16 + 16) + 3 (24 + 24), CLUB bound 2 modalities x 3 x 2 nets (8 + 8),
    # InfoNCE 3 x 2 N^2 P_d = 48, BPR 3 x 2 B (1 + K) W = 96
    assert work["losses"].flops == 144 + 168 + 96 + 144 + 192 + 48 + 96
    # estimator: 3 steps x (2 pairs x 2 nets x (2 x 8 + 3 x 8) FLOP + Adam 10 x 28 params)
    assert work["estimator"].flops == 3 * (160 + 280)
    # bytes: 3 x (fits 640 + Adam 28 x 28 + all-reduce 2 (1/2) 4 x 28)
    assert work["estimator"].bytes == 3 * (640 + 784 + 112)
    assert work["sync"] == Work(0.0, 500.0)
    # optimizer: 196 dense parameters + touched rows 2 users x 2 x 2 + 2 output users x 2 weights
    assert work["optimizer"] == Work(10 * 208, 28 * 208)


def test_dense_and_estimator_params_match_the_model():
    params = SEAParams(embedding_dim=2, num_layers=1, feature_hidden=3, proj_hidden=2, proj_dim=2,
                       mi_dim=2, club_hidden=1)
    model = SEA(7, 5, DIMS, params)
    tables = {id(p) for p in model.id_tables()}
    dense = sum(p.numel() for p in model.model_parameters() if id(p) not in tables)
    assert roofline.sea_dense_params(CFG, DIMS) == dense == 196
    assert roofline.sea_estimator_params(CFG, DIMS) == sum(p.numel() for p in model.estimator_parameters())


def test_lightgcn_and_uncounted_models():
    work = step_work(LightGCNCfg(embedding_dim=2, num_layers=1), {}, SIZES)
    assert work["propagation"].flops == 2 * 2 * 6 * 2 and work["estimator"] == Work()
    assert work["optimizer"].bytes == 28 * 5 * 2
    assert step_work(SEACfg(name="sand"), DIMS, SIZES)["estimator"] == Work()  # no CLUB fit
    from sea_dist.config import VBPRCfg

    assert step_work(VBPRCfg(), DIMS, SIZES) is None


def test_phase_table_fractions_and_bounds():
    peak = {"where": "test", "gemm_flop_per_s": 100e9, "bandwidth_bytes_per_s": 10e9}
    work = {"inputs": Work(6e8, 1e8), "propagation": Work(4e8, 4e8), "item_hop": Work(),
            "losses": Work(), "estimator": Work(1e6, 1e9), "sync": Work(0.0, 0.0),
            "optimizer": Work(1e6, 2e7)}
    seconds = {"sample": 0.5, "move": 0.0, "forward_backward": 1.0, "sync": 0.1, "estimator": 2.0,
               "optimizer": 0.4}
    table = phase_table(work, seconds, epoch_seconds=4.0, steps=10, peak=peak, labels=runner.TIMER_LABELS)
    rows = {p["phase"]: p for p in table["phases"]}
    fb = rows["forward-backward"]
    # 10 steps x 1 GFLOP in 1 s = 10 GFLOP/s (0.1 of compute); 5 GB/s (0.5 of memory): memory-bound
    assert fb["flop_per_s"] == pytest.approx(10e9) and fb["bytes_per_s"] == pytest.approx(5e9)
    assert fb["fraction_of_limit"] == pytest.approx(0.5) and fb["bound"] == "memory"
    assert fb["share"] == pytest.approx(0.25)
    assert rows["estimator"]["fraction_of_limit"] == pytest.approx(0.5) and rows["estimator"]["bound"] == "memory"
    assert rows["communication"]["fraction_of_limit"] is None  # no bytes: nothing to hold it to
    assert "flops_per_step" not in rows["sampling"]
    assert [c["component"] for c in table["components"]] == ["inputs", "propagation", "item_hop", "losses"]
    assert table["components"][1]["ideal_s_per_step"] == pytest.approx(0.04)  # 4e8 bytes / 10 GB/s
    assert table["step_s"] == pytest.approx(0.4)


def test_measure_peaks_small():
    peaks = measure_peaks([1, 2], cuda=False, cpu_n=128, cpu_elements=2**16)
    assert [p["threads"] for p in peaks["cpu"]] == [1, 2] and peaks["cuda"] is None
    for p in peaks["cpu"]:
        assert 1e6 < p["gemm_flop_per_s"] < 1e14 and 1e6 < p["bandwidth_bytes_per_s"] < 1e13
    assert peak_for(peaks, "cpu", 1)["threads"] == 1 and peak_for(peaks, "cpu", 8)["threads"] == 2
    with pytest.raises(ValueError, match="CUDA"):
        peak_for(peaks, "cuda", 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_peaks_cuda():
    peaks = measure_peaks([1], cpu_n=128, cpu_elements=2**16, cuda_n=2048, cuda_elements=2**24)
    gpu = peaks["cuda"]
    assert gpu["gemm_flop_per_s"] > 1e11 and gpu["bandwidth_bytes_per_s"] > 1e10
    assert math.isfinite(peak_for(peaks, "cuda", 1)["gemm_flop_per_s"])
