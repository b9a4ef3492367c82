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
from rich.table import Table

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


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn any failure into one clear line (the traceback only with --debug)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/] — finished work is kept; "
            "run the same command with --resume to continue"
        )
        raise typer.Exit(130) from None
    except Exception as exc:
        if STATE["debug"]:
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc}{advice(exc)}", highlight=False)
        if not STATE["debug"]:
            err_console.print("[dim](add --debug for the traceback)[/]")
        raise typer.Exit(1) from None


def parse_dataset_options(dataset: str, items: list[str] | None) -> dict[str, Any]:
    """``-o key=value`` items typed for the options ``dataset``'s adapter declares; an unknown
    key or a value of the wrong type raises a ``ValueError`` naming the key (one line under
    :func:`user_errors`)."""
    return dataset_options(load_dataset(dataset), items or [])


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
        help="With --resume, keep failed and timed-out vertebrae instead of retrying them.",
    ),
]
Threads = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="CPU threads for torch (default: torch's choice, usually every core). The DDIM "
        "methods' masks can differ in a few pixels between thread counts; the manifest records it.",
    ),
]


def plugin_table(group: str, title: str, check: bool) -> Table:
    """Registered plugins of ``group``; with ``check`` each is imported and its status shown."""
    table = Table(title=title)
    for column in ("name", "target", "distribution"):
        table.add_column(column)
    if check:
        table.add_column("status")
    for info in declared(group).values():
        row = [info.name, info.target, info.distribution]
        if check:
            try:
                import_target(info.target)
                row.append("[green]ok[/]")
            except Exception as exc:
                row.append(f"[red]{exc}[/]")
        table.add_row(*row)
    return table
