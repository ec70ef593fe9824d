"""The one progress bar every long command shows (on stderr, main process only).

    with ProgressBar("convert-h5", total=len(jobs), unit="videos", fields={"frames": "0 frames"}) as bar:
        bar.advance(1, frames="1,234 frames  600 frames/s")

A bar counts `unit`s towards `total` with its rate and the time left; `fields` are extra text columns
the caller keeps up to date (a loss, a frame rate, a time budget). `eta=False` shows the elapsed time
instead (for work whose end a step count does not tell, e.g. a wall-clock budget). On processes other
than the main one every call is a no-op.

On a terminal (or a notebook) it is a live rich bar. Where stderr is a file or a pipe (nohup, SLURM,
CI), a live bar would print nothing until the end, so the bar prints plain lines instead: one at the
start, one every `interval` seconds (default 30, or $VPT_PROGRESS_INTERVAL), and one at the end:

    train 1200/5000  loss 0.0412  2.31 it/s  ETA 27:25

Rates below one per second read as seconds per unit (`4.20 s/it`), never `0.00 it/s`.

Samplers report each solver step through `solver_step(done, total)`; a command listens with
`listening_to_solver_steps(callback)` (`vpt sample` counts them with `SolverStepBar`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Callable

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from vpt.console import console, is_main_process

INTERVAL_ENV = "VPT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0  # seconds between two plain progress lines


def format_rate(count: float, seconds: float, unit: str = "it") -> str:
    """`count` units in `seconds` as '2.31 it/s', '600 frames/s' or, below one per second, as '4.20 s/it',
    '3.10 s/frame' (`unit` is the plural: 'frames')."""
    if count <= 0 or seconds <= 0:
        return f"- {unit}/s"
    per_second = count / seconds
    if per_second >= 1:
        return f"{_three_figures(per_second)} {unit}/s"
    singular = unit[:-1] if unit.endswith("s") else unit
    return f"{_three_figures(seconds / count)} s/{singular}"


def _three_figures(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_duration(seconds: float) -> str:
    """'4:05', or '1:02:03' from an hour up."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def plain_interval() -> float:
    """Seconds between two plain progress lines: $VPT_PROGRESS_INTERVAL, else 30."""
    value = os.environ.get(INTERVAL_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class _RateColumn(ProgressColumn):
    """The bar's own rate (this session's units per second, or seconds per unit when slow)."""

    def __init__(self, text: Callable[[], str]):
        super().__init__()
        self.text = text

    def render(self, task) -> Text:
        return Text(self.text())


class ProgressBar:
    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        unit: str = "",
        completed: int = 0,
        fields: dict[str, str] | None = None,
        eta: bool = True,
        rate: bool = True,
        transient: bool = False,
        enabled: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.description = description
        self.total = total
        self.unit = unit
        self.fields = dict(fields or {})
        self.clock = clock
        self.started = clock()
        self.first = self._completed = completed
        self._eta, self._show_rate = eta, rate
        self._shown_description = description
        self._bar = None  # the live rich bar, on a terminal
        self._plain = False  # plain lines, where stderr is not a terminal
        if not (is_main_process() if enabled is None else enabled):
            return
        if not (console.is_terminal or console.is_jupyter):
            self._plain = True
            self.interval = plain_interval() if interval is None else interval
            self._last_line: float | None = None
            self._unprinted = True  # a change since the last line (the end prints it)
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        columns += [TextColumn(unit)] if unit else []
        columns += [TextColumn(f"{{task.fields[{name}]}}") for name in self.fields]
        columns += [_RateColumn(self.rate_text)] if rate else []
        columns.append(TimeRemainingColumn() if eta else TimeElapsedColumn())
        self._bar = Progress(*columns, console=console, transient=transient, get_time=clock)
        self._task = self._bar.add_task(description, total=total, completed=completed, **self.fields)

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self, done: int | None = None) -> float:
        """Units (or `done` of anything) per second since the bar started, counting only this session's work."""
        return (done if done is not None else self.completed - self.first) / max(self.elapsed, 1e-9)

    def rate_text(self) -> str:
        """This session's rate of the counted unit, e.g. '12.5 frames/s' or '3.10 s/step'."""
        return format_rate(self.completed - self.first, self.elapsed, self.unit or "it")

    @property
    def completed(self) -> int:
        return self._completed

    def advance(self, amount: int = 1, **fields: str) -> None:
        self.update(completed=self._completed + amount, **fields)

    def update(
        self, *, completed: int | None = None, total: int | None = None, description: str | None = None, **fields: str
    ) -> None:
        if completed is not None:
            self._completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self._shown_description = description
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=total, description=description, **fields)
        elif self._plain:
            self._unprinted = True
            if self._last_line is None or self.clock() - self._last_line >= self.interval:
                self._print_line()

    def _print_line(self) -> None:
        self._last_line, self._unprinted = self.clock(), False
        count = f"{self._completed}/{self.total}" if self.total is not None else f"{self._completed}"
        parts = [f"{self._shown_description} {count}" + (f" {self.unit}" if self.unit else "")]
        parts += [value for value in self.fields.values() if value]
        parts += [self.rate_text()] if self._show_rate else []
        parts.append(self._time_text())
        console.print("  ".join(parts), markup=False, highlight=False)

    def _time_text(self) -> str:
        if not self._eta:
            return f"elapsed {format_duration(self.elapsed)}"
        done = self._completed - self.first
        if self.total is None or done <= 0:
            return "ETA -"
        return f"ETA {format_duration(max(0, self.total - self._completed) * self.elapsed / done)}"

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
        elif self._plain:
            self._print_line()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._plain and self._unprinted:
            self._print_line()


_solver_step_listener: contextvars.ContextVar[Callable[[int, int], None] | None] = contextvars.ContextVar(
    "solver_step_listener", default=None
)


def solver_step(done: int, total: int) -> None:
    """Samplers call this after step `done` (1-based) of the `total` steps of one solve (an ODE/SDE or a
    denoising trajectory); it costs nothing when no command listens."""
    listener = _solver_step_listener.get()
    if listener is not None:
        listener(done, total)


@contextlib.contextmanager
def listening_to_solver_steps(callback: Callable[[int, int], None]):
    """Within this context every `solver_step(done, total)` calls `callback(done, total)`."""
    token = _solver_step_listener.set(callback)
    try:
        yield
    finally:
        _solver_step_listener.reset(token)


class SolverStepBar(ProgressBar):
    """Solver steps towards `frames` predicted frames, with the frames finished beside them.

    Backends say how many frames a solve produces before it starts (`frames_started`) and when they are
    done (`frames_done`); the total is then this solve's steps per frame times the frames left, exact
    when the solves are alike. A model that predicts all frames in one solve (Seer's window) still
    advances on every denoising step.
    """

    def __init__(self, description: str, frames: int, **options):
        super().__init__(description, None, unit="steps", fields={"frames": f"0/{frames} frames"}, **options)
        self.frames_total, self.frames_finished, self.frames_in_flight = frames, 0, 0

    def frames_started(self, count: int) -> None:
        self.frames_in_flight = count

    def solver_step(self, done: int, total: int) -> None:
        estimate = None
        if self.frames_in_flight:
            frames_after = max(0, self.frames_total - self.frames_finished - self.frames_in_flight)
            steps_left = total - done + round(frames_after * total / self.frames_in_flight)
            estimate = self._completed + 1 + steps_left
        self.update(completed=self._completed + 1, total=estimate)

    def frames_done(self, count: int) -> None:
        self.frames_finished += count
        self.frames_in_flight = 0
        self.update(frames=f"{self.frames_finished}/{self.frames_total} frames")
