"""Compiled CPU kernels, built on first use with the system's C compiler and cached on disk.

The CLUB estimator is fitted 50 times per model step on the step's pairs (spec section 2).
Its networks are tiny (hidden width 8), so through torch every inner step is a chain of small
GEMMs with 8-wide outputs and a dozen elementwise passes, each a kernel launch over the whole
``[N, 32]`` batch, then Adam's half-dozen passes. ``club_nll.c`` runs one estimator's forward,
Gaussian NLL and backward in one pass over tiles of 32 rows that stay in L1, and the whole
inner loop, Adam included, in one call (README, Performance). Torch's route stays as the
fallback and as the reference the tests hold the kernel to.

The kernel is compiled for the shapes in use (``-DDX``, ``-DDY``) and for a target CPU
(``-march``, ``$SEA_DIST_KERNEL_TARGET``, default ``native``: the CPU it runs on; ``x86-64-v3``
is AVX2 with FMA, ``x86-64`` the baseline with SSE2 only), into ``$SEA_DIST_KERNEL_CACHE``
(default ``~/.cache/sea_dist/kernels``) under a name that hashes the source, the flags, the
compiler and the CPU, so a node of a cluster with a different CPU builds its own. The source
picks its vector width and register blocks from the target's instruction set, so one file is
fast on AVX-512, AVX2 and SSE2 alike.

Whether a build is used is measured, not assumed: at first use on a machine the kernel and
torch's route each time the same small fit (:meth:`ClubKernel.choose`), and the faster one is
kept in a file beside the library, per torch thread count. ``SEA_DIST_NATIVE=0`` turns the
kernels off, ``SEA_DIST_NATIVE=1`` uses them without that timing; without a working compiler
they are off, with one warning naming the compiler and its first line of error.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from sea_dist.io import atomic_write_text

SOURCE = Path(__file__).with_name("club_nll.c")
# No -ffast-math: the kernel's transcendentals are its own polynomials, so nothing needs it,
# and its results then follow IEEE rules (and no flush-to-zero start-up code can be linked in).
# -fno-math-errno lets Adam's sqrtf vectorise.
BASE_FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-std=gnu11")
VECTOR_ISA = {16: "AVX-512", 8: "AVX2/AVX", 4: "SSE2"}
HIDDEN = 8  # the only hidden width the kernel is written for (SEA's)


@dataclass(frozen=True)
class KernelChoice:
    """The timed race behind the decision to use a build: seconds for the same fit."""

    kernel_s: float
    torch_s: float
    threads: int

    @property
    def use_kernel(self) -> bool:
        return self.kernel_s < self.torch_s


class ClubKernel:
    """The two entry points of ``club_nll.c`` for one shape, on contiguous float32 CPU tensors."""

    def __init__(self, path: Path, target: str, x_dim: int, y_dim: int) -> None:
        self.path = path
        self.target = target
        self.x_dim, self.y_dim = x_dim, y_dim
        library = ctypes.CDLL(str(path))
        ptr, long, double = ctypes.c_void_p, ctypes.c_long, ctypes.c_double
        self._nll_and_grad = library.club_nll_grad
        self._nll_and_grad.argtypes = [ptr, ptr, ptr, long, ctypes.c_float, ptr, ptr]
        self._nll_and_grad.restype = None
        self._adam_fit = library.club_adam_fit
        self._adam_fit.argtypes = [ptr] * 6 + [ctypes.c_int, ctypes.c_int, long, ctypes.c_int,
                                               long] + [double] * 5 + [ptr]  # fmt: skip
        self._adam_fit.restype = None
        library.club_vector_width.restype = ctypes.c_int
        self.vector_width = library.club_vector_width()
        self._choices: dict[int, KernelChoice] = {}

    @property
    def isa(self) -> str:
        """The instruction set the build vectorises with, from its vector width."""
        return VECTOR_ISA.get(self.vector_width, f"{self.vector_width}-float vectors")

    def nll_and_grad(
        self, params: Tensor, x: Tensor, y: Tensor, grad: Tensor, scale: float
    ) -> float:
        """One term: ``grad`` = gradient of ``scale * sum_i NLL_i``; returns that loss.

        Shapes: params, grad: one estimator's packed buffer; x ``[N, x_dim]``; y ``[N, y_dim]``.
        """
        loss = ctypes.c_double()
        self._nll_and_grad(params.data_ptr(), x.data_ptr(), y.data_ptr(), x.shape[0], scale,
                           grad.data_ptr(), ctypes.byref(loss))  # fmt: skip
        return loss.value

    def adam_fit(
        self, params: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, x: Tensor, y: Tensor,
        shared: bool, steps: int, step: int, lr: float, betas: tuple[float, float], eps: float,
        weight_decay: float,
    ) -> float:  # fmt: skip
        """``steps`` Adam steps in place (see ``club_adam_fit``); the last step's loss.

        Shapes: x ``[T, N, x_dim]``, y ``[T, N, y_dim]`` (contiguous); params and the moments
        hold one estimator when ``shared``, else ``T``.
        """
        terms, rows, _ = x.shape
        scratch = params.new_empty(terms, params.numel() // (1 if shared else terms))
        loss = ctypes.c_double()
        self._adam_fit(params.data_ptr(), exp_avg.data_ptr(), exp_avg_sq.data_ptr(),
                       scratch.data_ptr(), x.data_ptr(), y.data_ptr(), terms, int(shared), rows,
                       steps, step, lr, betas[0], betas[1], eps, weight_decay,
                       ctypes.byref(loss))  # fmt: skip
        return loss.value

    def choice_path(self, threads: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.choice-{threads}threads.json")

    def choose(self, race: Callable[[], tuple[float, float]]) -> KernelChoice:
        """Whether this build beats torch's route here: ``race`` times (kernel, torch) once per
        thread count and machine, and the result is kept beside the library."""
        threads = torch.get_num_threads()
        if threads in self._choices:
            return self._choices[threads]
        path = self.choice_path(threads)
        try:
            choice = KernelChoice(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # none yet, or unreadable: time it again
            kernel_s, torch_s = race()
            choice = KernelChoice(kernel_s, torch_s, threads)
            atomic_write_text(path, json.dumps(asdict(choice)) + "\n")
        self._choices[threads] = choice
        return choice


def kernel_forced() -> bool:
    """``SEA_DIST_NATIVE=1``: use a kernel that builds without racing it against torch."""
    return os.environ.get("SEA_DIST_NATIVE") == "1"


def kernel_target() -> str:
    """The ``-march`` the kernels are built for (``$SEA_DIST_KERNEL_TARGET``)."""
    target = os.environ.get("SEA_DIST_KERNEL_TARGET", "native")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", target):
        raise ValueError(f"SEA_DIST_KERNEL_TARGET={target!r} is not a -march name")
    return target


def club_kernel(x_dim: int, y_dim: int, hidden: int) -> ClubKernel | None:
    """The compiled NLL-and-gradient kernel for estimators of these shapes, or ``None``.

    ``None`` when the kernels are turned off, the shapes are not the kernel's (hidden width
    8, ``x_dim`` a multiple of 8, ``y_dim`` of 16), or the compiler is missing or fails.
    Whether the build is faster than torch here is :meth:`ClubKernel.choose`'s question.
    """
    if os.environ.get("SEA_DIST_NATIVE", "") == "0":
        return None
    if hidden != HIDDEN or x_dim % 8 or y_dim % 16:
        return None
    compiler = os.environ.get("CC", "cc")
    return _load(x_dim, y_dim, compiler, kernel_target(), _cache_dir())


def _cache_dir() -> Path:
    if "SEA_DIST_KERNEL_CACHE" in os.environ:
        return Path(os.environ["SEA_DIST_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sea_dist" / "kernels"


@functools.lru_cache(maxsize=None)
def _load(x_dim: int, y_dim: int, compiler: str, target: str, cache: Path) -> ClubKernel | None:
    try:
        library = _build(x_dim, y_dim, compiler, target, cache)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        first = detail.strip().splitlines()[0] if detail.strip() else type(exc).__name__
        warnings.warn(
            f"{compiler}: cannot build {SOURCE.name} for {target} ({first}); the CLUB "
            "estimator is fitted through torch instead (slower, same result)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return ClubKernel(library, target, x_dim, y_dim)


def _build(x_dim: int, y_dim: int, compiler: str, target: str, cache: Path) -> Path:
    path = shutil.which(compiler)
    if path is None:
        raise OSError("no C compiler on PATH (set CC to one)")
    version = subprocess.run(
        [path, "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    flags = (*BASE_FLAGS, f"-march={target}", f"-DDX={x_dim}", f"-DDY={y_dim}")
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(), *flags, version, platform.machine(), _cpu_id()]).encode()
    ).hexdigest()[:16]
    library = cache / f"club_nll_{x_dim}x{y_dim}_{target}_{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # Concurrent builders (one per Ray worker) each write their own file, then rename.
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        obj, tmp = Path(scratch) / "club_nll.o", Path(scratch) / "club_nll.so"
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=True)
        run([path, *flags, "-c", str(SOURCE), "-o", str(obj)])
        run([path, "-shared", str(obj), "-o", str(tmp), "-lm"])
        os.replace(tmp, library)
    return library


def _cpu_id() -> str:
    """The CPU's model and feature flags: code built for one CPU is only valid where they match."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags")
    return "\n".join(dict.fromkeys(ln for ln in lines if ln.split(":")[0].strip() in wanted))
