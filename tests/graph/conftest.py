"""Small random user-item graphs and item features for the graph-layer tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pv
import pytest
import torch

from sea_dist.graph.ops import propagate

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass
class Interactions:
    num_users: int
    num_items: int
    users: np.ndarray
    items: np.ndarray
    features: dict[str, np.ndarray]


def random_interactions(num_users: int, num_items: int, seed: int, dims: tuple[int, ...] = (6, 5)) -> Interactions:
    """Users with 1..num_items/2 items (skewed), one user with all but two items, a duplicate
    row, an item nobody interacted with, and continuous features (no similarity ties)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    popular = num_items - 1  # the last item stays cold
    for u in range(num_users):
        n = num_items - 2 if u == 0 else 1 + int(rng.pareto(1.5) * 2) % (num_items // 2)
        chosen = rng.choice(popular, size=min(n, popular), replace=False)
        users.extend([u] * len(chosen))
        items.extend(chosen.tolist())
    users.append(users[-1])  # one duplicate interaction
    items.append(items[-1])
    features = {f"m{j}": rng.standard_normal((num_items, d)).astype(np.float32) for j, d in enumerate(dims)}
    return Interactions(num_users, num_items, np.array(users), np.array(items), features)


@pytest.fixture
def small() -> Interactions:
    return random_interactions(num_users=40, num_items=30, seed=0)


def read_inter(name: str) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """``(num_users, num_items, users, items, split)`` of ``../shared/data/<name>/<name>.inter``."""
    path = DATA / name / f"{name}.inter"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    table = pv.read_csv(path, parse_options=pv.ParseOptions(delimiter="\t"),
                        convert_options=pv.ConvertOptions(include_columns=["userID", "itemID", "x_label"]))
    users = table["userID"].to_numpy().astype(np.int64)
    items = table["itemID"].to_numpy().astype(np.int64)
    return int(users.max()) + 1, int(items.max()) + 1, users, items, table["x_label"].to_numpy()


def model_output(batch, x_all: torch.Tensor) -> torch.Tensor:
    """What the models compute: sum of layers 0..L on the output nodes, then the item hop."""
    h = x_all[batch.input_nodes]
    n_out = len(batch.output_nodes)
    total = h[:n_out]
    for block in batch.blocks:
        h = propagate(block, h)
        total = total + h[:n_out]
    if batch.item_graph is not None:
        total = total + propagate(batch.item_graph, total)
    return total


def dense_a_hat(num_users: int, num_items: int, users: np.ndarray, items: np.ndarray):
    """``D^-1/2 A D^-1/2`` of the symmetric 0/1 user-item graph, densely, and the degrees."""
    n = num_users + num_items
    adj = np.zeros((n, n))
    adj[users, num_users + items] = 1.0
    adj[num_users + items, users] = 1.0
    deg = adj.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0)
    return inv[:, None] * adj * inv[None, :], deg


def full_output(data: Interactions, item_graph, hops: int, layers: int, x_all: torch.Tensor) -> torch.Tensor:
    """Dense reference: x + A x + ... + A^L x, then + S^hops on the item rows."""
    a = torch.from_numpy(dense_a_hat(data.num_users, data.num_items, data.users, data.items)[0])
    h, total = x_all, x_all.clone()
    for _ in range(layers):
        h = a @ h
        total = total + h
    s = item_graph.to_torch().to_dense().double().matrix_power(hops)
    u = data.num_users
    total[u:] = total[u:] + s @ total[u:]
    return total
