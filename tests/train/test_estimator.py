"""The fused CLUB estimator fit (``fit_estimator``) against the autograd + ``torch.optim`` loop.

One process: the packed analytic gradient and the Adam update on the packed buffer give the
parameters and optimizer state of ``CLUB.learning_loss`` + ``backward`` + ``Adam.step`` (float64
to 1e-10, so any error in the formulas shows; float32 agrees on the loss to 1e-5). Two real gloo
processes: fitting each shard locally and averaging once per model step fits ``q`` as well as
averaging the gradients at every inner step, to within 1 % of the negative log-likelihood on the
union of the shards.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from sea_dist.losses.mi import CLUB, CLUBStack, CLUBTerms
from sea_dist.train.optim import fit_estimator
from tests.ranks import run_ranks

STEPS = 50


class _Estimators(nn.Module):
    """The slice of a model ``fit_estimator`` reads: its estimators and their stashed pairs."""

    def __init__(self, count: int, dim: int = 6, hidden: int = 4) -> None:
        super().__init__()
        self.clubs = nn.ModuleList([CLUB(dim, dim, hidden) for _ in range(count)])

    def estimator_parameters(self) -> list[nn.Parameter]:
        return list(self.clubs.parameters())

    def estimator_terms(self, out: dict[str, Any]) -> CLUBTerms:
        return out["terms"]


def _pairs(terms: int, rows: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Correlated pairs, so that the fit has something to learn."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(terms, rows, dim, generator=gen)
    return x, 0.8 * x.flip(2) + 0.6 * torch.randn(terms, rows, dim, generator=gen)


def _terms(model: _Estimators, x: torch.Tensor, y: torch.Tensor) -> CLUBTerms:
    count = len(model.clubs)
    index = torch.arange(x.shape[0]) if count > 1 else torch.zeros(x.shape[0], dtype=torch.long)
    return CLUBTerms(list(model.clubs), index, x, y)


def _autograd_loss(model: _Estimators, terms: CLUBTerms) -> torch.Tensor:
    return sum(
        model.clubs[int(e)].learning_loss(terms.x[t], terms.y[t]) for t, e in enumerate(terms.index)
    )


@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
def test_packed_gradient_is_the_autograd_gradient(count: int) -> None:
    torch.manual_seed(0)
    model = _Estimators(count).double()
    x, y = _pairs(2, 300, 6, seed=1)
    terms = _terms(model, x.double(), y.double())
    stack = CLUBStack(terms.estimators)
    params = stack.parameters()
    flat = stack.pack([[p.detach() for p in g] for g in params])
    grad = torch.empty_like(flat)
    loss = stack.nll_and_grad(flat, terms.index, terms.x, terms.y, grad, loss=True)
    expected = _autograd_loss(model, terms)
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    autograd = stack.pack([[p.grad for p in g] for g in params])
    torch.testing.assert_close(grad, autograd, rtol=1e-10, atol=1e-12)
    # unpack is pack's inverse
    restored = [[torch.empty_like(p) for p in g] for g in params]
    stack.unpack(flat, restored)
    for got_group, want_group in zip(restored, params):
        for got, want in zip(got_group, want_group):
            assert torch.equal(got, want.detach())


@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
def test_fit_matches_torch_adam(count: int) -> None:
    torch.manual_seed(0)
    fused = _Estimators(count).double()
    reference = copy.deepcopy(fused)
    x, y = _pairs(2, 300, 6, seed=2)
    fused_opt = torch.optim.Adam(fused.parameters(), lr=1e-2)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    terms = _terms(fused, x.double(), y.double())
    for _ in range(2):  # the second call resumes from the optimizer state the first wrote
        last = fit_estimator(fused, {"terms": terms}, fused_opt, STEPS)
        for _ in range(STEPS):
            reference_opt.zero_grad()
            expected = _autograd_loss(reference, _terms(reference, terms.x, terms.y))
            expected.backward()
            reference_opt.step()
        assert last == pytest.approx(float(expected), rel=1e-12)
    for p, q in zip(fused.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        state, expected_state = fused_opt.state[p], reference_opt.state[q]
        assert state.keys() == expected_state.keys()
        assert float(state["step"]) == float(expected_state["step"]) == 2 * STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[key], expected_state[key], rtol=1e-9, atol=1e-14)


def test_fit_in_float32_reaches_the_same_likelihood() -> None:
    torch.manual_seed(0)
    fused = _Estimators(2, dim=32, hidden=8)
    reference = copy.deepcopy(fused)
    x, y = _pairs(2, 2048, 32, seed=3)
    fused_opt = torch.optim.Adam(fused.parameters(), lr=1e-3)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    fit_estimator(fused, {"terms": _terms(fused, x, y)}, fused_opt, STEPS)
    for _ in range(STEPS):
        reference_opt.zero_grad()
        _autograd_loss(reference, _terms(reference, x, y)).backward()
        reference_opt.step()
    with torch.no_grad():
        got = float(_autograd_loss(fused, _terms(fused, x, y)))
        want = float(_autograd_loss(reference, _terms(reference, x, y)))
    assert got == pytest.approx(want, rel=1e-5)


def test_fit_ignores_and_drops_the_bounds_gradient() -> None:
    """The model's backward leaves the bound's gradient on q; q follows its likelihood only."""
    model = _Estimators(2)
    twin = copy.deepcopy(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    x, y = _pairs(2, 64, 6, seed=4)
    for m in (model, twin):
        fit_estimator(m, {"terms": _terms(m, x, y)}, torch.optim.Adam(m.parameters()), 3)
    assert all(p.grad is None for p in model.parameters())
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def _per_step_average(model: _Estimators, terms: CLUBTerms, opt: torch.optim.Optimizer) -> None:
    """The previous fit: autograd on the rank's shard, gradients all-reduced at every step."""
    params = list(model.parameters())
    for _ in range(STEPS):
        opt.zero_grad()
        _autograd_loss(model, terms).backward()
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        torch.nn.utils.vector_to_parameters(flat, [p.grad for p in params])
        opt.step()


def _worker(rank: int, world: int, out: str) -> None:
    torch.manual_seed(0)
    fused = _Estimators(2, dim=32, hidden=8)
    reference = copy.deepcopy(fused)
    fused_opt = torch.optim.Adam(fused.parameters(), lr=1e-3)
    reference_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
    for step in range(4):  # four model steps, each on fresh shards
        x, y = _pairs(2, 1500, 32, seed=100 * step + rank)
        fit_estimator(fused, {"terms": _terms(fused, x, y)}, fused_opt, STEPS)
        _per_step_average(reference, _terms(reference, x, y), reference_opt)
    if rank == 0:
        torch.save({"fused": fused.state_dict(), "reference": reference.state_dict()}, out)


def test_local_fits_averaged_once_match_per_step_averaging(tmp_path: Path) -> None:
    world, out = 2, tmp_path / "estimators.pt"
    run_ranks(_worker, world, str(out))
    states = torch.load(out, weights_only=True)
    nll = {}
    x, y = _pairs(2, 3000, 32, seed=999)  # held-out pairs of the same distribution
    for name, state in states.items():
        model = _Estimators(2, dim=32, hidden=8)
        model.load_state_dict(state)
        with torch.no_grad():
            nll[name] = float(_autograd_loss(model, _terms(model, x, y)))
    initial = _Estimators(2, dim=32, hidden=8)
    with torch.no_grad():
        untrained = float(_autograd_loss(initial, _terms(initial, x, y)))
    assert nll["reference"] < untrained - 1.0  # the fit learned something to compare
    assert math.isclose(nll["fused"], nll["reference"], rel_tol=0.01)
