"""The compiled CLUB kernel (``sea_dist/losses/club_nll.c``) against autograd and torch's route.

Every kernel test runs once per build target the CPU can execute: ``native`` (the default),
``x86-64-v4`` (AVX-512), ``x86-64-v3`` (AVX2 with FMA) and ``x86-64`` (SSE2 only, what a CPU
without either gets), chosen as users choose it, with ``SEA_DIST_KERNEL_TARGET``. Kernels are
built with this machine's C compiler into a cache shared by the session; without a compiler on
PATH the kernel tests are skipped (the fallback tests still run).
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
from pathlib import Path

import pytest
import torch

from sea_dist.losses import native
from sea_dist.losses.mi import CLUB, CLUBStack, CLUBTerms, fit_kernel
from sea_dist.train.optim import fit_estimator

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler on PATH")

# What each -march level needs of the CPU, by its /proc/cpuinfo flag names.
TARGET_FLAGS = {
    "native": set(),
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
    "x86-64-v3": {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"},
    "x86-64": set(),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path_factory.getbasetemp() / "kernels"
    monkeypatch.setenv("SEA_DIST_KERNEL_CACHE", str(cache))
    for name in ("SEA_DIST_NATIVE", "SEA_DIST_KERNEL_TARGET", "CC"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture(params=list(TARGET_FLAGS))
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A build target this CPU runs, used without the first-use race (SEA_DIST_NATIVE=1)."""
    name = request.param
    if name != "native" and platform.machine() != "x86_64":
        pytest.skip(f"-march={name} is an x86-64 level")
    missing = TARGET_FLAGS[name] - _cpu_flags()
    if missing:
        pytest.skip(f"this CPU cannot run -march={name} code (no {', '.join(sorted(missing))})")
    monkeypatch.setenv("SEA_DIST_KERNEL_TARGET", name)
    monkeypatch.setenv("SEA_DIST_NATIVE", "1")
    return name


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
def test_kernel_gradient_is_the_autograd_gradient(count: int, rows: int, target: str) -> None:
    stack, clubs, flat, index, x, y = _stack_and_pairs(count, 2, rows)
    assert stack._kernel is not None and stack._kernel.target == target
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
def test_kernel_and_torch_route_agree(target: str) -> None:
    stack, _, flat, index, x, y = _stack_and_pairs(2, 2, 500)
    fallback = CLUBStack(stack.estimators, native=False)
    assert stack._kernel is not None and fallback._kernel is None
    got, want = torch.empty_like(flat), torch.empty_like(flat)
    stack.nll_and_grad(flat, index, x, y, got)
    fallback.nll_and_grad(flat, index, x, y, want)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@needs_cc
def test_loading_the_kernel_keeps_denormals(target: str) -> None:
    """A library linked with -ffast-math would switch the process to flush-to-zero."""
    assert native.club_kernel(32, 32, 8) is not None
    tiny = torch.tensor([1e-40])
    assert float(tiny * 1.0) > 0.0


@needs_cc
def test_kernel_is_built_once_per_shape_and_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEA_DIST_KERNEL_CACHE", str(tmp_path))
    assert native.club_kernel(32, 32, 8) is not None
    assert native.club_kernel(16, 16, 8) is not None
    monkeypatch.setenv("SEA_DIST_KERNEL_TARGET", "x86-64")
    baseline = native.club_kernel(32, 32, 8)
    assert baseline is not None and baseline.vector_width == 4 and baseline.isa == "SSE2"
    built = sorted(p.name for p in tmp_path.glob("*.so"))
    assert len(built) == 3 and built[0].startswith("club_nll_16x16_native_")
    assert built[1].startswith("club_nll_32x32_native_")
    assert built[2].startswith("club_nll_32x32_x86-64_")
    native._load.cache_clear()
    monkeypatch.delenv("SEA_DIST_KERNEL_TARGET")
    assert native.club_kernel(32, 32, 8) is not None
    assert len(list(tmp_path.glob("*.so"))) == 3  # the second process reuses the file
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no build left half-written


def test_shapes_outside_the_kernel_use_torch() -> None:
    assert native.club_kernel(32, 32, 4) is None  # hidden width other than 8
    assert native.club_kernel(12, 32, 8) is None  # x width not a multiple of 8
    assert native.club_kernel(32, 24, 8) is None  # y width not a multiple of 16


def test_turned_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEA_DIST_NATIVE", "0")
    assert native.club_kernel(32, 32, 8) is None
    assert CLUBStack([CLUB(32, 32, 8)])._kernel is None


def test_a_target_that_is_no_march_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEA_DIST_KERNEL_TARGET", "native -o /tmp/x")
    with pytest.raises(ValueError, match="SEA_DIST_KERNEL_TARGET"):
        native.club_kernel(32, 32, 8)


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


@needs_cc
def test_first_use_races_the_kernel_against_torch_and_keeps_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEA_DIST_KERNEL_CACHE", str(tmp_path / "raced"))
    kernel = native.club_kernel(32, 32, 8)
    assert kernel is not None
    chosen = fit_kernel(32, 32, 8)
    verdict = json.loads(kernel.choice_path(torch.get_num_threads()).read_text())
    assert verdict["kernel_s"] > 0 and verdict["torch_s"] > 0
    assert verdict["threads"] == torch.get_num_threads()
    assert (chosen is kernel) == (verdict["kernel_s"] < verdict["torch_s"])

    # A build that lost its race is not used (unless SEA_DIST_NATIVE=1 says so).
    monkeypatch.setenv("SEA_DIST_KERNEL_CACHE", str(tmp_path / "lost"))
    kernel = native.club_kernel(32, 32, 8)
    assert kernel is not None
    slower = {"kernel_s": 0.02, "torch_s": 0.01, "threads": torch.get_num_threads()}
    kernel.choice_path(torch.get_num_threads()).write_text(json.dumps(slower))
    assert fit_kernel(32, 32, 8) is None
    assert CLUBStack([CLUB(32, 32, 8)])._kernel is None
    monkeypatch.setenv("SEA_DIST_NATIVE", "1")
    assert fit_kernel(32, 32, 8) is kernel


class _Estimators(torch.nn.Module):
    """What ``fit_estimator`` reads of a model: its estimators and the stashed pairs."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.clubs = torch.nn.ModuleList([CLUB(32, 32, 8) for _ in range(count)])

    def estimator_terms(self, out: dict) -> CLUBTerms:
        return out["terms"]


def _fit(model: _Estimators, opt: torch.optim.Optimizer, index, x, y, steps: int) -> float:
    dtype = next(model.parameters()).dtype
    terms = CLUBTerms(list(model.clubs), index, x.to(dtype), y.to(dtype))
    return fit_estimator(model, {"terms": terms}, opt, steps)


def _adam(model: torch.nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)


@needs_cc
@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
def test_every_kernel_step_is_the_float64_step(
    count: int, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Along a float64 fit (100 Adam steps at lr 1e-2, weight decay), one kernel step from each
    state rounded to float32 lands within 2e-7 of the float64 step, and the moments within a
    relative 1e-5 of their largest entry (an entry near zero is a difference of rounded sums).

    2e-7 is the float32 rounding of the parameters (|theta| < 1.5 here: half an ulp is 6e-8)
    plus the update's own error (a relative 1e-5 of lr: 1e-7). Whole float32 trajectories are
    not comparable this way: this fit crosses ReLU kinks (a hidden unit's input within 1e-7 of
    zero at some step), where any float32 fit, the kernel's or torch's, takes either side, and
    Adam carries the difference on (1e-4 after one step, 3e-2 after 100 at this lr).
    """
    torch.manual_seed(0)
    exact = _Estimators(count).double()
    kernel = _Estimators(count)
    _, _, _, index, x, y = _stack_and_pairs(count, 2, 700)
    exact_opt = _adam(exact)
    for step in range(100):
        kernel.load_state_dict(exact.state_dict())
        kernel_opt = _adam(kernel)
        if step:  # a deep copy: Adam shares the 'step' tensors of a loaded state
            kernel_opt.load_state_dict(copy.deepcopy(exact_opt.state_dict()))
        monkeypatch.setenv("SEA_DIST_NATIVE", "0")
        want = _fit(exact, exact_opt, index, x, y, 1)
        monkeypatch.setenv("SEA_DIST_NATIVE", "1")
        got = _fit(kernel, kernel_opt, index, x, y, 1)
        assert got == pytest.approx(want, rel=1e-5)
        for p, q in zip(kernel.parameters(), exact.parameters()):
            torch.testing.assert_close(p.double(), q, rtol=0, atol=2e-7)
            for key in ("exp_avg", "exp_avg_sq"):
                want_m = exact_opt.state[q][key]
                scale = float(want_m.abs().max())
                torch.testing.assert_close(
                    kernel_opt.state[p][key].double(), want_m, rtol=1e-5, atol=1e-5 * scale
                )
            assert float(kernel_opt.state[p]["step"]) == step + 1


@needs_cc
@pytest.mark.parametrize("count", [1, 2], ids=["shared", "per_modality"])
def test_one_kernel_call_of_many_steps_is_those_steps_one_by_one(count: int, target: str) -> None:
    """The kernel's own loop (Adam's step count and bias corrections across its steps, and a
    second call resuming the state) computes exactly what single steps do."""
    torch.manual_seed(0)
    whole = _Estimators(count)
    single = copy.deepcopy(whole)
    _, _, _, index, x, y = _stack_and_pairs(count, 2, 300)
    whole_opt, single_opt = _adam(whole), _adam(single)
    losses = [_fit(whole, whole_opt, index, x, y, 5) for _ in range(2)]
    single_losses = [_fit(single, single_opt, index, x, y, 1) for _ in range(10)]
    assert losses == [single_losses[4], single_losses[9]]
    for p, q in zip(whole.parameters(), single.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(whole_opt.state[p][key], single_opt.state[q][key], rtol=0, atol=0)
        assert float(whole_opt.state[p]["step"]) == 10
