"""Phantom realism: trabecular, cortical and disc HU, phantom vs the real TPTBox lumbar CT.

    python benchmarks/phantom_realism.py [--subjects 12] [--seed 0]

Trabecular = corpus (subregion 50) without lesions or mimics; cortical = corpus border (49);
disc = subregion 100 in the phantom and, in the real sample (which has no disc label), the
voxels between two consecutive vertebral bodies along the cranio-caudal axis. Prints the 5th,
25th, 50th, 75th and 95th percentiles and writes ``docs/figures/phantom_realism.png`` (two
histograms per tissue, side by side).
"""

from __future__ import annotations

import argparse
from itertools import pairwise
from pathlib import Path

import nibabel as nib
import numpy as np
from wsbench.datasets.phantom.generate import render_subject
from wsbench.datasets.phantom.plan import PhantomOptions, plan_subject

from wsbench.data.volumes import BODY_SUBREGIONS, DISC_SUBREGION

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "tptbox"
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "phantom_realism.png"
TISSUES = ("trabecular", "cortical", "disc")
PERCENTILES = (5, 25, 50, 75, 95)


def real_samples() -> dict[str, np.ndarray]:
    """HU of the three tissues in the real TPTBox sample (reoriented to RAS)."""

    def load(name: str) -> np.ndarray:
        return np.asarray(nib.as_closest_canonical(nib.load(REAL / name)).dataobj)

    ct = load("sub-ct_label-22_ct.nii.gz").astype(np.float32)
    vert = load("sub-ct_seg-vert_label-22_msk.nii.gz")
    subreg = load("sub-ct_seg-subreg_label-22_msk.nii.gz")
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


def main() -> None:
    """Compute, print and plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FIGURE)
    args = parser.parse_args()
    real = real_samples()
    phantom = phantom_samples(PhantomOptions(seed=args.seed), args.subjects)
    print("tissue      source    " + "  ".join(f"p{p:<4d}" for p in PERCENTILES))
    for tissue in TISSUES:
        for name, values in (("real", real[tissue]), ("phantom", phantom[tissue])):
            cells = "  ".join(f"{v:5.0f}" for v in np.percentile(values, PERCENTILES))
            print(f"{tissue:11s} {name:8s}  {cells}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), sharex="col")
    for col, tissue in enumerate(TISSUES):
        low = min(np.percentile(real[tissue], 0.5), np.percentile(phantom[tissue], 0.5))
        high = max(np.percentile(real[tissue], 99.5), np.percentile(phantom[tissue], 99.5))
        bins = np.linspace(low, high, 60)
        for row, (name, values, colour) in enumerate(
            (("real TPTBox L2–L4 (1.5 mm)", real[tissue], "tab:gray"),
             (f"phantom ({args.subjects} subjects)", phantom[tissue], "tab:orange"))
        ):  # fmt: skip
            ax = axes[row, col]
            ax.hist(values, bins=bins, color=colour, density=True)
            for p in np.percentile(values, (5, 50, 95)):
                ax.axvline(p, color="k", lw=0.8, ls="--")
            ax.set_title(f"{tissue} — {name}", fontsize=9)
            ax.set_yticks([])
        axes[1, col].set_xlabel("HU (dashed: 5th, 50th, 95th percentile)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
