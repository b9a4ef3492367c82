"""What every ``wsbench`` command shares: consoles, one-line errors, and the common options."""

from __future__ import annotations

import errno
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wsbench.contract import DatasetAdapter
from wsbench.harness.params import dataset_options
from wsbench.harness.registry import declared, import_target, load_dataset

console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


def advice(exc: Exception) -> str:
    """What to do about an error whose message cannot say it (a full disk), else ``""``."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return " — free space on that disk, or write elsewhere (--out, $WSBENCH_CACHE)"
    return ""


RESUME_HINT = "run the same command with --resume to continue"
"""How to continue an interrupted ``run`` or ``train``."""


@contextmanager
def user_errors(resume_hint: str = RESUME_HINT) -> Iterator[None]:
    """Turn any failure into one clear line (the traceback only with --debug); an interrupt
    says that finished work is kept and ``resume_hint``."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except KeyboardInterrupt:
        err_console.print(f"[yellow]interrupted[/] — finished work is kept; {resume_hint}")
        raise typer.Exit(130) from None
    except Exception as exc:
        if STATE["debug"]:
            traceback.print_exc()
        error_line(f"{exc}{advice(exc)}")
        raise typer.Exit(1) from None


def error_line(message: str) -> None:
    """Print ``error: message`` on stderr as one line, unwrapped at any terminal width (``wsbench
    --debug …`` adds the traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def dataset_adapter(dataset: str, root: Path | None) -> type[DatasetAdapter]:
    """The adapter registered as ``dataset``, checked to be given the ``--root`` it needs; a
    cheap check that commands make before any heavy import (a ``ValueError`` otherwise)."""
    adapter = load_dataset(dataset)
    if adapter.needs_root and root is None:
        raise ValueError(adapter.missing_root(dataset))
    return adapter


def parse_dataset_options(dataset: str, items: list[str] | None) -> dict[str, Any]:
    """``-o key=value`` items typed for the options ``dataset``'s adapter declares; an unknown
    key or a value of the wrong type raises a ``ValueError`` naming the key (one line under
    :func:`user_errors`)."""
    return dataset_options(load_dataset(dataset), items or [])


FLAG = ""
"""The metavar of boolean options: they take no value, so the help shows none."""

DEFAULT_DATASET = "phantom"
"""The dataset of commands run without ``--dataset``: the registered adapter that needs nothing
downloaded (a name only; the core never imports an adapter)."""
DatasetName = Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")]
Root = Annotated[
    Path | None, typer.Option("--root", "-r", help="Dataset folder (not for phantom).")
]
DatasetOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset-option",
        "-o",
        metavar="KEY=VALUE",
        help="Dataset adapter option key=value (repeatable), e.g. -o subjects=40 for the "
        "phantom, -o edge=exclude for inhouse, -o lesions=DIR for tcia; an unknown key lists "
        "the accepted ones (docs/datasets.md).",
    ),
]
Param = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        metavar="KEY=VALUE",
        help="Method parameter key=value (repeatable); `wsbench methods M` lists them.",
    ),
]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0,
        help="Seconds one vertebra may take before it is stopped and recorded as timeout "
        "(default: the method's own limit, shown by `wsbench methods M`; 0 = no limit).",
    ),
]
KeepFailed = Annotated[
    bool,
    typer.Option(
        "--keep-failed",
        metavar=FLAG,
        help="With --resume, keep failed and timed-out vertebrae instead of retrying them.",
    ),
]
DEFAULT_THREADS = 1
"""torch's CPU threads unless --threads says otherwise: one thread never spin-waits on a shared
machine (a DDIM decode took 7.2 s with one thread and 11.8 s with two beside two busy processes,
3.7 s and 2.1 s on two quiet cores), and it is the count the published leaderboard ran with."""
Threads = Annotated[
    int,
    typer.Option(
        min=1,
        help="CPU threads for torch. The default, 1, is safe on a shared machine; on idle cores "
        "more are faster (2 threads: 1.8× on a DDIM decode). The DDIM methods' masks can differ "
        "in a few pixels between thread counts; the manifest records it.",
    ),
]


def plugin_table(group: str, title: str) -> Table:
    """Registered plugins of ``group``, each imported: what it is, what it needs (methods) and
    whether it is ready here, and the package that declares it; a plugin that fails to import
    says why."""
    table = Table(title=title, show_lines=True)
    for column in ("name", "what it is", "needs", "ready here", "package"):
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "package"))
    for info in declared(group).values():
        try:
            cls = import_target(info.target)
            row = [cls.summary(), cls.needs(), cls.readiness()]
        except Exception as exc:  # a broken plugin is listed with its error, never hidden
            row = [info.target, "", f"[red]cannot import: {exc}[/]"]
        table.add_row(info.name, *row, info.distribution)
    return table
