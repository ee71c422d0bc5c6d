import numpy as np
import pytest

from sea_dist.graph import knn
from sea_dist.graph.knn import ann_knn, build_item_graph, exact_knn, knn_recall


def brute_force_topk(features: np.ndarray, k: int) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def clustered(num_items: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(num_items // 50, 2), dim))
    return (centres[rng.integers(len(centres), size=num_items)] + 0.5 * rng.standard_normal((num_items, dim))).astype(np.float32)


@pytest.mark.parametrize("block_elements,query_chunk", [(1 << 26, 4096), (7 * 13, 13)])
def test_exact_knn_equals_brute_force(monkeypatch, block_elements, query_chunk):
    # Tiny chunks exercise the running top-k across query and key chunks.
    monkeypatch.setattr(knn, "_BLOCK_ELEMENTS", block_elements)
    monkeypatch.setattr(knn, "_QUERY_CHUNK", query_chunk)
    features = np.random.default_rng(1).standard_normal((97, 9))
    got = exact_knn(features.astype(np.float16), 5)  # float16 input, as tiktok's features
    want = brute_force_topk(features.astype(np.float16).astype(np.float64), 5)
    np.testing.assert_array_equal(got, want)
    assert (got[:, 0] == np.arange(97)).all()


def test_self_is_kept_for_duplicate_and_zero_rows():
    features = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
    features[5:12] = features[4]  # eight identical rows, more than k
    features[15] = 0.0
    for nbrs in (exact_knn(features, 3), ann_knn(features, 3)):
        assert (nbrs[:, 0] == np.arange(20)).all()
        assert all(len(set(row)) == 3 for row in nbrs.tolist())


def test_item_graph_rows_have_k_entries_and_combined_weights():
    rng = np.random.default_rng(3)
    image, text = rng.standard_normal((50, 8)), rng.standard_normal((50, 6))
    k = 4
    graph = build_item_graph([image, text], first_modality_weight=0.1, k=k, method="exact",
                             exact_max_items=1000)
    s = graph.to_torch().to_dense().numpy()
    expected = np.zeros((50, 50))
    for weight, feat in ((0.1, image), (0.9, text)):
        nbrs = brute_force_topk(feat, k)
        for i in range(50):
            expected[i, nbrs[i]] += weight / k
    np.testing.assert_allclose(s, expected, rtol=1e-6)
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.diag(s), 1.0 / k, rtol=1e-6)  # self in every modality
    three = build_item_graph([image, text, image], 0.2, k, "exact", 1000)
    assert [m["weight"] for m in three.info["modalities"]] == pytest.approx([0.2, 0.4, 0.4])


def test_power_equals_dense_matrix_power():
    graph = build_item_graph([np.random.default_rng(4).standard_normal((30, 5))], 0.1, 3, "exact", 100)
    dense = graph.to_torch().to_dense().double()
    two = graph.power(2)
    np.testing.assert_allclose(two.to_torch().to_dense().numpy(), (dense @ dense).numpy(), rtol=1e-6)
    assert graph.power(1).nnz == graph.nnz


def test_ann_recall_is_measured_and_high():
    features = clustered(3000, 16, seed=5)
    graph = build_item_graph([features], 0.1, 10, "auto", exact_max_items=1000)
    stats = graph.info["modalities"][0]
    assert graph.info["method"] == "ann" and stats["method"] == "ann-hnsw"
    assert 0.9 <= stats["recall"] <= 1.0
    # The measurement itself: exact neighbours have recall 1, random ones almost 0.
    exact = exact_knn(features, 10)
    assert knn_recall(features, exact, 200) == 1.0
    shuffled = np.concatenate([exact[:, :1], np.random.default_rng(0).integers(0, 3000, (3000, 9))], axis=1)
    assert knn_recall(features, shuffled, 200) < 0.05


def test_cache_is_keyed_and_reused(tmp_path):
    features = [np.random.default_rng(6).standard_normal((40, 5)).astype(np.float32)]
    first = build_item_graph(features, 0.1, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert first.info["modalities"][0]["cached"] is False
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["abc-image-m0-k4-exact.npz"]
    again = build_item_graph(features, 0.1, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert again.info["modalities"][0]["cached"] is True
    np.testing.assert_array_equal(again.indices, first.indices)
    build_item_graph(features, 0.1, 5, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert len(list(tmp_path.iterdir())) == 2  # another k, another entry
    (tmp_path / files[0]).write_bytes(b"not an npz")
    rebuilt = build_item_graph(features, 0.1, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert rebuilt.info["modalities"][0]["cached"] is False
    np.testing.assert_array_equal(rebuilt.indices, first.indices)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "k must be"),
    ({"k": 41}, "k must be"),
    ({"method": "hnsw"}, "method must be"),
])
def test_bad_arguments(kwargs, match):
    args = {"first_modality_weight": 0.1, "k": 3, "method": "exact", "exact_max_items": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_item_graph([np.ones((40, 2))], **args)
