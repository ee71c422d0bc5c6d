"""``sea-dist submit`` and ``sea-dist job status|logs|stop``: training runs as Ray jobs.

    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/.config/sea-dist/ray-token
    ssh -N -L 8265:127.0.0.1:8265 ubuntu@HEAD_IP &     # the dashboard listens on loopback only
    ID=$(sea-dist submit --address http://127.0.0.1:8265 --config configs/sea.yaml \\
        --set data.path=/shared/data/tiktok --output /shared/runs/sea --workers 4)
    sea-dist job logs --follow "$ID"                    # exits with the job's code

Exit codes are listed in :mod:`sea_dist.jobs`: 0 succeeded, 1 failed, 2 bad input, 3 stopped,
4 refused (token), 5 unreachable, 6 still running.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from sea_dist.cli import app

job_app = typer.Typer(name="job", help="Inspect and stop submitted jobs.", no_args_is_help=True)
app.add_typer(job_app, name="job")

_ADDRESS_HELP = (
    "Ray job server (the dashboard), e.g. http://127.0.0.1:8265 through an SSH tunnel or "
    "kubectl port-forward."
)


def _address() -> Any:  # a typer.Option default, shared by every command
    return typer.Option(..., "--address", envvar="RAY_API_SERVER_ADDRESS", help=_ADDRESS_HELP)


def _echo_chunk(chunk: str, err: bool) -> None:
    typer.echo(chunk, nl=False, err=err)


@app.command()
def submit(
    address: str = _address(),
    config: str = typer.Option(..., "--config", "-c", help="Run config, inside --working-dir."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override: section.key=value (repeatable)."
    ),
    output: str = typer.Option(
        ..., "--output", "-o", help="Run directory: an absolute path on storage all nodes share."
    ),
    workers: Optional[int] = typer.Option(  # noqa: UP007
        None, "--workers", min=1, help="Ray Train workers."
    ),
    wait: bool = typer.Option(False, "--wait", help="Stream the logs, exit with the job's code."),
    working_dir: str = typer.Option(".", "--working-dir", help="Directory uploaded with the job."),
    runtime_env: Optional[str] = typer.Option(  # noqa: UP007
        None, "--runtime-env", help="Runtime-env YAML (default: cluster/runtime_env.yaml)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="With --wait: no logs, only the outcome."),
    resume_with_changes: bool = typer.Option(
        False, "--resume-with-changes", help="Let the job resume an interrupted run whose config differs."
    ),
) -> None:
    """Submit 'sea-dist train' as a Ray job; prints the submission id on stdout."""
    from sea_dist.jobs import JobClient, exit_code, plan_train_job, read_report

    job = plan_train_job(
        config, overrides, output, workers=workers, working_dir=working_dir,
        runtime_env_file=runtime_env, resume_with_changes=resume_with_changes,
    )
    client = JobClient(address)
    job_id = client.submit(job)
    typer.echo(job_id)
    if not wait:
        return
    try:
        if quiet:
            state = client.wait(job_id)
        else:
            state = client.follow(job_id, lambda chunk: _echo_chunk(chunk, err=True))
    except KeyboardInterrupt:
        typer.echo(f"\nstopped waiting; job {job_id} goes on (sea-dist job stop {job_id})",
                   err=True)
        raise typer.Exit(130) from None
    typer.echo(f"job {job_id}: {state}", err=True)
    if read_report(job.output) is not None:
        typer.echo(f"report: {job.output.rstrip('/')}/report.json", err=True)
    raise typer.Exit(exit_code(state))


@job_app.command("status")
def status(
    job_id: str = typer.Argument(..., help="Submission id."), address: str = _address()
) -> None:
    """Print the job's state; exit 0 succeeded, 1 failed, 3 stopped, 6 pending or running."""
    from sea_dist.jobs import OUTPUT_KEY, JobClient, exit_code

    info = JobClient(address).info(job_id)
    typer.echo(str(info.status))
    if info.message:  # a failed job's message ends with its last 20,000 characters of logs
        typer.echo(info.message.splitlines()[0], err=True)
    if info.metadata and OUTPUT_KEY in info.metadata:
        typer.echo(f"output: {info.metadata[OUTPUT_KEY]}", err=True)
    raise typer.Exit(exit_code(info.status))


@job_app.command("logs")
def logs(
    job_id: str = typer.Argument(..., help="Submission id."),
    address: str = _address(),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Stream until the job ends, then exit with its code."
    ),
) -> None:
    """Print the job's output so far (or follow it)."""
    from sea_dist.jobs import JobClient, exit_code

    client = JobClient(address)
    if not follow:
        typer.echo(client.logs(job_id), nl=False)
        return
    state = client.follow(job_id, lambda chunk: _echo_chunk(chunk, err=False))
    raise typer.Exit(exit_code(state))


@job_app.command("stop")
def stop(
    job_id: str = typer.Argument(..., help="Submission id."),
    address: str = _address(),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the stop is requested."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.0, help="Seconds to wait for the end."),
) -> None:
    """Stop a running job; by default waits until it has ended."""
    from sea_dist.jobs import JobClient

    client = JobClient(address)
    if not client.stop(job_id):
        typer.echo(f"job {job_id} had already ended: {client.status(job_id)}", err=True)
        return
    if no_wait:
        typer.echo(f"job {job_id}: stop requested", err=True)
        return
    typer.echo(f"job {job_id}: {client.wait(job_id, timeout_s=timeout)}", err=True)
