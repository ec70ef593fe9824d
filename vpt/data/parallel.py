"""Process-pool plumbing and the progress bar shared by make-data, extract-frames and convert-h5."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from vpt.progress import ProgressBar, format_rate


def default_workers() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork starts workers in milliseconds and these commands never touch CUDA or threads before it.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker must not outlive its main process.

    A main process killed with SIGKILL cannot stop its pool, and orphaned workers would keep writing
    into the folders a rerun is working on. Linux kills them itself (PR_SET_PDEATHSIG); elsewhere a
    thread polls for the parent.
    """
    if not _kill_me_with_parent():
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def exit_with_parent() -> Callable[[int], None]:
    """`DataLoader(..., worker_init_fn=exit_with_parent())`: its workers die with the process that built
    the loader, even by kill -9, as the pools here do (torch's own check lets them live ~5 s longer)."""
    return functools.partial(_worker_exits_with_parent, os.getpid())


def _worker_exits_with_parent(parent: int, worker_id: int) -> None:
    _die_with_parent(parent)


def _kill_me_with_parent() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) == 0
    except (OSError, AttributeError):
        return False


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def parallel_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, *, ordered: bool = True
) -> Iterator[Any]:
    """`map(fn, items)` over `workers` processes (in-process when workers <= 1).

    At most 4 x workers tasks are in flight, so results that the caller consumes slowly (a shard
    writer) never pile up in memory. `ordered=False` yields results as they finish.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    items = iter(items)
    window = 4 * workers
    with _pool(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield from _drain(pending, ordered, until=window - 1)
            yield from _drain(pending, ordered, until=0)
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _drain(pending: deque[Future], ordered: bool, until: int) -> Iterator[Any]:
    while len(pending) > until:
        if ordered:
            yield pending.popleft().result()
        else:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                pending.remove(future)
                yield future.result()


class MediaProgress(ProgressBar):
    """A progress bar counting videos, with frames and frames/s beside it."""

    def __init__(self, total: int, description: str):
        super().__init__(description, total, unit="videos", fields={"frames": "0 frames"}, rate=False)
        self.frames = 0

    def advance(self, videos: int = 1, frames: int = 0) -> None:
        self.frames += frames
        super().advance(videos, frames=f"{self.frames:,} frames  {format_rate(self.frames, self.elapsed, 'frames')}")
