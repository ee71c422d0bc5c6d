"""``sea-dist bench``: run a benchmark scenario and write results.json, results.md and plots.

    sea-dist bench tiktok --workers 1,2 --out runs/bench/tiktok
    sea-dist bench synth_1m --workers 1,2,4 --device cuda --out runs/bench/synth_1m
    sea-dist bench million --out runs/bench/million            # the million-item stage run
    sea-dist bench benchmarks/scenarios/gowalla.yaml --quick --out /tmp/gowalla
"""

from __future__ import annotations

import os
from typing import Optional

import typer

from sea_dist.cli import app


@app.command()
def bench(
    scenario: str = typer.Argument(..., help="A name in benchmarks/scenarios, or a YAML path."),
    out: str = typer.Option(..., "--out", "-o", help="Output directory (results.json, results.md, *.png)."),
    workers: Optional[str] = typer.Option(  # noqa: UP007
        None, "--workers", help="Worker counts, e.g. 1,2,4 (default: the scenario's)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    quick: bool = typer.Option(False, "--quick", help="The scenario's short variant (its quick: section)."),
    overrides: list[str] = typer.Option([], "--set", help="Run-config override: section.key=value."),
    address: Optional[str] = typer.Option(  # noqa: UP007
        None, "--address", help="Join this Ray cluster (default: start a local one)."
    ),
) -> None:
    """Benchmark a scenario: throughput, scaling, memory, time-to-accuracy, or stage timings."""
    if device not in ("cpu", "cuda"):
        raise typer.BadParameter(f"expected cpu or cuda, got {device!r}", param_hint="--device")
    if not address and not os.environ.get("RAY_ADDRESS"):
        # As in ``sea-dist train``: a local cluster keeps every Ray service on 127.0.0.1.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from sea_dist.bench.runner import parse_workers, run_bench

    results = run_bench(
        scenario,
        out,
        workers=parse_workers(workers),
        device=device,
        quick=quick,
        overrides=overrides,
        address=address,
    )
    typer.echo(f"wrote {out}/results.json, results.md and {len(results.get('plots', []))} plot(s)")
