"""What the experiments (and the speed probes) share: the prepared dataset, a fitted
Hide-and-Seek, seeded training vertebrae, the real-data folder, Markdown tables and figures.

Experiments that choose or justify a default read the **training** split only; lesion masks of
training vertebrae are read here for measurement, never handed to a method.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import typer

from wsbench.contract import (
    N_CENTRAL_SLICES,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    WeakLabel,
    patient_hints,
)
from wsbench.harness.runner import RunConfig, prepare_dataset, workdir
from wsbench.plugins.hideseek import HideAndSeek

ROOT = Path(__file__).resolve().parents[2]
"""The repository."""
FIGURES = ROOT / "docs" / "figures"
"""Where the experiments' figures and CSVs go by default."""
REAL = ROOT.parent / "shared" / "data" / "real"
"""The shared real-data folder (the authors' Hide-and-Seek sample, the TPTBox lumbar CT)."""
TPTBOX = REAL / "tptbox"
MID = N_CENTRAL_SLICES // 2

M = TypeVar("M", bound=HideAndSeek)


def threads(count: int = 1) -> None:
    """Use ``count`` torch CPU threads (one by default: the figures the docs quote)."""
    torch.set_num_threads(count)


@functools.cache
def prepared(dataset: str = "phantom", root: str | None = None) -> PreparedDataset:
    """The prepared dataset, as a run prepares it (cached on disk by the adapter, and here for
    the rest of the process)."""
    _, data = prepare_dataset(RunConfig("", dataset, root=root))
    return data


def hints(data: PreparedDataset) -> dict[tuple[str, str], Phenotype | None]:
    """Every patient's phenotype hint, as a run hands it to the method."""
    return patient_hints(data.vertebrae)


def fitted(
    data: PreparedDataset, checkpoint: Path | str | None = None, cls: type[M] = HideAndSeek
) -> M:
    """``cls`` fitted as a run fits it: the dataset's DAE (or ``checkpoint``), its latent
    classifier and the phenotype directions (``direction=phenotype``), from the model store
    (each is fitted once and stored when missing)."""
    method = cls(checkpoint=str(checkpoint) if checkpoint else None, direction="phenotype")
    method.fit(data.training_set(), workdir(cls))
    return method


def dae_path(data: PreparedDataset, checkpoint: Path | str | None = None) -> Path:
    """The Hide-and-Seek DAE of ``data`` (shipped, then cached), or ``checkpoint``."""
    return HideAndSeek(checkpoint=str(checkpoint) if checkpoint else None).dae_path(
        data.training_set()
    )


def seeded_vertebrae(
    vertebrae: Iterable[PreparedVertebra],
    count: int,
    seed: int,
    label: WeakLabel,
    offset: int = 0,
) -> list[PreparedVertebra]:
    """Vertebrae ``offset … offset + count`` of one seeded order of the ``label`` vertebrae:
    malignant ones with a lesion on the mid slice, or healthy ones with a reference map (so that
    false positives can be counted). The first ``k`` are the same whatever ``count``."""
    eligible = sorted(
        (v for v in vertebrae if v.label == label and v.reference is not None
         and (label == WeakLabel.HEALTHY or v.reference.any())),
        key=lambda v: v.key.id,
    )  # fmt: skip
    if not eligible and count:
        raise typer.BadParameter(f"no eligible {label.value} vertebra (with a reference map)")
    order = np.random.default_rng(seed).permutation(len(eligible))
    return [eligible[i] for i in order[offset : offset + count]]


def require(folder: Path, names: Sequence[str], what: str, option: str = "--real") -> Path:
    """``folder`` when it holds every file of ``names``; otherwise say what is missing and exit
    cleanly (status 0): the experiment is skipped, not failed."""
    missing = [name for name in names if not (folder / name).exists()]
    if missing:
        typer.echo(
            f"skipped: {what} needs {', '.join(missing)} in {folder}, which is not there "
            f"(part of the shared real data; pass its folder with {option})"
        )
        raise typer.Exit(0)
    return folder


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table of ``table``, its index as the first column, floats to 4 digits."""

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join([str(table.index.name or ""), *map(str, table.columns)]) + " |"]
    lines.append("|---" * (len(table.columns) + 1) + "|")
    for index, row in table.astype(object).iterrows():
        lines.append("| " + " | ".join([str(index), *map(cell, row.tolist())]) + " |")
    return "\n".join(lines)


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib's pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, dpi: int = 110) -> None:  # type: ignore[no-untyped-def]
    """Write ``fig`` to ``out`` (folders created) and say so."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)
    print(f"wrote {out}")
