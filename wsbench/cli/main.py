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
from wsbench.contract import SLICE_STEP, slice_offsets
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

Slices = Annotated[
    int,
    typer.Option(
        "--slices",
        help="Sagittal slices evaluated per vertebra: 1 (the paper's mid-sagittal slice) or an "
        "odd K, the centre and pairs --slice-step apart either side, each segmented on its own "
        "and scored as one slab against the centre slice alone (docs/evaluation.md).",
    ),
]
SliceStep = Annotated[
    int,
    typer.Option(
        "--slice-step",
        help=f"Distance between evaluated slices, in slices of the 0.8 mm grid (default "
        f"{SLICE_STEP}: 5 slices span ±{2 * SLICE_STEP * 0.8:g} mm, the central part of a "
        "lumbar body).",
    ),
]

Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Worker processes of a local Dask cluster, each segmenting chunks of vertebrae with "
        "--threads torch threads; 1 (default) runs in this process. Results are the same "
        "(docs/distributed.md).",
    ),
]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address (tcp://HOST:PORT) of a running Dask scheduler whose workers have wsbench "
        "installed and the model store (WSBENCH_CACHE) at the same path; used instead of "
        "--workers.",
    ),
]

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
    slices: Slices = 1,
    slice_step: SliceStep = SLICE_STEP,
    workers: Workers = 1,
    scheduler: Scheduler = None,
) -> None:
    """Run a method on a dataset split, evaluate every vertebra and print the summary."""
    from wsbench.harness.params import method_params
    from wsbench.harness.provenance import torch_threads
    from wsbench.harness.registry import load_method

    with user_errors():
        dataset_adapter(dataset, root)
        if split not in {"test", "train"}:
            raise ValueError(f"--split {split!r}: give test or train")
        slice_offsets(slices, slice_step)
        options = parse_dataset_options(dataset, dataset_option)
        from wsbench.harness.runner import RunConfig  # heavy: after the quick checks above
        from wsbench.harness.runner import run as run_config
        from wsbench.report.summary import print_summary

        torch_threads(threads)
        params = method_params(load_method(method), [*(param or [])])
        if checkpoint is not None:
            params.update(method_params(load_method(method), [f"checkpoint={checkpoint}"]))
        config = RunConfig(
            method, dataset, split, seed, str(root) if root else None, params, options,
            slices, slice_step,
        )  # fmt: skip
        with progress_bar() as bar:
            what = f"{method} on {dataset}"
            task = bar.add_task(what, total=None)

            def advance(done: int, total: int, vertebra: str) -> None:
                bar.update(task, completed=done, total=total, description=f"{what} {vertebra}")

            def warn(message: str) -> None:
                bar.console.print(f"[yellow]warning:[/] {message}", highlight=False)

            if workers > 1 or scheduler is not None:
                from wsbench.harness.distributed import run_distributed

                result = run_distributed(config, out, workers, scheduler, resume, advance,
                                         timeout, not keep_failed, warn)  # fmt: skip
            else:
                result = run_config(config, out, resume=resume, progress=advance,
                                    timeout_s=timeout, retry_failed=not keep_failed,
                                    notify=warn)  # fmt: skip
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


@app.command("compact")
def compact_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A trained model's weights file, its card beside it.")
    ],
    dtype: Annotated[
        str,
        typer.Option(
            help="Storage dtype of its float32 tensors: float16, bfloat16 or int8 "
            "(per-channel weights, float16 for the rest)."
        ),
    ] = "float16",
) -> None:
    """Rewrite a trained model for shipping: <stem>.safetensors beside it, float32 weights stored
    as DTYPE (computed in float32 when loaded), its card naming the new file, dtype and SHA-256.
    The original file is kept until you remove it. Measure the dtype first
    (`python benchmarks/experiment.py weights-precision CHECKPOINT`)."""
    from wsbench.models.store import compact_weights, file_identity

    with user_errors():
        path = compact_weights(checkpoint, dtype)
        console.print(
            f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, identity "
            f"{file_identity(path)}); its card names it, so {checkpoint.name} can be removed"
        )


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
    slices: Slices = 1,
    slice_step: SliceStep = SLICE_STEP,
    workers: Workers = 1,
    scheduler: Scheduler = None,
) -> None:
    """Run every method (or --methods, in that order) on a dataset, quick ones first: those
    that train nothing, then by their time limit per vertebra. Prints the plan first; failures
    are recorded, finished runs kept. With --workers N or --scheduler, all methods' vertebrae
    are shared among Dask workers."""
    from wsbench.harness.provenance import torch_threads

    with user_errors(BENCH_RESUME_HINT):
        dataset_adapter(dataset, root)
        options = parse_dataset_options(dataset, dataset_option)
        slice_offsets(slices, slice_step)
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
                bar.console.print(plan_table(dataset, plan, None if scheduler else workers))

            outcomes = bench(dataset, out, names, root_text, seed, on_method, options, fresh,
                             device, timeout_s=timeout, retry_failed=not keep_failed,
                             on_plan=on_plan, slices=slices, slice_step=slice_step,
                             workers=workers, scheduler=scheduler)  # fmt: skip
    console.print(bench_table(dataset, outcomes))
    crashed = [name for name, outcome in outcomes.items() if outcome["status"] == "failed"]
    if crashed:
        err_console.print(f"[bold red]error:[/] {', '.join(crashed)} crashed (reasons above)")
        raise typer.Exit(1)


def duration_text(seconds: float | None) -> str:
    """``H:MM:SS``, or ``unknown`` for ``None``."""
    return "unknown" if seconds is None else str(timedelta(seconds=round(seconds)))


def plan_table(dataset: str, plan: list[PlannedRun], workers: int | None = 1) -> Table:
    """The methods a bench runs, in order: what it does with each, the vertebrae it has left
    to segment and how long that is expected to take at the speed of its newest finished run;
    the caption gives the total, divided among ``workers`` (``None``: a cluster's, unknown)."""
    table = Table(title=f"bench plan on {dataset}: {len(plan)} methods, in this order")
    for column in ("#", "method", "action", "vertebrae", "expected"):
        table.add_column(column)
    actions = {"reuse": "reuse finished run", "resume": "resume", "run": "run",
               "fail": "cannot load: recorded as failed"}  # fmt: skip
    for number, item in enumerate(plan, 1):
        count = "unknown" if item.to_segment is None else str(item.to_segment)
        table.add_row(str(number), item.method, actions[item.action], count,
                      duration_text(item.expected_s))  # fmt: skip
    known = [item.expected_s for item in plan if item.expected_s is not None]
    unknown = len(plan) - len(known)
    total = sum(known) / workers if workers else sum(known)
    per = f"on {workers} worker(s)" if workers else "on one worker (divide by the cluster's)"
    more = f", plus {unknown} method(s) of unknown speed" if unknown else ""
    table.caption = f"expected: {duration_text(total)} {per}{more}"
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
        list[Path],
        typer.Argument(
            help="Finished run folders, or a bench's dataset folder (OUT/DATASET: the run its "
            "bench recorded per method); the first run is the reference."
        ),
    ],
    figure: Annotated[
        Path | None,
        typer.Option(help="Also draw the runs' answers side by side into this PNG file."),
    ] = None,
    vertebra: Annotated[
        list[str] | None,
        typer.Option(
            help="A vertebra id (as in cases.csv) the figure shows; repeatable.", metavar="ID"
        ),
    ] = None,
) -> None:
    """Compare runs on the same dataset split (other parameters or other methods): headline
    metrics per category with paired Wilcoxon p against the first run, false positives on
    healthy vertebrae, the phenotype each run's kept candidates imply and, with --figure, every
    run's answer overlaid on the same slices (default: the first 6 vertebrae by id)."""
    from wsbench.report.compare import (
        comparable,
        figure_vertebrae,
        finished_runs,
        healthy_false_positives,
        implied_phenotypes,
        metric_rows,
    )

    with user_errors():
        runs = comparable(finished_runs(run_dirs))
        rows = metric_rows(runs)
        if len(rows):
            console.print(frame_table(rows, "mean (n) per category; p vs the first run"))
        fp = healthy_false_positives(runs).round(2).rename("FP lesions per healthy vertebra")
        if fp.notna().any():
            console.print(frame_table(fp.rename_axis("run").reset_index(), "healthy vertebrae"))
        for name, run in runs.items():
            implied = implied_phenotypes(run)
            if implied is not None and len(implied):
                title = f"phenotype implied by kept candidates — {name}"
                console.print(frame_table(implied.reset_index(), title))
        if figure is not None:
            shown = figure_vertebrae(runs, vertebra or [], FIGURE_VERTEBRAE)
            write_comparison_figure(runs, shown, figure)
            console.print(f"figure of {len(shown)} vertebrae × {len(runs)} runs → {figure}")


FIGURE_VERTEBRAE = 6
"""Vertebrae a comparison figure shows when none is chosen: a grid that stays readable."""


def write_comparison_figure(runs: dict, vertebrae: list[str], path: Path) -> None:
    """Draw the runs' answers on ``vertebrae`` side by side into the PNG ``path``."""
    from wsbench.harness.rundir import RunError
    from wsbench.report.publish import overlay_grid, plt

    reference = next(iter(runs.values())).cases.set_index("vertebra")["category"]
    categories = {v: c for v, c in reference.items() if isinstance(c, str)}
    fig = overlay_grid({name: run.run_dir for name, run in runs.items()}, vertebrae, categories)
    if fig is None:
        raise RunError(f"no run stored a mask of {', '.join(vertebrae)}; nothing to draw")
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
