"""Sampler and evaluation throughput, stand-in features: real code on tiny data, no Ray."""

import numpy as np
import pytest
import torch

from sea_dist.bench.data import prepare_scenario_data, standin_features
from sea_dist.bench.measure import eval_throughput, sampler_throughput
from sea_dist.bench.scenario import DataSpec
from sea_dist.eval.evaluator import Evaluator
from sea_dist.graph.build import build_graph


def test_sampler_throughput(tiny_store):
    graph = build_graph(tiny_store.num_users, tiny_store.num_items, *tiny_store.edges(0))
    features = {m: tiny_store.features(m) for m in tiny_store.modalities}
    out = sampler_throughput(graph, None, features, fanouts=[5, 5], num_layers=2, item_hops=0,
                             batch_size=64, num_negatives=1, warmup=1, repeats=3, steps=20)
    # 20-step windows outlast one epoch (~50 batches of 64 here): the loader is re-entered.
    s = out["seed_edges_per_s"]
    assert s["n"] == 3 and 0 < s["min"] <= s["median"] <= s["max"]
    assert out["mean_input_nodes"] > 64


def test_eval_throughput(tiny_store):
    evaluator = Evaluator(tiny_store.num_users, tiny_store.num_items, train=tiny_store.edges(0),
                          splits={"valid": tiny_store.edges(1)}, ks=[10, 20])
    users, items = torch.randn(tiny_store.num_users, 8), torch.randn(tiny_store.num_items, 8)
    out = eval_throughput(evaluator, users, items, split="valid", warmup=1, repeats=2)
    assert out["users"] == len(evaluator.users("valid"))
    assert out["users_per_s"]["n"] == 2 and out["users_per_s"]["median"] > 0
    assert out["pairs_per_s"]["median"] == pytest.approx(out["users_per_s"]["median"] * tiny_store.num_items)
    sampled = eval_throughput(evaluator, users, items, split="valid", warmup=0, repeats=1, users_sample=10)
    assert sampled["users"] == 10


def test_standin_features_follow_interactions():
    users = np.array([0, 1, 0, 1, 2])
    items = np.array([0, 0, 1, 1, 2])
    feats = standin_features(users, items, num_users=3, num_items=4, width=16, seed=0)
    assert feats.shape == (4, 16) and feats.dtype == np.float32 and np.isfinite(feats).all()
    cos = feats @ feats.T / np.outer(np.linalg.norm(feats, axis=1), np.linalg.norm(feats, axis=1))
    # Items 0 and 1 share their users; item 2 shares none with them.
    assert cos[0, 1] > cos[0, 2]


def test_standin_copy_imports(tmp_path):
    src = tmp_path / "toy"
    src.mkdir()
    rows = ["userID\titemID\tx_label"] + [f"{u}\t{i}\t{0 if (u + i) % 5 else 1}"
                                          for u in range(20) for i in range(u % 7, 30, 3)]
    (src / "toy.inter").write_text("\n".join(rows) + "\n")
    spec = DataSpec(path=str(src), standin_features={"image": 8, "text": 4})
    out = prepare_scenario_data(spec, tmp_path / "scenario.yaml", tmp_path / "cache")
    assert out != src and (out / "toy.inter").is_symlink()
    assert np.load(out / "image_feat.npy").shape == (30, 8)
    assert prepare_scenario_data(spec, tmp_path / "scenario.yaml", tmp_path / "cache") == out  # cached
    from sea_dist.data.store import resolve_store

    store = resolve_store(out, tmp_path / "cache")
    assert list(store.modalities) == ["image", "text"]
