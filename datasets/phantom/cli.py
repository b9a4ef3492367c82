"""``wsbench phantom``: write the synthetic phantom, insert lesions into real CT, show slices."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    help="Synthetic spine-metastasis CT: make it, insert its lesions into real CT, show it.",
    no_args_is_help=True,
)
console = Console(stderr=True)


class OutputFormat(str, Enum):
    """On-disk layouts ``make`` can write."""

    inhouse = "inhouse"
    tcia = "tcia"


@app.command()
def make(
    out: Annotated[Path, typer.Option(help="New folder to write (must not exist).")],
    subjects: Annotated[int, typer.Option(help="Number of subjects.")] = 340,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    format: Annotated[
        OutputFormat, typer.Option("--format", help="inhouse (BIDS NIfTI) or tcia (DICOM + SEG).")
    ] = OutputFormat.inhouse,
    test_fraction: Annotated[float, typer.Option(help="Share of test subjects.")] = 0.09,
) -> None:
    """Write a phantom dataset, e.g. `wsbench phantom make --out ph --subjects 20 --seed 1`."""
    from wsbench.datasets.phantom.generate import default_workers
    from wsbench.datasets.phantom.plan import PhantomOptions
    from wsbench.progress import with_progress

    options = PhantomOptions(subjects=subjects, seed=seed, test_fraction=test_fraction)
    if out.exists():
        raise typer.BadParameter(f"{out} already exists; choose a new folder", param_hint="--out")
    if format == OutputFormat.inhouse:
        from wsbench.datasets.phantom.generate import write_phantom

        with_progress(
            "generating phantom",
            subjects,
            lambda cb: write_phantom(out, options, default_workers(), cb),
        )
        console.print(f"wrote {subjects} subjects (in-house layout) → {out}")
        return
    from wsbench.datasets.phantom.generate import render_subject
    from wsbench.datasets.phantom.plan import plan_dataset
    from wsbench.datasets.phantom.tcia_writer import write_tcia

    volumes = [render_subject(plan) for plan in plan_dataset(options)]
    write_tcia(out, volumes)
    console.print(f"wrote {subjects} subjects (TCIA layout) → {out}")


@app.command()
def insert(
    source: Annotated[
        Path, typer.Option(help="Folder searched for CTs with vertebra masks (in-house names).")
    ],
    out: Annotated[Path, typer.Option(help="New folder to write (must not exist).")],
    seed: Annotated[int, typer.Option(help="Seed of the lesion / mimic plans and the split.")] = 0,
    copies: Annotated[int, typer.Option(help="Independent insertions per source subject.")] = 8,
    test_fraction: Annotated[float, typer.Option(help="Share of source subjects tested.")] = 0.3,
    keep_cut: Annotated[
        bool, typer.Option(help="Keep vertebrae cut by the scan's edge (left out by default).")
    ] = False,
) -> None:
    """Insert phantom lesions and mimics into copies of real vertebrae (exact lesion masks)."""
    from wsbench.datasets.phantom.generate import default_workers
    from wsbench.datasets.phantom.insert import (
        SKIPPED_FILE,
        InsertOptions,
        insert_dataset,
        read_skipped,
    )
    from wsbench.progress import with_progress

    if not source.is_dir():
        raise typer.BadParameter(f"{source} is not a folder", param_hint="--source")
    try:
        options = InsertOptions(copies, seed, test_fraction, keep_cut)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    written = with_progress(
        "inserting lesions",
        0,
        lambda cb: insert_dataset(source, out, options, default_workers(), cb),
    )
    for skipped in read_skipped(out / SKIPPED_FILE):
        console.print(f"left out {skipped.where}: {skipped.reason}")
    console.print(f"inserted lesions into {len(written)} subject(s) → {out}")


@app.command()
def show(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("phantom.png"),
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    subjects: Annotated[int, typer.Option(help="How many subjects (columns).")] = 6,
) -> None:
    """Save a grid of mid-sagittal slices with lesion (lytic red, blastic blue) and mimic
    (yellow) overlays."""
    from wsbench.datasets.phantom.plan import PhantomOptions
    from wsbench.datasets.phantom.show import show_grid

    path = show_grid(out, PhantomOptions(seed=seed), list(range(subjects)))
    console.print(f"saved {path}")
