"""``sea-dist train``: run a config on one process, several local workers, or a Ray cluster."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sea_dist.cli import app
from sea_dist.config import load_config


@app.command()
def train(
    config: str = typer.Option(..., "--config", "-c", help="YAML run config (configs/*.yaml)."),
    overrides: list[str] = typer.Option([], "--set", help="Override: section.key=value (repeatable)."),
    output: Optional[str] = typer.Option(  # noqa: UP007
        None, "--output", "-o", help="Run directory (default: runs/<model>). Same dir resumes."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ray Train workers."),  # noqa: UP007
    address: Optional[str] = typer.Option(  # noqa: UP007
        None, "--address", help="Join this Ray cluster (default: start a local one)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(
        False, "--json", help="End with best epoch and metrics as JSON instead of the summary."
    ),
    resume_with_changes: bool = typer.Option(
        False,
        "--resume-with-changes",
        help="Resume an interrupted run even though the config differs (recorded in the run dir).",
    ),
) -> None:
    """Train a model; writes report.json, metrics, checkpoints and embeddings to the run dir."""
    from sea_dist.train.run_files import summary_markdown
    from sea_dist.train.trainer import run_training

    cfg = load_config(config, overrides)
    report = run_training(
        cfg,
        output or f"runs/{cfg.model.name}",
        workers=workers,
        address=address,
        progress=not quiet,
        resume_with_changes=resume_with_changes,
    )
    if as_json:
        typer.echo(json.dumps({k: report[k] for k in ("best_epoch", "valid", "test")}, indent=2))
    else:
        typer.echo(summary_markdown(report), nl=False)
