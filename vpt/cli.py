"""The `vpt` command line: registers the subcommands, nothing else."""

from __future__ import annotations

import sys

import typer

from vpt.errors import VptError

app = typer.Typer(
    name="vpt",
    help="vpt: video prediction toolkit - videos -> frames -> HDF5 -> autoencoder -> latents -> model -> samples -> metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root() -> None:
    """vpt: video prediction toolkit - videos -> frames -> HDF5 -> autoencoder -> latents -> model -> samples -> metrics."""


def _register() -> None:
    from vpt.commands import info

    app.command("info", help="Versions, devices, attention backend and optional packages.")(info.info)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and a non-zero exit code, not a traceback."""
    from rich.markup import escape

    from vpt.console import console

    try:
        app(args=argv, prog_name="vpt")  # typer/click report usage errors themselves (exit 2)
    except VptError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: finished checkpoints and outputs are kept; run the same command to resume")
        sys.exit(130)
