"""The synthetic generator: exact sizes, MMRec split, power laws, determinism, useful features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sea_dist.cli import main
from sea_dist.data.store import Store
from sea_dist.data.synthetic import generate_store


def _columns(store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    table = store.interactions()
    return (
        table["user_id"].to_numpy().astype(np.int64),
        table["item_id"].to_numpy().astype(np.int64),
        table["split"].to_numpy(),
    )


@pytest.fixture(scope="module")
def medium_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return generate_store(
        tmp_path_factory.mktemp("medium") / "store",
        6000,
        3000,
        90_000,
        {"image": 64, "text": 48},
        seed=3,
        progress=False,
    )


def test_tiny_store_has_exact_sizes_and_valid_ids(tiny_store: Store) -> None:
    users, items, split = _columns(tiny_store)
    assert (tiny_store.num_users, tiny_store.num_items) == (300, 200)
    assert len(users) == tiny_store.meta["num_interactions"] == 4000
    assert tiny_store.modalities == {"image": 32, "text": 24}
    assert np.bincount(users, minlength=300).min() >= 1  # every user interacts
    assert items.min() >= 0 and items.max() < 200
    assert len(np.unique(users * 200 + items)) == 4000  # no duplicate pairs
    assert tiny_store.meta["splits"] == {
        name: int((split == k).sum()) for k, name in enumerate(("train", "valid", "test"))
    }
    for name, width in tiny_store.modalities.items():
        features = tiny_store.features(name)
        assert features.shape == (200, width) and features.dtype == np.float32
        assert np.isfinite(features).all()


def test_split_follows_the_mmrec_rule_per_user(medium_store: Store) -> None:
    users, _, split = _columns(medium_store)
    counts = np.stack(
        [np.bincount(users[split == k], minlength=medium_store.num_users) for k in range(3)], axis=1
    )
    n = counts.sum(axis=1)
    held = np.where(n < 10, np.minimum(n - 1, 2), n // 5)
    np.testing.assert_array_equal(counts[:, 1], held // 2)
    np.testing.assert_array_equal(counts[:, 2], held - held // 2)
    assert (n >= 10).any() and (n < 10).any()


def test_popularity_and_activity_are_heavy_tailed(medium_store: Store) -> None:
    users, items, _ = _columns(medium_store)
    item_degree = np.sort(np.bincount(items, minlength=medium_store.num_items))[::-1]
    user_degree = np.bincount(users, minlength=medium_store.num_users)
    top_share = item_degree[: len(item_degree) // 10].sum() / len(items)
    assert top_share > 0.35  # uniform popularity would give 0.10
    assert user_degree.min() >= 5  # minimum degree clip(E / 2U, 1, 5) = 5
    assert user_degree.max() > 8 * np.median(user_degree)
    assert medium_store.meta["synthetic"]["max_user_degree"] == user_degree.max()


def _recall_at_20(scores: np.ndarray, seen: np.ndarray, truth: np.ndarray) -> float:
    scores = np.where(seen, -np.inf, scores)
    top = np.argpartition(-scores, 20, axis=1)[:, :20]
    hits = np.take_along_axis(truth, top, axis=1).sum(axis=1)
    return float((hits / truth.sum(axis=1)).mean())


def test_features_predict_held_out_items(medium_store: Store) -> None:
    """Scoring items by feature similarity to a user's training items beats popularity,
    and both modalities together beat either alone: each carries a different part."""
    users, items, split = _columns(medium_store)
    num_users, num_items = medium_store.num_users, medium_store.num_items
    seen = np.zeros((num_users, num_items), dtype=bool)
    seen[users[split == 0], items[split == 0]] = True
    truth = np.zeros_like(seen)
    truth[users[split == 2], items[split == 2]] = True
    evaluated = truth.any(axis=1)
    seen, truth = seen[evaluated], truth[evaluated]
    popularity = np.tile(seen.sum(axis=0).astype(float), (len(seen), 1))

    def profile_recall(features: np.ndarray) -> float:
        features = features - features.mean(axis=0)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        return _recall_at_20((seen @ features) @ features.T, seen, truth)

    image = np.asarray(medium_store.features("image"), dtype=np.float64)
    text = np.asarray(medium_store.features("text"), dtype=np.float64)
    recall = {
        "pop": _recall_at_20(popularity, seen, truth),
        "image": profile_recall(image),
        "text": profile_recall(text),
        "both": profile_recall(np.hstack([image, text])),
    }
    assert recall["image"] > 1.3 * recall["pop"], recall
    assert recall["text"] > 1.3 * recall["pop"], recall
    assert recall["both"] > max(recall["image"], recall["text"]), recall


def test_same_seed_same_store_other_seed_other_store(tiny_store: Store, tmp_path: Path) -> None:
    args = dict(
        num_users=300,
        num_items=200,
        num_interactions=4000,
        modalities={"image": 32, "text": 24},
        progress=False,
    )
    again = generate_store(tmp_path / "again", seed=0, **args)
    assert again.meta["checksums"] == tiny_store.meta["checksums"]
    assert again.checksum == tiny_store.checksum
    other = generate_store(tmp_path / "other", seed=1, **args)
    for name, digest in other.meta["checksums"].items():
        assert digest != tiny_store.meta["checksums"][name], name


def test_adding_a_modality_keeps_the_interactions(tiny_store: Store, tmp_path: Path) -> None:
    store = generate_store(
        tmp_path / "three",
        300,
        200,
        4000,
        {"image": 32, "text": 24, "audio": 8},
        seed=0,
        progress=False,
    )
    assert store.interactions().equals(tiny_store.interactions())
    assert store.modalities == {"image": 32, "text": 24, "audio": 8}


def test_cli_generate_float16_and_inspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    code = main(
        [
            "data",
            "generate",
            str(out),
            "--users",
            "500",
            "--items",
            "400",
            "--interactions",
            "5000",
            "--modalities",
            "image:16",
            "--seed",
            "7",
            "--feature-dtype",
            "float16",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "500 users, 400 items, 5000 interactions" in capsys.readouterr().out
    assert main(["data", "inspect", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["features"]["image"]["shape"] == [400, 16]
    assert stats["features"]["image"]["dtype"] == "float16"
    assert stats["num_interactions"] == 5000
    assert stats["cold_start"]["users_without_interactions"] == 0
