"""TCIA adapter throughput (vertebrae / second), cold and cached, and the derived-body Dice.

Writes constructed subjects (five box vertebrae L1–L5 with posterior rings, as in
``preprocess_throughput.py``) as a Spine-Mets-CT-SEG download with ``write_tcia`` (DICOM CT
series + DICOM-SEG + clinical xlsx), then times ``TciaDataset.prepare()`` with an empty cache
(cold: header scan, hashing, DICOM decoding, SEG decoding, body derivation, resampling) and again
(cached: header scan and hashing only). With the real samples present it also prints the Dice of
the derived vertebral body against the true corpus (49 ∪ 50) of the TPTBox sample.

    python benchmarks/tcia_throughput.py --subjects 4 --shape 256 256 160
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
from preprocess_throughput import REAL_TPTBOX, lumbar_subject, report
from wsbench.datasets.phantom.tcia_writer import write_tcia
from wsbench.datasets.tcia import TciaDataset, derived_body_dice


def time_prepare(root: Path, cache: Path) -> tuple[int, float, float]:
    """(vertebrae, cold seconds, cached seconds) of two ``prepare()`` calls."""
    start = time.perf_counter()
    cold = TciaDataset(root=root, cache_dir=cache).prepare()
    middle = time.perf_counter()
    warm = TciaDataset(root=root, cache_dir=cache).prepare()
    end = time.perf_counter()
    if cold.skipped or len(cold.vertebrae) != len(warm.vertebrae):
        raise RuntimeError(f"unexpected skips: {cold.skipped}")
    return len(cold.vertebrae), middle - start, end - middle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    parser.add_argument("--layout", choices=["nbia", "idc"], default="nbia")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tcia"
        subjects = [lumbar_subject(f"{i:05d}", tuple(args.shape), i) for i in range(args.subjects)]
        for subject in subjects:
            subject.subreg = None  # the collection has whole-vertebra masks only
        write_tcia(root, subjects, layout=args.layout)
        n, cold, warm = time_prepare(root, Path(tmp) / "cache")
        shape = "×".join(map(str, args.shape))
        report(f"TCIA {args.layout} {args.subjects} subjects {shape} int16", n, cold, warm)
    if REAL_TPTBOX.is_dir():
        vert = nib.load(REAL_TPTBOX / "sub-ct_seg-vert_label-22_msk.nii.gz")
        subreg = nib.load(REAL_TPTBOX / "sub-ct_seg-subreg_label-22_msk.nii.gz")
        dice = derived_body_dice(vert, subreg)
        print("derived body vs corpus 49 ∪ 50 (TPTBox sample, Dice): " + ", ".join(
            f"{level} {value:.3f}" for level, value in dice.items()
        ))  # fmt: skip


if __name__ == "__main__":
    main()
