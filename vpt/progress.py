"""The one progress bar every long command shows (rich, on stderr, main process only).

    with ProgressBar("convert-h5", total=len(jobs), unit="videos", fields={"frames": "0 frames"}) as bar:
        bar.advance(1, frames="1,234 frames  600 frames/s")

A bar counts `unit`s towards `total` with the time left; `fields` are extra text columns the caller
keeps up to date (a loss, a frame rate, a time budget). `eta=False` shows the elapsed time instead
(for work whose end a step count does not tell, e.g. a wall-clock budget). On processes other than
the main one every call is a no-op.
"""

from __future__ import annotations

import contextlib
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vpt.console import console, is_main_process


class ProgressBar:
    def __init__(
        self,
        description: str,
        total: int,
        *,
        unit: str = "",
        completed: int = 0,
        fields: dict[str, str] | None = None,
        eta: bool = True,
        transient: bool = False,
        enabled: bool | None = None,
    ):
        self.description = description
        self.started = time.perf_counter()
        self.first = completed
        self._bar = None
        if not (is_main_process() if enabled is None else enabled):
            return
        fields = fields or {}
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(unit)] if unit else []
        columns += [TextColumn(f"{{task.fields[{name}]}}") for name in fields]
        columns.append(TimeRemainingColumn() if eta else TimeElapsedColumn())
        self._bar = Progress(*columns, console=console, transient=transient)
        self._task = self._bar.add_task(description, total=total, completed=completed, **fields)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rate(self, done: int | None = None) -> float:
        """Units (or `done` of anything) per second since the bar started, counting only this session's work."""
        return (done if done is not None else self.completed - self.first) / max(self.elapsed, 1e-9)

    @property
    def completed(self) -> int:
        return int(self._bar.tasks[0].completed) if self._bar is not None else self.first

    def advance(self, amount: int = 1, **fields: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=amount, **fields)

    def update(self, *, completed: int | None = None, **fields: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, **fields)

    @contextlib.contextmanager
    def paused(self, what: str):
        """Say what runs while the count stands still (validation, sampling inside training)."""
        self.update(description=f"{self.description} ({what})")
        try:
            yield
        finally:
            self.update(description=self.description)

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
