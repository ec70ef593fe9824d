"""One rich console for the whole toolkit. Messages go to stderr so stdout stays machine-readable."""

from __future__ import annotations

import contextlib
import os

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


_cli_owns_process = False


@contextlib.contextmanager
def owning_process():
    """Around the `vpt` entry point's work: the process is vpt's, so vpt may take over signals (Ctrl-C).
    Restored after, so a program that called `vpt.cli.main` keeps its own Ctrl-C."""
    global _cli_owns_process
    previous, _cli_owns_process = _cli_owns_process, True
    try:
        yield
    finally:
        _cli_owns_process = previous


def cli_owns_process() -> bool:
    """False when vpt runs as a library inside another program (a notebook, pytest): its Ctrl-C stays its own."""
    return _cli_owns_process


def is_main_process() -> bool:
    """True on the process that prints and writes shared files (rank 0 under `accelerate launch`)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def info(message: str) -> None:
    if is_main_process():
        console.print(message)


def warn(message: str) -> None:
    if is_main_process():
        console.print(f"[yellow]warning:[/] {message}")
