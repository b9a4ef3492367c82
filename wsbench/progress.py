"""The one progress display of wsbench, on stderr: rich bars (description, bar, done/total,
elapsed time and ETA) on a terminal; elsewhere (a file, CI, ``nohup``) one plain line per task
every :data:`LOG_EVERY_S` seconds and when it completes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_EVERY_S = 10.0
"""Seconds between two progress lines of a task when stderr is not a terminal."""


def progress_line(description: str, done: float, total: float | None, rate: float | None) -> str:
    """``<what>: done/total (pct), rate/s, ETA h:mm:ss`` (``?`` for what is not known yet);
    ``<what>: done/total (100%), rate/s, done`` once finished."""
    count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}/?"
    speed = f"{rate:.3g}/s" if rate else "?/s"
    if total and done >= total:
        return f"{description}: {count}, {speed}, done" if rate else f"{description}: {count}, done"
    left = (total - done) / rate if total and rate else None
    eta = str(timedelta(seconds=round(left))) if left is not None else "?"
    return f"{description}: {count}, {speed}, ETA {eta}"


class LoggedProgress(Progress):
    """A rich :class:`~rich.progress.Progress` that, with ``log_every_s`` set, prints
    :func:`progress_line` for each task that advanced, at most every ``log_every_s`` seconds
    and once when it completes; its bar is erased when its ``with`` block ends in an error."""

    def __init__(self, *columns: Any, log_every_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.log_every_s = log_every_s
        self.first_seen: dict[TaskID, tuple[float, float]] = {}
        self.logged_at: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        """Update a task as rich does, then log it when due."""
        super().update(task_id, **kwargs)
        self.log_when_due(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        """Advance a task as rich does, then log it when due."""
        super().advance(task_id, advance)
        self.log_when_due(task_id)

    def rate(self, task_id: TaskID, now: float) -> float | None:
        """Items per second since the task was first seen advancing (``None`` before that)."""
        task = self._tasks[task_id]
        since, done = self.first_seen.setdefault(task_id, (now, task.completed))
        return (task.completed - done) / (now - since) if now > since else None

    def log_when_due(self, task_id: TaskID) -> None:
        """Print the task's progress line if logging is on and the line is due."""
        if self.log_every_s is None:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        rate = self.rate(task_id, now)
        complete = task.total is not None and task.completed >= task.total
        if complete and self.logged_at.get(task_id) == float("inf"):
            return
        if complete or now - self.logged_at.setdefault(task_id, now) >= self.log_every_s:
            self.logged_at[task_id] = float("inf") if complete else now
            line = progress_line(task.description, task.completed, task.total, rate)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        """Stop the bar; a display that drew nothing prints nothing (rich adds an empty line)."""
        if not self.disable:
            super().stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.live.transient = True
        super().__exit__(exc_type, exc_val, exc_tb)


def progress_bar(enabled: bool = True, transient: bool = False) -> Progress:
    """The progress display of any long loop (runs, training, dataset preparation): a rich bar
    on a terminal, :func:`progress_line` logs otherwise (:class:`LoggedProgress`).

    ``enabled=False`` shows nothing (quiet library use and tests); ``transient`` erases the bar
    when its ``with`` block ends.
    """
    console = Console(stderr=True)
    drawn = enabled and console.is_terminal
    return LoggedProgress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not drawn,
        transient=transient,
        log_every_s=LOG_EVERY_S if enabled and not drawn else None,
    )


T = TypeVar("T")


def progress_over(items: Sequence[Any], description: str) -> Iterator[Any]:
    """Iterate over ``items`` with a transient :func:`progress_bar`."""
    with progress_bar(transient=True) as bar:
        yield from bar.track(items, description=description)


def with_progress(
    description: str, total: int, work: Callable[[Callable[[int, int], None] | None], T]
) -> T:
    """Run ``work(callback)`` where ``callback(done, total)`` advances a transient
    :func:`progress_bar`."""
    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, of: int) -> None:
            bar.update(task, completed=done, total=of)

        return work(advance)
