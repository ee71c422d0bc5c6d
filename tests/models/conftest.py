"""Fixtures for the model tests; the toy graph itself lives in ``toy_graph.py``."""

import pytest

from tests.models.toy_graph import ToyGraph, make_toy_graph


@pytest.fixture
def toy() -> ToyGraph:
    return make_toy_graph()
