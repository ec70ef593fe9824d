"""One rich console for the whole toolkit. Messages go to stderr so stdout stays machine-readable."""

from __future__ import annotations

import os

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def is_main_process() -> bool:
    """True on the process that prints and writes shared files (rank 0 under `accelerate launch`)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def info(message: str) -> None:
    if is_main_process():
        console.print(message)


def warn(message: str) -> None:
    if is_main_process():
        console.print(f"[yellow]warning:[/] {message}")
