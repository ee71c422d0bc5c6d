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


def weighted_knn(weighted: list[tuple[float, np.ndarray]], k: int) -> np.ndarray:
    """``sum_m w_m S_m`` densely, from brute-force neighbours."""
    expected = np.zeros((len(weighted[0][1]),) * 2)
    for weight, feat in weighted:
        nbrs = brute_force_topk(feat, k)
        for i in range(len(feat)):
            expected[i, nbrs[i]] += weight / k
    return expected


def test_item_graph_rows_have_k_entries_and_combined_weights():
    rng = np.random.default_rng(3)
    image, text = rng.standard_normal((50, 8)), rng.standard_normal((50, 6))
    k = 4
    graph = build_item_graph({"image": image, "text": text}, weights=None, k=k, method="exact",
                             exact_max_items=1000)
    s = graph.to_torch().to_dense().numpy()
    np.testing.assert_allclose(s, weighted_knn([(0.1, image), (0.9, text)], k), rtol=1e-6)
    np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.diag(s), 1.0 / k, rtol=1e-6)  # self in every modality
    assert [(m["name"], m["weight"]) for m in graph.info["modalities"]] == [
        ("image", 0.1), ("text", 0.9)
    ]


def test_weights_go_by_name_not_position():
    rng = np.random.default_rng(7)
    image, audio = rng.standard_normal((40, 5)), rng.standard_normal((40, 7))
    expected = weighted_knn([(0.1, image), (0.9, audio)], 4)
    # The reference's weights whatever the order (the store used to be alphabetical).
    for features in ({"image": image, "audio": audio}, {"audio": audio, "image": image}):
        for weights in (None, {"image": 0.1}, {"audio": 0.9}, {"image": 0.1, "audio": 0.9}):
            graph = build_item_graph(features, weights, 4, "exact", 1000)
            np.testing.assert_allclose(graph.to_torch().to_dense().numpy(), expected, rtol=1e-6)
    swapped = build_item_graph({"image": image, "audio": audio}, {"image": 0.9}, 4, "exact", 1000)
    np.testing.assert_allclose(swapped.to_torch().to_dense().numpy(),
                               weighted_knn([(0.9, image), (0.1, audio)], 4), rtol=1e-6)


@pytest.mark.parametrize(("modalities", "named", "expected"), [
    (["image", "text"], None, {"image": 0.1, "text": 0.9}),
    (["audio", "image"], None, {"audio": 0.9, "image": 0.1}),
    (["image", "text", "audio"], None, {"image": 0.1, "text": 0.45, "audio": 0.45}),
    (["image"], None, {"image": 1.0}),
    (["visual", "acoustic"], None, {"visual": 0.5, "acoustic": 0.5}),
    (["image", "text", "audio"], {"text": 0.6, "image": 0.2},
     {"image": 0.2, "text": 0.6, "audio": 0.2}),
    (["image", "audio"], {}, {"image": 0.5, "audio": 0.5}),
    ([], None, {}),
])
def test_modality_weights(modalities, named, expected):
    weights = knn.modality_weights(modalities, named)
    assert list(weights) == modalities
    assert weights == pytest.approx(expected)


@pytest.mark.parametrize(("modalities", "named", "match"), [
    (["image", "audio"], {"text": 0.9}, r"^text not among the run's modalities \(image, audio\)$"),
    (["image", "audio"], {"image": 0.1, "audio": 0.5}, "sum to 1"),
    (["image"], {"image": 0.1}, "sum to 1"),
    (["image", "audio"], {"image": 0.7, "audio": 0.6}, "sum to 1"),
])
def test_modality_weights_are_refused(modalities, named, match):
    with pytest.raises(ValueError, match=match):
        knn.modality_weights(modalities, named)


def test_power_equals_dense_matrix_power():
    graph = build_item_graph({"image": np.random.default_rng(4).standard_normal((30, 5))}, None, 3,
                             "exact", 100)
    dense = graph.to_torch().to_dense().double()
    two = graph.power(2)
    np.testing.assert_allclose(two.to_torch().to_dense().numpy(), (dense @ dense).numpy(), rtol=1e-6)
    assert graph.power(2) is two  # computed once per graph: the loader and evaluation share it
    one = graph.power(1)
    assert one.indices is graph.indices and one.weights is graph.weights  # S itself, no copy
    computed = graph._power(1)
    for name in ("indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(one, name), getattr(computed, name))


def test_item_graph_from_its_arrays():
    graph = build_item_graph({"image": np.random.default_rng(4).standard_normal((30, 5))}, None, 3,
                             "exact", 100)
    arrays = {k: v.copy() for k, v in graph.to_arrays().items()}
    for v in arrays.values():
        v.setflags(write=False)
    clone = knn.ItemGraph.from_arrays(30, arrays, graph.info)
    assert clone.indices is arrays["indices"] and clone.info == graph.info
    np.testing.assert_array_equal(clone.to_torch().to_dense().numpy(), graph.to_torch().to_dense().numpy())
    with pytest.raises(ValueError, match="do not form a CSR matrix over 31 items"):
        knn.ItemGraph.from_arrays(31, arrays)


def test_ann_recall_is_measured_and_high():
    features = clustered(3000, 16, seed=5)
    graph = build_item_graph({"image": features}, None, 10, "auto", exact_max_items=1000)
    stats = graph.info["modalities"][0]
    assert graph.info["method"] == "ann" and stats["method"] == "ann-hnsw"
    assert 0.9 <= stats["recall"] <= 1.0
    # The measurement itself: exact neighbours have recall 1, random ones almost 0.
    exact = exact_knn(features, 10)
    assert knn_recall(features, exact, 200) == 1.0
    shuffled = np.concatenate([exact[:, :1], np.random.default_rng(0).integers(0, 3000, (3000, 9))], axis=1)
    assert knn_recall(features, shuffled, 200) < 0.05


def test_cache_is_keyed_and_reused(tmp_path):
    features = {"image": np.random.default_rng(6).standard_normal((40, 5)).astype(np.float32)}
    first = build_item_graph(features, None, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert first.info["modalities"][0]["cached"] is False
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["abc-image-m0-k4-exact.npz"]
    again = build_item_graph(features, None, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert again.info["modalities"][0]["cached"] is True
    np.testing.assert_array_equal(again.indices, first.indices)
    build_item_graph(features, None, 5, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert len(list(tmp_path.iterdir())) == 2  # another k, another entry
    (tmp_path / files[0]).write_bytes(b"not an npz")
    rebuilt = build_item_graph(features, None, 4, "exact", 100, cache_dir=tmp_path, cache_key="abc-image")
    assert rebuilt.info["modalities"][0]["cached"] is False
    np.testing.assert_array_equal(rebuilt.indices, first.indices)


@pytest.mark.parametrize("kwargs,match", [
    ({"k": 0}, "k must be"),
    ({"k": 41}, "k must be"),
    ({"method": "hnsw"}, "method must be"),
])
def test_bad_arguments(kwargs, match):
    args = {"weights": None, "k": 3, "method": "exact", "exact_max_items": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_item_graph({"image": np.ones((40, 2))}, **args)
