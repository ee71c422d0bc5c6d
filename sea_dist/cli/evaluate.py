"""``sea-dist evaluate``: exact full-ranking metrics for a finished run's best checkpoint."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sea_dist.cli import app
from sea_dist.errors import SeaDistError


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise SeaDistError(f"--k {text!r}: expected a comma-separated list of integers") from None
    if not ks or min(ks) < 1:
        raise SeaDistError(f"--k {text!r}: every K must be at least 1")
    return ks


@app.command()
def evaluate(
    run: str = typer.Option(..., "--run", help="Run directory written by 'sea-dist train'."),
    split: str = typer.Option("test", "--split", help="valid or test."),
    k: str = typer.Option("10,20", "--k", help="Cut-offs, e.g. 10,20,50."),
    users_sample: Optional[int] = typer.Option(  # noqa: UP007
        None, "--users-sample", min=1, help="Evaluate a seeded sample of users (adds 95% CIs)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the user sample."),
) -> None:
    """Recall, NDCG, Precision, HitRate and MAP at every K, over all items."""
    from sea_dist.train.loop import evaluate_run

    if split not in ("valid", "test"):
        raise SeaDistError(f"--split {split!r}: expected valid or test")
    metrics = evaluate_run(run, split=split, ks=_parse_ks(k), users_sample=users_sample, seed=seed)
    typer.echo(json.dumps(metrics, indent=2))
