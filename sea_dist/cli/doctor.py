"""``sea-dist doctor``: report the stack and check that DGL's native libraries load."""

from __future__ import annotations

import importlib
import os
import platform
import warnings

import typer

from sea_dist.cli import app
from sea_dist.errors import SeaDistError

_PACKAGES = ("torch", "dgl", "ray", "pyarrow", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def check_dgl_native() -> str:
    """Run a real DGL sampling call (C++ library) and load GraphBolt's torch extension.

    Raises:
        SeaDistError: naming the library that failed, with the usual cause.
    """
    os.environ.setdefault("DGLBACKEND", "pytorch")
    try:
        import dgl
        import torch

        graph = dgl.graph((torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])), num_nodes=3)
        sampled = dgl.sampling.sample_neighbors(graph, torch.tensor([0, 1]), 1)
        import dgl.graphbolt  # noqa: F401  loads libgraphbolt_pytorch_<torch version>.so
    except Exception as exc:  # any failure here means the install is broken
        raise SeaDistError(
            f"DGL's native libraries failed to load ({type(exc).__name__}: {exc}); "
            "dgl 2.1.0 needs torch 2.0.0-2.2.1, torchdata 0.7.1 and setuptools<70"
        ) from None
    return f"ok (sampled {sampled.num_edges()} edges with the C++ sampler, graphbolt loaded)"


def check_club_kernel() -> str:
    """Build (or find in the cache) the compiled CLUB estimator kernel at SEA's default shape,
    and say whether it beats torch's route on this machine (the race its first use runs)."""
    from sea_dist.losses.mi import kernel_choice
    from sea_dist.losses.native import club_kernel, kernel_forced

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernel = club_kernel(32, 32, 8)
    if kernel is None:
        if caught:
            return f"not built, the estimator fit runs in torch: {caught[0].message}"
        return "off (SEA_DIST_NATIVE=0), the estimator fit runs in torch"
    choice = kernel_choice(kernel)
    if kernel_forced():
        verdict = "used (SEA_DIST_NATIVE=1)"
    elif choice.use_kernel:
        verdict = "used"
    else:
        verdict = "not used, torch's route is faster here"
    return (
        f"compiled ({kernel.path}) for -march={kernel.target}, {kernel.isa} vectors; a fit "
        f"{choice.kernel_s * 1e3:.1f} ms against torch's {choice.torch_s * 1e3:.1f} ms on "
        f"{choice.threads} threads: {verdict}"
    )


@app.command()
def doctor() -> None:
    """Print library versions and the CPU/GPU seen; fail if DGL's native libraries do not load."""
    rows: list[tuple[str, str]] = [("python", platform.python_version())]
    missing = []
    for name in _PACKAGES:
        try:
            rows.append((name, importlib.import_module(name).__version__))
        except Exception as exc:
            rows.append((name, f"NOT IMPORTABLE ({type(exc).__name__})"))
            missing.append(name)
    import torch

    rows.append(("cpu", f"{_cpu_model()} ({os.cpu_count()} logical cores)"))
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        rows.append(("gpu", ", ".join(gpus)))
    else:
        rows.append(("gpu", "none visible to torch (training runs on CPU)"))
    rows.append(("threads", f"torch uses {torch.get_num_threads()}"))
    for key, value in rows:
        typer.echo(f"{key:<14} {value}")
    if missing:
        raise SeaDistError(f"cannot import {', '.join(missing)}; run 'make install'")
    typer.echo(f"{'dgl-native':<14} {check_dgl_native()}")
    typer.echo(f"{'club-kernel':<14} {check_club_kernel()}")
