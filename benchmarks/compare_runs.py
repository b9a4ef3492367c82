"""Compare two finished runs of the same method and split vertebra by vertebra (e.g. on a GPU and
on the CPU): how many masks are identical, the Dice between the two answers, and the mean |Δ| of
every metric of ``cases.csv``. Prints a Markdown section.

    python benchmarks/compare_runs.py RUN_A RUN_B
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from experiments.common import markdown

from wsbench.harness.rundir import mask_path
from wsbench.report.compare import finished_run

METRIC_COLUMNS = ("n_pred", "tp", "fp", "fn", "pred_area_px", "f1", "sq", "pq", "assd",
                  "global_dice", "precision", "recall", "rvd")  # fmt: skip
"""The ``cases.csv`` columns compared: what the answer changes (not ids or references)."""


def answer_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two label maps counting a pixel as shared when both give it the same non-zero
    label; 1.0 when both are empty."""
    total = int((a > 0).sum() + (b > 0).sum())
    return 1.0 if total == 0 else 2.0 * int(((a == b) & (a > 0)).sum()) / total


def labels_of(run_dir: Path, vertebra: str) -> np.ndarray | None:
    """The post-processed label map a run stored for ``vertebra`` (None where it stored none)."""
    path = mask_path(run_dir, vertebra)
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return arrays["labels"]


def mask_rows(run_a: Path, run_b: Path, vertebrae: list[str]) -> pd.DataFrame:
    """Per vertebra both runs answered: whether the masks are identical, their Dice, and how
    many pixels differ."""
    rows = []
    for vertebra in vertebrae:
        a, b = labels_of(run_a, vertebra), labels_of(run_b, vertebra)
        if a is None or b is None:
            continue
        if a.shape != b.shape:
            raise ValueError(
                f"{mask_path(run_a, vertebra)} and {mask_path(run_b, vertebra)} have shapes "
                f"{a.shape} and {b.shape}: compare runs of the same --slices setting"
            )
        rows.append({"vertebra": vertebra, "identical": bool(np.array_equal(a, b)),
                     "dice": answer_dice(a, b), "pixels_differ": int((a != b).sum())})  # fmt: skip
    return pd.DataFrame(rows, columns=["vertebra", "identical", "dice", "pixels_differ"])


def metric_deltas(cases_a: pd.DataFrame, cases_b: pd.DataFrame) -> pd.DataFrame:
    """Mean and max |Δ| of each compared metric over the vertebrae where both runs have it."""
    joined = cases_a.set_index("vertebra").join(
        cases_b.set_index("vertebra"), how="inner", lsuffix="_a", rsuffix="_b"
    )
    rows = []
    for column in METRIC_COLUMNS:
        if f"{column}_a" not in joined:
            continue
        delta = (joined[f"{column}_a"] - joined[f"{column}_b"]).abs().dropna()
        rows.append({"metric": column, "n": len(delta), "mean_abs_delta": float(delta.mean()),
                     "max_abs_delta": float(delta.max())})  # fmt: skip
    return pd.DataFrame(rows).set_index("metric")


def comparison_markdown(run_a: Path, run_b: Path) -> str:
    """The Markdown section comparing ``run_a`` with ``run_b``."""
    first, second = finished_run(run_a), finished_run(run_b)
    shared = sorted(set(first.cases["vertebra"]) & set(second.cases["vertebra"]))
    masks = mask_rows(run_a, run_b, shared)
    deltas = metric_deltas(first.cases, second.cases)
    differing = masks[~masks["identical"]]
    lines = [
        f"### {run_a.parent.name}: {run_a} vs {run_b}",
        "",
        f"- vertebrae in both runs: {len(shared)}; masks compared: {len(masks)}; identical: "
        f"{int(masks['identical'].sum())}",
        f"- Dice between the answers: mean {masks['dice'].mean():.4f}, "
        f"min {masks['dice'].min():.4f}; pixels that differ: {int(masks['pixels_differ'].sum())}",
    ]
    if len(differing):
        worst = differing.sort_values("dice").head(5)
        listed = ", ".join(f"{r.vertebra} ({r.dice:.3f})" for r in worst.itertuples())
        lines.append(f"- lowest Dice: {listed}")
    lines += ["", markdown(deltas), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="a finished run folder (with manifest.json)")
    parser.add_argument("run_b", type=Path, help="the run folder to compare it with")
    args = parser.parse_args()
    print(comparison_markdown(args.run_a, args.run_b))


if __name__ == "__main__":
    main()
