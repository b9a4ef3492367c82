"""What every ``wsbench`` command shares: consoles, one-line errors, and the common options."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from wsbench.harness.registry import declared, import_target

console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False}


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
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        if not STATE["debug"]:
            err_console.print("[dim](add --debug for the traceback)[/]")
        raise typer.Exit(1) from None


def parse_dataset_options(items: list[str] | None) -> dict[str, Any]:
    """Dataset adapter options from ``key=value`` pairs (the adapter converts the values)."""
    options = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            message = f"{item!r} is not of the form key=value"
            raise typer.BadParameter(message, param_hint="--dataset-option")
        options[name] = text
    return options


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
        "phantom, -o lesions=DIR for tcia.",
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
