"""Phantom realism: trabecular, cortical and disc HU, phantom vs the real TPTBox lumbar CT.

Usage:

    python benchmarks/experiment.py phantom-realism [--subjects 12] [--seed 0]

Trabecular = corpus (subregion 50) without lesions or mimics; cortical = corpus border (49);
disc = subregion 100 in the phantom and, in the real sample (which has no disc label), the
voxels between two consecutive vertebral bodies along the cranio-caudal axis. The phantom
subjects are rendered afresh (nothing is written to the cache). Prints the 5th, 25th, 50th, 75th
and 95th percentiles and writes ``docs/figures/phantom_realism.png`` (two histograms per tissue,
side by side). Without the real sample it says so and is skipped.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Annotated

import nibabel as nib
import numpy as np
import typer

from wsbench.data.volumes import BODY_SUBREGIONS, DISC_SUBREGION
from wsbench.datasets.phantom.generate import render_subject
from wsbench.datasets.phantom.plan import PhantomOptions, plan_subject

from .common import FIGURES, TPTBOX, pyplot, require, save_figure

TISSUES = ("trabecular", "cortical", "disc")
PERCENTILES = (5, 25, 50, 75, 95)
TPTBOX_FILES = (
    "sub-ct_label-22_ct.nii.gz",
    "sub-ct_seg-vert_label-22_msk.nii.gz",
    "sub-ct_seg-subreg_label-22_msk.nii.gz",
)

app = typer.Typer(add_completion=False, help=__doc__)


def real_samples(folder: Path) -> dict[str, np.ndarray]:
    """HU of the three tissues in the real TPTBox sample (reoriented to RAS)."""

    def load(name: str) -> np.ndarray:
        return np.asarray(nib.as_closest_canonical(nib.load(folder / name)).dataobj)

    ct, vert, subreg = (load(name) for name in TPTBOX_FILES)
    ct = ct.astype(np.float32)
    body = np.isin(subreg, BODY_SUBREGIONS)
    disc = np.zeros(ct.shape, bool)
    levels = sorted(int(n) for n in np.unique(vert) if n)
    for upper, lower in pairwise(levels):
        top = body & (vert == upper)
        bottom = body & (vert == lower)
        for i, j in zip(*np.nonzero(top.any(axis=2) & bottom.any(axis=2)), strict=True):
            low_of_upper = np.flatnonzero(top[i, j]).min()
            high_of_lower = np.flatnonzero(bottom[i, j]).max()
            if high_of_lower + 1 < low_of_upper:
                disc[i, j, high_of_lower + 1 : low_of_upper] = True
    disc &= vert == 0
    return {"trabecular": ct[subreg == 50], "cortical": ct[subreg == 49], "disc": ct[disc]}


def phantom_samples(options: PhantomOptions, subjects: int) -> dict[str, np.ndarray]:
    """HU of the three tissues over the first ``subjects`` phantom subjects."""
    found: dict[str, list[np.ndarray]] = {t: [] for t in TISSUES}
    for index in range(subjects):
        s = render_subject(plan_subject(options, index))
        clean = (s.lesion == 0) & (s.extra["mimic"] == 0)
        found["trabecular"].append(s.ct[(s.subreg == 50) & clean])
        found["cortical"].append(s.ct[(s.subreg == 49) & clean])
        found["disc"].append(s.ct[s.subreg == DISC_SUBREGION])
    return {t: np.concatenate(v).astype(np.float32) for t, v in found.items()}


def draw(real: dict[str, np.ndarray], phantom: dict[str, np.ndarray], subjects: int, out: Path):
    """Two histograms per tissue (real above, phantom below), 5th/50th/95th percentiles dashed."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex="col")
    for col, tissue in enumerate(TISSUES):
        low = min(np.percentile(real[tissue], 0.5), np.percentile(phantom[tissue], 0.5))
        high = max(np.percentile(real[tissue], 99.5), np.percentile(phantom[tissue], 99.5))
        bins = np.linspace(low, high, 60)
        for row, (name, values, colour) in enumerate(
            (("real TPTBox L2–L4 (1.5 mm)", real[tissue], "tab:gray"),
             (f"phantom ({subjects} subjects)", phantom[tissue], "tab:orange"))
        ):  # fmt: skip
            ax = axes[row, col]
            ax.hist(values, bins=bins, color=colour, density=True)
            for p in np.percentile(values, (5, 50, 95)):
                ax.axvline(p, color="k", lw=0.8, ls="--")
            ax.set_title(f"{tissue} — {name}", fontsize=9)
            ax.set_yticks([])
        axes[1, col].set_xlabel("HU (dashed: 5th, 50th, 95th percentile)")
    fig.tight_layout()
    save_figure(fig, out)


@app.command()
def main(
    subjects: Annotated[int, typer.Option(min=1, help="phantom subjects rendered")] = 12,
    seed: Annotated[int, typer.Option(help="phantom seed")] = 0,
    tptbox: Annotated[Path, typer.Option(help="the real TPTBox sample's folder")] = TPTBOX,
    out: Annotated[Path, typer.Option(help="figure")] = FIGURES / "phantom_realism.png",
) -> None:
    """Print tissue HU percentiles of the real sample and the phantom; draw the histograms."""
    real = real_samples(require(tptbox, TPTBOX_FILES, "the realism comparison", "--tptbox"))
    phantom = phantom_samples(PhantomOptions(seed=seed), subjects)
    print("tissue      source    " + "  ".join(f"p{p:<4d}" for p in PERCENTILES))
    for tissue in TISSUES:
        for name, values in (("real", real[tissue]), ("phantom", phantom[tissue])):
            cells = "  ".join(f"{v:5.0f}" for v in np.percentile(values, PERCENTILES))
            print(f"{tissue:11s} {name:8s}  {cells}")
    draw(real, phantom, subjects, out)
