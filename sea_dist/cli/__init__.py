"""The ``sea-dist`` command line.

Each command group lives in its own module here and only parses arguments, then calls the
package; user errors (:class:`~sea_dist.errors.SeaDistError`) become one line on stderr and a
non-zero exit code.
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

import typer

from sea_dist import __version__
from sea_dist.errors import SeaDistError

app = typer.Typer(
    name="sea-dist",
    help="Distributed training of multimodal recommenders (SEA, SAND, MENTOR, SGFD) on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sea-dist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(  # noqa: UP007 - typer needs Optional on 3.10
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    log_level: str = typer.Option(
        "WARNING", "--log-level", help="Console: DEBUG, INFO, WARNING or ERROR (run logs keep INFO)."
    ),
) -> None:
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Records reach INFO so that a run's train.log has them; the console shows ``level`` up.
    logging.basicConfig(level=min(level, logging.INFO), handlers=[console])


def _register() -> None:
    # Imported here so that each command module can use ``app`` without an import cycle.
    import importlib

    for module in _COMMAND_MODULES:
        importlib.import_module(f"sea_dist.cli.{module}")


_COMMAND_MODULES = ("doctor", "data", "train", "evaluate", "jobs", "bench")


_register()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code instead of raising."""
    try:
        # standalone mode: click prints usage errors itself and exits with code 2.
        app(args=argv, prog_name="sea-dist", standalone_mode=True)
    except SeaDistError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
