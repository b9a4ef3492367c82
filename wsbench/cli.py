"""The ``wsbench`` command line."""

from __future__ import annotations

import difflib
import inspect
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from wsbench import __version__, cli_phantom, cli_train
from wsbench.cli_datasets import DatasetOptions, parse_options
from wsbench.cli_datasets import check as check_datasets
from wsbench.registry import DATASETS_GROUP, METHODS_GROUP, declared, import_target

console = Console()
err_console = Console(stderr=True)

EXAMPLES = """\
Examples:

  wsbench run --method otsu --dataset phantom       # built-in phantom, nothing downloaded

  wsbench run --method hideseek --dataset tcia --root ~/data/Spine-Mets-CT-SEG

  wsbench run --method my_pkg.mod:MyMethod --dataset phantom   # a plugin not installed

  wsbench methods                                    # what is registered (nothing imported)
"""

app = typer.Typer(
    help=f"Benchmark weakly supervised segmentation of vertebral metastases in CT.\n\n{EXAMPLES}",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(help="List dataset adapters, or check a dataset.", no_args_is_help=False)
app.add_typer(datasets_app, name="datasets")
datasets_app.command("check")(check_datasets)
app.add_typer(cli_train.app, name="train")
app.add_typer(cli_phantom.app, name="phantom")

STATE = {"debug": False}

Threads = Annotated[
    int | None,
    typer.Option(
        help="CPU threads for torch (default: torch's choice, usually every core). The DDIM "
        "methods' masks can differ in a few pixels between thread counts; the manifest records it."
    ),
]


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn any failure into one clear line (the traceback only with --debug)."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/] — finished vertebrae are kept; "
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


def version_callback(value: bool) -> None:
    """Print the version and stop."""
    if value:
        console.print(f"wsbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=version_callback, is_eager=True, help="Show version."),
    ] = None,
) -> None:
    """wsbench: benchmark harness for weakly supervised vertebral metastasis segmentation."""
    STATE["debug"] = debug


def parse_params(items: list[str], method: str) -> dict[str, Any]:
    """``key=value`` pairs typed by the method constructor's annotations or defaults."""
    from wsbench.registry import load_method

    cls = load_method(method)
    signature = inspect.signature(cls.__init__)
    accepted = {n: p for n, p in signature.parameters.items() if n != "self"}
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not of the form key=value", param_hint="--param")
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(accepted) or "none"
            raise typer.BadParameter(
                f"method {method!r} has no parameter {name!r}.{hint} Parameters: {known}",
                param_hint="--param",
            )
        params[name] = coerce(text, accepted[name].default)
    return params


def coerce(text: str, default: Any) -> Any:
    """Convert ``text`` to the type of ``default`` (bool, int, float), else keep the string."""
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered not in {"true", "false", "1", "0", "yes", "no"}:
            raise typer.BadParameter(f"{text!r} is not a boolean", param_hint="--param")
        return lowered in {"true", "1", "yes"}
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(text)
            except ValueError:
                raise typer.BadParameter(f"{text!r} is not {kind.__name__}") from None
    return text


@app.command()
def run(
    method: Annotated[str, typer.Option("--method", "-m", help="Method name or module:Class.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")] = "phantom",
    root: Annotated[Path | None, typer.Option(help="Dataset folder (not for phantom).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: test or train.")] = "test",
    out: Annotated[Path, typer.Option(help="Folder that receives run directories.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Seed: same seed, same numbers.")] = 0,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="Method parameter key=value (repeatable)."),
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model weights for methods that take a checkpoint.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the newest interrupted run of this configuration.")
    ] = False,
    dataset_option: DatasetOptions = None,
    threads: Threads = None,
) -> None:
    """Run a method on a dataset split, evaluate every vertebra and print the summary."""
    from wsbench.report import print_summary
    from wsbench.runner import RunConfig, torch_threads
    from wsbench.runner import run as run_config

    with user_errors():
        torch_threads(threads)
        if split not in {"test", "train"}:
            raise typer.BadParameter(f"{split!r} is not test or train", param_hint="--split")
        params = parse_params(param or [], method)
        if checkpoint is not None:
            params["checkpoint"] = str(checkpoint)
        options = parse_options(dataset_option or [])
        config = RunConfig(
            method, dataset, split, seed, str(root) if root else None, params, options
        )
        with progress_bar() as bar:
            task = bar.add_task(f"{method} on {dataset}", total=None)

            def advance(done: int, total: int, vertebra: str) -> None:
                bar.update(task, completed=done, total=total, description=vertebra)

            result = run_config(config, out, resume=resume, progress=advance)
        print_summary(result, console)


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory: runs/<dataset>/<method>/<id>.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <run_dir>/export).")
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="nifti, or dicom-seg for DICOM datasets (tcia).")
    ] = "nifti",
) -> None:
    """Write a run's predicted lesion masks into each source CT's grid, for viewers."""
    from wsbench.export import export_run

    with user_errors():
        target = out or run_dir / "export"
        written = export_run(run_dir, target, fmt)  # type: ignore[arg-type]
        table = Table(title=f"exported to {target}")
        for column in ("file", "vertebrae"):
            table.add_column(column)
        for item in written:
            table.add_row(item.path.name, ", ".join(item.vertebrae))
        console.print(table)


@app.command("bench")
def bench_command(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset name.")] = "phantom",
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods (default: all registered).")
    ] = None,
    root: Annotated[Path | None, typer.Option(help="Dataset folder (not for phantom).")] = None,
    out: Annotated[Path, typer.Option(help="Folder that receives run directories.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Seed for every run.")] = 0,
    dataset_option: DatasetOptions = None,
    fresh: Annotated[
        bool,
        typer.Option(
            help="Run every method afresh even if a finished run of the same configuration, "
            "method version and harness version exists."
        ),
    ] = False,
    threads: Threads = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="Torch device (cpu, cuda, cuda:N, mps) for every method that takes a `device` "
            "parameter (hideseek, ad, medsam); `wsbench run` takes it as -p device=…"
        ),
    ] = None,
) -> None:
    """Run every method (or --methods) on a dataset; failures are recorded, finished runs kept."""
    from wsbench.bench import bench
    from wsbench.nets.device import torch_device
    from wsbench.runner import torch_threads

    with user_errors(), progress_bar() as bar:
        torch_threads(threads)
        if device is not None:
            torch_device(device)  # a device this machine lacks stops the bench before any run

        def on_method(name: str, config: object):
            task = bar.add_task(name, total=None)

            def advance(done: int, total: int, vertebra: str) -> None:
                bar.update(task, completed=done, total=total, description=f"{name} {vertebra}")

            return advance

        names = [m.strip() for m in methods.split(",")] if methods else None
        options = parse_options(dataset_option or [])
        root_text = str(root) if root else None
        outcomes = bench(dataset, out, names, root_text, seed, on_method, options, fresh, device)
    table = Table(title=f"bench on {dataset}")
    for column in ("method", "status", "run directory or reason"):
        table.add_column(column)
    colours = {"ok": "green", "not run": "yellow", "failed": "red"}
    for name, outcome in outcomes.items():
        status = outcome["status"]
        detail = outcome["run_dir"] if status == "ok" else outcome["reason"]
        table.add_row(name, f"[{colours[status]}]{status}[/]", detail)
    console.print(table)


@app.command("leaderboard")
def leaderboard_command(
    runs: Annotated[Path, typer.Option(help="Folder of run directories.")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="Where the tables are published.")] = Path(
        "leaderboard"
    ),
) -> None:
    """Publish ranked tables (markdown, CSV, HTML with figures): per method, the run the last
    `wsbench bench` recorded, else its newest finished run."""
    from wsbench.publish import publish

    with user_errors():
        if not runs.is_dir():
            raise FileNotFoundError(f"runs folder {runs} does not exist; run `wsbench bench` first")
        published = publish(runs, out)
        if not published:
            raise FileNotFoundError(f"no finished runs under {runs}")
        for name in published:
            console.print(f"published {out / name}.md, .csv, .html")


def progress_bar() -> Progress:
    """The rich progress bar used for long work."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


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


@app.command()
def methods(
    check: Annotated[bool, typer.Option(help="Import each plugin and report failures.")] = False,
) -> None:
    """List the registered methods (reads metadata only unless --check)."""
    with user_errors():
        console.print(plugin_table(METHODS_GROUP, "wsbench methods", check))


@datasets_app.callback(invoke_without_command=True)
def datasets(
    ctx: typer.Context,
    check_imports: Annotated[
        bool, typer.Option("--check-imports", help="Import each adapter and report failures.")
    ] = False,
) -> None:
    """List the registered dataset adapters (reads metadata only)."""
    if ctx.invoked_subcommand is None:
        with user_errors():
            console.print(plugin_table(DATASETS_GROUP, "wsbench datasets", check_imports))
