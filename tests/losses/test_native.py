"""The compiled CLUB kernel (``sea_dist/losses/club_nll.c``) against autograd and torch's route.

It is built with this machine's C compiler into a per-test cache; without a compiler on PATH
the kernel tests are skipped (the fallback tests still run).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from sea_dist.losses import native
from sea_dist.losses.mi import CLUB, CLUBStack, CLUBTerms
from sea_dist.train.optim import fit_estimator

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on PATH")


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "kernels"
    monkeypatch.setenv("SEA_DIST_KERNEL_CACHE", str(cache))
    monkeypatch.delenv("SEA_DIST_NATIVE", raising=False)
    monkeypatch.delenv("CC", raising=False)
    return cache


def _stack_and_pairs(count: int, terms: int, rows: int, dim: int = 32, native_path: bool = True):
    torch.manual_seed(0)
    clubs = [CLUB(dim, dim, 8) for _ in range(count)]
    stack = CLUBStack(clubs, native=native_path)
    flat = stack.pack([[p.detach() for p in g] for g in stack.parameters()])
    x = torch.randn(terms, rows, dim)
    y = 0.7 * x.flip(2) + 0.5 * torch.randn(terms, rows, dim)
    index = torch.arange(terms) if count > 1 else torch.zeros(terms, dtype=torch.long)
    return stack, clubs, flat, index, x, y


@needs_cc
@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
@pytest.mark.parametrize("rows", [1, 37, 2700], ids=lambda r: f"rows{r}")
def test_kernel_gradient_is_the_autograd_gradient(count: int, rows: int) -> None:
    stack, clubs, flat, index, x, y = _stack_and_pairs(count, 2, rows)
    assert stack._kernel is not None
    grad = torch.empty_like(flat)
    loss = stack.nll_and_grad(flat, index, x, y, grad, loss=True)
    # autograd in float64 on the same parameters
    reference = [CLUB(32, 32, 8).double() for _ in clubs]
    for ref, club in zip(reference, clubs):
        ref.load_state_dict(club.state_dict())
    expected = sum(
        reference[int(e)].learning_loss(x[t].double(), y[t].double()) for t, e in enumerate(index)
    )
    expected.backward()
    params = [[dict(r.named_parameters())[n] for n in CLUBStack._PARAMS] for r in reference]
    want = stack.pack([[p.grad.float() for p in g] for g in params])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6)


@needs_cc
def test_kernel_and_torch_route_agree_and_fit_alike() -> None:
    stack, _, flat, index, x, y = _stack_and_pairs(2, 2, 500)
    fallback = CLUBStack(stack.estimators, native=False)
    assert stack._kernel is not None and fallback._kernel is None
    got, want = torch.empty_like(flat), torch.empty_like(flat)
    stack.nll_and_grad(flat, index, x, y, got)
    fallback.nll_and_grad(flat, index, x, y, want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@needs_cc
def test_loading_the_kernel_keeps_denormals() -> None:
    """Linked with -ffast-math, the library would switch the process to flush-to-zero."""
    assert native.club_kernel(32, 32, 8) is not None
    tiny = torch.tensor([1e-40])
    assert float(tiny * 1.0) > 0.0


@needs_cc
def test_kernel_is_built_once_per_shape(kernel_cache: Path) -> None:
    assert native.club_kernel(32, 32, 8) is not None
    assert native.club_kernel(16, 16, 8) is not None
    built = sorted(p.name for p in kernel_cache.glob("*.so"))
    assert len(built) == 2 and built[0].startswith("club_nll_16x16_")
    native._load.cache_clear()
    assert native.club_kernel(32, 32, 8) is not None
    assert len(list(kernel_cache.glob("*.so"))) == 2  # the second process reuses the file
    assert not [p for p in kernel_cache.iterdir() if p.is_dir()]  # no build left half-written


def test_shapes_outside_the_kernel_use_torch() -> None:
    assert native.club_kernel(32, 32, 4) is None  # hidden width other than 8
    assert native.club_kernel(12, 32, 8) is None  # x width not a multiple of 8
    assert native.club_kernel(32, 24, 8) is None  # y width not a multiple of 16


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEA_DIST_NATIVE", "0")
    assert native.club_kernel(32, 32, 8) is None
    assert CLUBStack([CLUB(32, 32, 8)])._kernel is None


@pytest.mark.parametrize(
    "compiler, message",
    [("no-such-cc", "no C compiler on PATH"), ("false", "cannot build club_nll.c")],
)
def test_a_broken_compiler_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, compiler: str, message: str
) -> None:
    monkeypatch.setenv("CC", compiler)
    with pytest.warns(RuntimeWarning, match=message):
        stack, _, flat, index, x, y = _stack_and_pairs(2, 2, 64)
    assert stack._kernel is None
    grad = torch.empty_like(flat)
    assert stack.nll_and_grad(flat, index, x, y, grad, loss=True) is not None


class _Estimators(torch.nn.Module):
    """What ``fit_estimator`` reads of a model: its estimators and the stashed pairs."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.clubs = torch.nn.ModuleList([CLUB(32, 32, 8) for _ in range(count)])

    def estimator_terms(self, out: dict) -> CLUBTerms:
        return out["terms"]


@needs_cc
@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
def test_compiled_fit_is_torch_adam(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fits of 50 steps (the second resumes the optimizer state) through the kernel and
    through torch reach the same parameters and moments, weight decay included."""
    torch.manual_seed(0)
    compiled = _Estimators(count)
    reference = copy.deepcopy(compiled)
    _, _, _, index, x, y = _stack_and_pairs(count, 2, 700)
    opts = [
        torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3) for m in (compiled, reference)
    ]
    losses = []
    for model, opt, switch in zip((compiled, reference), opts, ("1", "0")):
        monkeypatch.setenv("SEA_DIST_NATIVE", switch)
        terms = CLUBTerms(list(model.clubs), index, x, y)
        losses.append([fit_estimator(model, {"terms": terms}, opt, 50) for _ in range(2)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for p, q in zip(compiled.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                opts[0].state[p][key], opts[1].state[q][key], rtol=1e-3, atol=1e-7
            )
        assert float(opts[0].state[p]["step"]) == 100
