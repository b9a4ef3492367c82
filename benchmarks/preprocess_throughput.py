"""Preprocessing throughput (vertebrae / second), cold and cached, through the in-house adapter.

Writes constructed subjects (five box vertebrae L1–L5 with posterior rings, on a clinical-sized
RAS grid, 0.7 × 0.7 × 1.5 mm) with ``write_inhouse``, then times ``InHouseDataset.prepare()``
with an empty cache (cold: hashing, NIfTI decoding, resampling, cropping) and again (cached).
Optionally also the real TPTBox sample laid out in BIDS naming.

    python benchmarks/preprocess_throughput.py --subjects 4 --shape 256 256 160
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from nibabel.affines import apply_affine
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.inhouse.layout import write_inhouse

from wsbench.contract import WeakLabel
from wsbench.data.volumes import LEVEL_NUMBERS, SubjectVolumes, VertebraLabel

REAL_TPTBOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "tptbox"


def lumbar_subject(name: str, shape: tuple[int, int, int], seed: int) -> SubjectVolumes:
    """Five stacked box vertebrae (body 40×30×27 mm, ring, spinous) in soft tissue, with noise."""
    spacing = np.array([0.7, 0.7, 1.5])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    x, y, z = apply_affine(affine, np.indices(shape).reshape(3, -1).T).T
    vert = np.zeros(x.size, np.uint8)
    subreg = np.zeros(x.size, np.uint8)
    ct = np.full(x.size, 40.0)
    height, gap = 27.0, 9.0
    levels = ["L1", "L2", "L3", "L4", "L5"]
    for i, level in enumerate(levels):
        centre = (2 - i) * (height + gap)
        zz = np.abs(z - centre)
        body = (np.abs(x) < 20) & (y >= 0) & (y < 30) & (zz < height / 2)
        ring = (np.abs(x) < 14) & (y < 0) & (y >= -18) & (zz < 8)
        ring &= ~((np.abs(x) < 7) & (y < -4) & (y >= -14))
        spinous = (np.abs(x) < 3) & (y < -18) & (y >= -35) & (zz < 6)
        vert[body | ring | spinous] = LEVEL_NUMBERS[level]
        subreg[body], subreg[ring | spinous] = 50, 41
        ct[body], ct[ring | spinous] = 220.0, 500.0
    ct += np.random.default_rng(seed).normal(0, 20, ct.size)
    vertebrae = [VertebraLabel(level, WeakLabel.HEALTHY) for level in levels]
    return SubjectVolumes(
        name, np.round(ct).astype(np.int16).reshape(shape), affine,
        vert.reshape(shape), vertebrae, subreg=subreg.reshape(shape),
    )  # fmt: skip


def time_prepare(root: Path, cache: Path) -> tuple[int, float, float]:
    """(vertebrae, cold seconds, cached seconds) of two ``prepare()`` calls."""
    start = time.perf_counter()
    cold = InHouseDataset(root=root, cache_dir=cache).prepare()
    middle = time.perf_counter()
    warm = InHouseDataset(root=root, cache_dir=cache).prepare()
    end = time.perf_counter()
    assert len(cold.vertebrae) == len(warm.vertebrae)
    return len(cold.vertebrae), middle - start, end - middle


def tptbox_tree(root: Path) -> None:
    """The real TPTBox sample in BIDS naming (symlinks) with a labels.csv."""
    names = {
        "rawdata/sub-ct/sub-ct_ct.nii.gz": "sub-ct_label-22_ct.nii.gz",
        "derivatives/sub-ct/sub-ct_seg-vert_msk.nii.gz": "sub-ct_seg-vert_label-22_msk.nii.gz",
        "derivatives/sub-ct/sub-ct_seg-subreg_msk.nii.gz": "sub-ct_seg-subreg_label-22_msk.nii.gz",
    }
    for target, name in names.items():
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        (root / target).symlink_to(REAL_TPTBOX / name)
    (root / "labels.csv").write_text("subject,vertebra,label\nct,L3,healthy\n")


def report(what: str, n: int, cold: float, warm: float) -> None:
    print(
        f"{what}: {n} vertebrae | cold {cold:.2f} s = {n / cold:.1f} vertebrae/s | "
        f"cached {warm:.3f} s = {n / warm:.0f} vertebrae/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subjects = [lumbar_subject(f"{i:03d}", tuple(args.shape), i) for i in range(args.subjects)]
        write_inhouse(tmp_path / "synthetic", subjects)
        shape = "×".join(map(str, args.shape))
        n, cold, warm = time_prepare(tmp_path / "synthetic", tmp_path / "cache-synthetic")
        report(f"synthetic {args.subjects} subjects {shape} int16", n, cold, warm)
        if REAL_TPTBOX.is_dir():
            tptbox_tree(tmp_path / "tptbox")
            n, cold, warm = time_prepare(tmp_path / "tptbox", tmp_path / "cache-tptbox")
            report("real TPTBox sample 73×47×73", n, cold, warm)


if __name__ == "__main__":
    main()
