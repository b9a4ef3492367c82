"""The run summary printed after ``wsbench run``: paper-Table-2 layout, mean ± SD."""

from __future__ import annotations

import json
import math

import pandas as pd
from rich.console import Console
from rich.table import Table

from wsbench.harness.evaluation import CATEGORIES, METRICS, summarize, vertebra_level_summary
from wsbench.harness.runner import RunResult


def mean_sd(mean: float, sd: float) -> str:
    """``0.68 ± 0.24``, or ``–`` when undefined."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if sd is None or math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def lesion_table(cases: pd.DataFrame) -> Table:
    """Metrics (rows) × categories (columns), mean ± SD with the number of vertebrae."""
    summary = summarize(cases)
    present = [c for c in CATEGORIES if c in set(summary["category"])]
    counts = cases[cases["status"] == "ok"]["category"].value_counts()
    table = Table(title="Lesion-level evaluation (mean ± SD over vertebrae)")
    table.add_column("Metric")
    for category in present:
        table.add_column(f"{category} (n={counts.get(category, 0)})", justify="right")
    for metric in METRICS.values():
        cells = []
        for category in present:
            row = summary[(summary["category"] == category) & (summary["metric"] == metric.name)]
            cells.append(mean_sd(*row[["mean", "sd"]].iloc[0]) if len(row) else "")
        if any(cells):
            table.add_row(f"{metric.label} {metric.arrow}", *cells)
    return table


def vertebra_table(cases: pd.DataFrame) -> Table:
    """Vertebra-level detection for datasets without lesion masks."""
    summary = vertebra_level_summary(cases)
    table = Table(title="Vertebra-level evaluation (no lesion masks in this dataset)")
    for column in summary.columns:
        table.add_column(str(column))
    for _, row in summary.iterrows():
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


def print_summary(result: RunResult, console: Console) -> None:
    """Print the summary table, failures, the trained weights the method used (as recorded in the
    manifest) and where the run directory is."""
    cases = result.cases
    ok = cases[cases["status"] == "ok"]
    console.print(lesion_table(cases) if result.lesion_metrics else vertebra_table(cases))
    failed = cases[cases["status"] != "ok"]
    if len(failed):
        console.print(
            f"[red]{len(failed)} vertebrae failed[/] (reasons in cases.csv), e.g. "
            f"{failed.iloc[0]['vertebra']}: {failed.iloc[0]['reason']}"
        )
    models = json.loads((result.run_dir / "manifest.json").read_text())["method"]["models"]
    if models:
        console.print("weights: " + ", ".join(f"{role} {name}" for role, name in models.items()))
    console.print(f"{len(ok)} vertebrae evaluated → [bold]{result.run_dir}[/]")
