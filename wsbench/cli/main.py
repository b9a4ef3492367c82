"""The ``wsbench`` command line.

Commands that plugins add (``wsbench phantom`` comes from the phantom dataset) are declared in
the ``wsbench.commands`` entry-point group as Typer apps and mounted under their entry-point
name; one that fails to import is left out with a warning, never stopping the others.
"""

from __future__ import annotations

import inspect
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from wsbench import __version__
from wsbench.cli import datasets as cli_datasets
from wsbench.cli import train as cli_train
from wsbench.cli.common import (
    DEFAULT_DATASET,
    DEFAULT_THREADS,
    FLAG,
    STATE,
    DatasetName,
    DatasetOptions,
    KeepFailed,
    Param,
    Root,
    Threads,
    Timeout,
    console,
    dataset_adapter,
    err_console,
    parse_dataset_options,
    plugin_table,
    user_errors,
)
from wsbench.harness.registry import (
    COMMANDS_GROUP,
    METHODS_GROUP,
    PluginError,
    declared,
    import_target,
)
from wsbench.progress import progress_bar

if TYPE_CHECKING:
    from wsbench.harness.bench import PlannedRun

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
app.add_typer(cli_datasets.app, name="datasets")
app.command("train")(cli_train.train)


def mount_commands(root: typer.Typer) -> None:
    """Mount every Typer app declared in the ``wsbench.commands`` group under its name."""
    for info in declared(COMMANDS_GROUP).values():
        try:
            command = import_target(info.target)
        except PluginError as exc:
            err_console.print(f"[yellow]warning:[/] command {info.name!r} left out: {exc}")
            continue
        if not isinstance(command, typer.Typer):
            err_console.print(f"[yellow]warning:[/] command {info.name!r} left out: "
                              f"{info.target} is not a typer.Typer")  # fmt: skip
            continue
        root.add_typer(command, name=info.name)


mount_commands(app)


def version_callback(value: bool) -> None:
    """Print the version and stop."""
    if value:
        console.print(f"wsbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[
        bool, typer.Option("--debug", metavar=FLAG, help="Show tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=version_callback,
            is_eager=True,
            metavar=FLAG,
            help="Show version.",
        ),
    ] = None,
) -> None:
    """wsbench: benchmark harness for weakly supervised vertebral metastasis segmentation."""
    STATE["debug"] = debug


@app.command()
def run(
    method: Annotated[str, typer.Option("--method", "-m", help="Method name or module:Class.")],
    dataset: DatasetName = DEFAULT_DATASET,
    root: Root = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: test or train.")] = "test",
    out: Annotated[Path, typer.Option(help="Folder that receives run directories.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Seed: same seed, same numbers.")] = 0,
    param: Param = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Model weights for methods that take a checkpoint: a file, or a model identity "
            "(<stem>-<sha256[:12]>) as a run manifest records it."
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            metavar=FLAG,
            help="Continue the newest interrupted run of this configuration.",
        ),
    ] = False,
    dataset_option: DatasetOptions = None,
    threads: Threads = DEFAULT_THREADS,
    timeout: Timeout = None,
    keep_failed: KeepFailed = False,
) -> None:
    """Run a method on a dataset split, evaluate every vertebra and print the summary."""
    from wsbench.harness.params import method_params
    from wsbench.harness.provenance import torch_threads
    from wsbench.harness.registry import load_method

    with user_errors():
        dataset_adapter(dataset, root)
        if split not in {"test", "train"}:
            raise ValueError(f"--split {split!r}: give test or train")
        options = parse_dataset_options(dataset, dataset_option)
        from wsbench.harness.runner import RunConfig  # heavy: after the quick checks above
        from wsbench.harness.runner import run as run_config
        from wsbench.report.summary import print_summary

        torch_threads(threads)
        params = method_params(load_method(method), [*(param or [])])
        if checkpoint is not None:
            params.update(method_params(load_method(method), [f"checkpoint={checkpoint}"]))
        config = RunConfig(
            method, dataset, split, seed, str(root) if root else None, params, options
        )
        with progress_bar() as bar:
            what = f"{method} on {dataset}"
            task = bar.add_task(what, total=None)

            def advance(done: int, total: int, vertebra: str) -> None:
                bar.update(task, completed=done, total=total, description=f"{what} {vertebra}")

            def warn(message: str) -> None:
                bar.console.print(f"[yellow]warning:[/] {message}", highlight=False)

            result = run_config(config, out, resume=resume, progress=advance, timeout_s=timeout,
                                retry_failed=not keep_failed, notify=warn)  # fmt: skip
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
    """Write a run's predicted lesion masks into each source CT's grid, for viewers (from the
    run directory alone: the dataset is not prepared again)."""
    from wsbench.report.export import export_run

    with user_errors():
        target = out or run_dir / "export"
        written = export_run(run_dir, target, fmt)  # type: ignore[arg-type]
        table = Table(title=f"exported to {target}")
        for column in ("file", "vertebrae"):
            table.add_column(column)
        for item in written:
            table.add_row(item.path.name, ", ".join(item.vertebrae))
        console.print(table)


BENCH_RESUME_HINT = "run the same command again: finished runs are kept, unfinished ones resumed"
"""How to continue an interrupted bench (it resumes by itself)."""


@app.command("bench")
def bench_command(
    dataset: DatasetName = DEFAULT_DATASET,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods (default: every registered method that does not opt "
            "out of the bench)."
        ),
    ] = None,
    root: Root = None,
    out: Annotated[Path, typer.Option(help="Folder that receives run directories.")] = Path("runs"),
    seed: Annotated[int, typer.Option(help="Seed for every run.")] = 0,
    dataset_option: DatasetOptions = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            metavar=FLAG,
            help="Run every method afresh even if a finished run of the same configuration, "
            "method version and harness version exists.",
        ),
    ] = False,
    threads: Threads = DEFAULT_THREADS,
    timeout: Timeout = None,
    keep_failed: KeepFailed = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="Torch device (cpu, cuda, cuda:N, mps) for every method that takes a `device` "
            "parameter; `wsbench run` takes it as -p device=…"
        ),
    ] = None,
) -> None:
    """Run every method (or --methods, in that order) on a dataset, quick ones first: those
    that train nothing, then by their time limit per vertebra. Prints the plan first; failures
    are recorded, finished runs kept."""
    from wsbench.harness.provenance import torch_threads

    with user_errors(BENCH_RESUME_HINT):
        dataset_adapter(dataset, root)
        options = parse_dataset_options(dataset, dataset_option)
        from wsbench.harness.bench import bench  # heavy: after the quick checks above
        from wsbench.models.device import torch_device

        torch_threads(threads)
        if device is not None:
            torch_device(device)  # a device this machine lacks stops the bench before any run
        with progress_bar() as bar:

            def on_method(name: str, config: object):
                task = bar.add_task(name, total=None)

                def advance(done: int, total: int, vertebra: str) -> None:
                    bar.update(task, completed=done, total=total, description=f"{name} {vertebra}")

                return advance

            names = [m.strip() for m in methods.split(",")] if methods else None
            root_text = str(root) if root else None

            def on_plan(plan: list[PlannedRun]) -> None:
                bar.console.print(plan_table(dataset, plan))

            outcomes = bench(dataset, out, names, root_text, seed, on_method, options, fresh,
                             device, timeout_s=timeout, retry_failed=not keep_failed,
                             on_plan=on_plan)  # fmt: skip
    console.print(bench_table(dataset, outcomes))
    crashed = [name for name, outcome in outcomes.items() if outcome["status"] == "failed"]
    if crashed:
        err_console.print(f"[bold red]error:[/] {', '.join(crashed)} crashed (reasons above)")
        raise typer.Exit(1)


def plan_table(dataset: str, plan: list[PlannedRun]) -> Table:
    """The methods a bench runs, in order: what it does with each and how long its newest
    finished run took to segment."""
    table = Table(title=f"bench plan on {dataset}: {len(plan)} methods, in this order")
    for column in ("#", "method", "action", "last segment time"):
        table.add_column(column)
    actions = {"reuse": "reuse finished run", "resume": "resume", "run": "run",
               "fail": "cannot load: recorded as failed"}  # fmt: skip
    for number, item in enumerate(plan, 1):
        seconds = item.last_segment_s
        known = "unknown" if seconds is None else str(timedelta(seconds=round(seconds)))
        table.add_row(str(number), item.method, actions[item.action], known)
    return table


def bench_table(dataset: str, outcomes: dict[str, dict[str, Any]]) -> Table:
    """One row per method: its status (with its failed, timed-out and refused vertebrae) and
    its run directory or the reason it did not run."""
    table = Table(title=f"bench on {dataset}")
    for column in ("method", "status", "run directory or reason"):
        table.add_column(column)
    colours = {"ok": "green", "not run": "yellow", "failed": "red"}
    for name, outcome in outcomes.items():
        status = outcome["status"]
        detail = outcome["run_dir"] if status == "ok" else outcome["reason"]
        counts = [f"{outcome[k]} {k}" for k in ("failed", "timeout", "refused") if outcome.get(k)]
        faulty = status == "ok" and (outcome.get("failed") or outcome.get("timeout"))
        colour = "yellow" if faulty else colours[status]
        label = f"{status} ({', '.join(counts)})" if counts else status
        table.add_row(name, f"[{colour}]{label}[/]", detail)
    return table


@app.command("leaderboard")
def leaderboard_command(
    runs: Annotated[Path, typer.Option(help="Folder of run directories.")] = Path("runs"),
    out: Annotated[Path, typer.Option(help="Where the tables are published.")] = Path(
        "leaderboard"
    ),
    exclude_failed: Annotated[
        bool,
        typer.Option(
            "--exclude-failed",
            metavar=FLAG,
            help="Leave methods that failed or timed out on any vertebra out of the tables; "
            "they are listed under them instead (by default they are ranked, marked †, with "
            "those vertebrae scored as an empty answer).",
        ),
    ] = False,
) -> None:
    """Publish ranked tables (markdown, CSV, HTML with figures): per method, the run the last
    `wsbench bench` recorded, else its newest finished run."""
    from wsbench.report.publish import publish

    with user_errors():
        if not runs.is_dir():
            raise FileNotFoundError(f"runs folder {runs} does not exist; run `wsbench bench` first")
        published = publish(runs, out, exclude_failed)
        if not published:
            raise FileNotFoundError(f"no finished runs under {runs}")
        for name, failing in published.items():
            console.print(f"published {out / name}.md, .csv, .html")
            for method, note in failing.items():
                what = ("excluded from the tables" if exclude_failed else
                        "ranked with those scored as an empty answer (--exclude-failed leaves it "
                        "out)")  # fmt: skip
                console.print(f"  [yellow]{method}[/]: {note}; {what}")


@app.command("compare")
def compare_command(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Finished run folders; the first is the reference.")
    ],
) -> None:
    """Compare runs on the same dataset split (other parameters or other methods): headline
    metrics per category with paired Wilcoxon p against the first run, false positives on
    healthy vertebrae, and the phenotype each run's kept candidates imply."""
    from wsbench.report.compare import (
        comparable,
        finished_run,
        healthy_false_positives,
        implied_phenotypes,
        metric_rows,
    )

    with user_errors():
        runs = comparable([finished_run(path) for path in run_dirs])
        console.print(frame_table(metric_rows(runs), "mean (n) per category; p vs the first run"))
        fp = healthy_false_positives(runs).round(2).rename("FP lesions per healthy vertebra")
        console.print(frame_table(fp.rename_axis("run").reset_index(), "healthy vertebrae"))
        for name, run in runs.items():
            implied = implied_phenotypes(run)
            if implied is not None:
                title = f"phenotype implied by kept candidates — {name}"
                console.print(frame_table(implied.reset_index(), title))


def frame_table(frame, title: str) -> Table:
    """A pandas table as a rich table."""
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*[str(value) for value in row])
    return table


def parameter_table(title: str, parameters: dict, hints: dict) -> Table:
    """Name, type and default of each parameter."""
    table = Table(title=title)
    for column in ("name", "type", "default"):
        table.add_column(column)
    for name, parameter in parameters.items():
        hint = hints.get(name, parameter.annotation)
        kind = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        table.add_row(name, kind, repr(parameter.default))
    return table


@app.command()
def methods(
    name: Annotated[
        str | None, typer.Argument(help="A method to describe: its parameters and settings.")
    ] = None,
) -> None:
    """List the registered methods (what each is, needs and whether it is ready here), or
    describe one."""
    from wsbench.harness.params import constructor_hints, type_hints
    from wsbench.harness.registry import load_method

    with user_errors():
        if name is None:
            console.print(plugin_table(METHODS_GROUP, "wsbench methods"))
            return
        cls = load_method(name)
        console.print(f"[bold]{cls.name}[/] {cls.__module__}:{cls.__qualname__} v{cls.version}")
        console.print((cls.__doc__ or "").strip())
        console.print(f"needs: {cls.needs()}")
        console.print(f"ready here: {cls.readiness()}")
        console.print(f"time limit per vertebra: {cls.timeout_s:g} s (--timeout)")
        console.print(parameter_table("parameters (-p)", cls.parameters(), constructor_hints(cls)))
        if cls.train_settings():
            settings = parameter_table("training settings (wsbench train -t)",
                                       cls.train_settings(), type_hints(cls.train))  # fmt: skip
            console.print(settings)
            console.print(inspect.cleandoc(cls.train.__doc__ or ""))
