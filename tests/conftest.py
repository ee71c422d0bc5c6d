"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from sea_dist.data.store import Store
from sea_dist.data.synthetic import generate_store


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A small synthetic store: 300 users, 200 items, 4000 interactions, two modalities."""
    out = tmp_path_factory.mktemp("tiny") / "store"
    return generate_store(
        out,
        num_users=300,
        num_items=200,
        num_interactions=4000,
        modalities={"image": 32, "text": 24},
        seed=0,
        progress=False,
    )
