"""The one progress bar of wsbench: description, bar, done/total, elapsed time and ETA on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(enabled: bool = True, transient: bool = False) -> Progress:
    """A rich progress bar on stderr for any long loop (runs, training, dataset preparation).

    ``enabled=False`` draws nothing (quiet library use and tests); ``transient`` erases the bar
    when its ``with`` block ends.
    """
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=transient,
    )


T = TypeVar("T")


def on_terminal() -> bool:
    """Whether stderr is a terminal (bars of preparation steps are drawn only there)."""
    return Console(stderr=True).is_terminal


def progress_over(items: Sequence[Any], description: str) -> Iterator[Any]:
    """Iterate over ``items`` with a transient bar on a terminal, silently otherwise."""
    with progress_bar(enabled=on_terminal(), transient=True) as bar:
        yield from bar.track(items, description=description)


def with_progress(
    description: str, total: int, work: Callable[[Callable[[int, int], None] | None], T]
) -> T:
    """Run ``work(callback)`` where ``callback(done, total)`` advances a transient bar on a
    terminal (``None`` elsewhere, so ``work`` skips the bookkeeping)."""
    if not on_terminal():
        return work(None)
    with progress_bar(transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: int, of: int) -> None:
            bar.update(task, completed=done, total=of)

        return work(advance)
