"""Time the phantom build (generate + write + in-house preprocessing) and score Otsu on it.

    python benchmarks/phantom_build.py                      # default phantom, fresh cache
    python benchmarks/phantom_build.py --subjects 80 --seed 1 --test-fraction 0.5 --otsu

Builds into a fresh temporary ``WSBENCH_CACHE`` (so nothing is reused unless ``--cache`` is
given), prints the wall time of each stage, the vertebra counts per split / label / phenotype
and, with ``--otsu``, the Otsu baseline's mean Detection F1 per category on the test split (the
phantom's difficulty calibration: docs/phantom.md).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd


def otsu_summary(dataset) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Mean Detection F1 / Global Dice / FP of Otsu per category on the test split."""
    from wsbench.contract import Split, patient_hints
    from wsbench.harness.evaluation import summarize
    from wsbench.harness.registry import load_method
    from wsbench.harness.runner import case_record, segment_vertebra

    method = load_method("otsu")()
    rows, hints = [], patient_hints(dataset.vertebrae)
    for vertebra in dataset.split(Split.TEST):
        seg, _ = segment_vertebra(method, vertebra, hints[vertebra.key.patient])
        rows.append(case_record(vertebra, seg, True, None))
    return summarize(pd.DataFrame(rows))


def main() -> None:
    """Parse arguments, build, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--test-fraction", type=float)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--cache", type=Path, help="reuse this WSBENCH_CACHE instead of a fresh one"
    )
    parser.add_argument("--otsu", action="store_true", help="score Otsu on the test split")
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="wsbench-phantom-bench-"))
    os.environ["WSBENCH_CACHE"] = str(cache)

    from wsbench.datasets.phantom import PhantomDataset, phantom_options
    from wsbench.datasets.phantom.generate import build_cached, default_workers

    from wsbench.models.store import cache_root

    given = {"subjects": args.subjects, "seed": args.seed, "test_fraction": args.test_fraction}
    options = {k: v for k, v in given.items() if v is not None}
    workers = args.workers or default_workers()
    start = time.perf_counter()
    folder = build_cached(cache_root() / "phantom", phantom_options(options), workers)
    generated = time.perf_counter()
    dataset = PhantomDataset(cache_dir=cache_root() / "prepared", workers=workers, **options)
    prepared = dataset.prepare()
    done = time.perf_counter()
    print(f"phantom folder: {folder}")
    print(f"workers: {workers}")
    print(f"generate + write: {generated - start:.1f} s")
    print(f"in-house preprocessing: {done - generated:.1f} s")
    print(f"total: {done - start:.1f} s")
    counts = Counter(
        (v.split.value, v.label.value if v.label else "", v.phenotype.value if v.phenotype else "")
        for v in prepared.vertebrae
    )
    for key, n in sorted(counts.items()):
        print("vertebrae", *key, n)
    print(f"skipped: {len(prepared.skipped)}")
    if args.otsu:
        summary = otsu_summary(prepared)
        wanted = summary[summary["metric"].isin(["f1", "global_dice", "fp", "pred_area_mm2"])]
        print(wanted.to_string(index=False))


if __name__ == "__main__":
    main()
