"""The run summary printed after ``wsbench run``: paper-Table-2 layout, mean ± SD, then what the
dataset skipped and which vertebrae failed, timed out or were refused, on one screen."""

from __future__ import annotations

import math
import re

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wsbench.harness.evaluation import (
    FAILED_STATUSES,
    HEALTHY,
    LESION_CATEGORIES,
    METRICS,
    REFUSED,
    STRICT_HEADLINE,
    Metric,
    category_counts,
    metric_legend,
    summarize,
    vertebra_level_summary,
)
from wsbench.harness.rundir import read_manifest
from wsbench.harness.runner import RunResult, transfer_line

MAX_GROUPS = 10
"""Reason groups shown per list (skipped, not answered); the rest are counted, never hidden."""
EXAMPLES = 3
"""Example vertebrae or files shown per reason group."""
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def mean_sd(mean: float, sd: float) -> str:
    """``0.68 ± 0.24``, or ``–`` when undefined."""
    if mean is None or math.isnan(mean):
        return "–"
    return f"{mean:.2f}" if sd is None or math.isnan(sd) else f"{mean:.2f} ± {sd:.2f}"


def mean_cell(mean: float, sd: float, n: int, vertebrae: int) -> str:
    """``0.68 ± 0.24``, with ``(n=17)`` when the mean rests on fewer values than the category
    has vertebrae (a metric that is NaN where nothing was matched)."""
    text = mean_sd(mean, sd)
    return text if n == vertebrae or text == "–" else f"{text} (n={n})"


def column_header(category: str, vertebrae: int, failed: int, refused: int) -> str:
    """``blastic`` over ``n=19, failed 2, refused 3`` (two lines); zero counts of failed and
    refused are left out."""
    parts = [f"n={vertebrae}"]
    parts += [f"failed {failed}"] if failed else []
    parts += [f"refused {refused}"] if refused else []
    return f"{category}\n{', '.join(parts)}"


def run_title(result: RunResult, manifest: dict) -> str:
    """``hideseek on phantom, split test — run 20261204-174824-671098-1f2539a6``."""
    method = manifest.get("method", {}).get("name", "?")
    dataset = manifest.get("dataset", {}).get("name", "?")
    split = manifest.get("split", "?")
    return f"{method} on {dataset}, split {split} — run {result.run_dir.name}"


def metrics_table(
    cases: pd.DataFrame, categories: tuple[str, ...], metrics: list[Metric], title: str
) -> Table | None:
    """The ``metrics`` (rows, short labels) × the ``categories`` present (columns), mean ± SD
    over every vertebra of the category, headed with its number of vertebrae and how many failed
    (scored as an empty answer) or were refused. None when no category or metric is present."""
    summary = summarize(cases)
    counts = category_counts(cases).set_index("category")
    present = [c for c in categories if c in set(summary["category"])]
    if not present or not set(summary["metric"]) & {m.name for m in metrics}:
        return None
    table = Table(title=title)
    table.add_column("Metric", no_wrap=True)
    for category in present:
        row = counts.loc[category]
        header = column_header(category, row["vertebrae"], row["failed"], row["refused"])
        table.add_column(header, justify="right")
    for metric in metrics:
        cells = []
        for category in present:
            row = summary[(summary["category"] == category) & (summary["metric"] == metric.name)]
            cells.append(
                mean_cell(*row[["mean", "sd"]].iloc[0], int(row["n"].iloc[0]),
                          int(row["vertebrae"].iloc[0])) if len(row) else ""
            )  # fmt: skip
        if any(cells):
            table.add_row(f"{metric.short} {metric.arrow}", *cells)
    return table


def lesion_tables(cases: pd.DataFrame) -> list[Table]:
    """The lesion metrics of malignant vertebrae, their detection F1 and instance Dice at the
    stricter match (IoU > 0.5), and the false positives on healthy ones, as three tables that
    fit 80 columns."""
    paper = [m for m in METRICS.values() if not m.strict]
    strict = [METRICS[name] for name in STRICT_HEADLINE]
    tables = [
        metrics_table(
            cases, LESION_CATEGORIES, paper, "Lesion-level evaluation (mean ± SD over vertebrae)"
        ),
        metrics_table(cases, LESION_CATEGORIES, strict, "Stricter match: IoU > 0.5"),
        metrics_table(cases, (HEALTHY,), paper, "Healthy vertebrae: false positives"),
    ]
    return [t for t in tables if t is not None]


def legend(cases: pd.DataFrame) -> Text:
    """The legend of the metrics :func:`lesion_tables` shows, dimmed."""
    reported = set(summarize(cases)["metric"])
    shown = [m for m in METRICS.values() if m.name in reported]
    return Text(metric_legend([m for m in shown if not m.strict or m.name in STRICT_HEADLINE]),
                style="dim")  # fmt: skip


def vertebra_table(cases: pd.DataFrame) -> Table:
    """Vertebra-level detection for datasets without lesion masks."""
    summary = vertebra_level_summary(cases)
    table = Table(title="Vertebra-level evaluation (no lesion masks in this dataset)")
    for column in summary.columns:
        table.add_column(str(column))
    for _, row in summary.iterrows():
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row])
    return table


def shared_reason(reasons: list[str]) -> str:
    """The reasons of one group (the same text around their numbers) as one text: a number
    they all share is kept, one that differs is shown as ``…``."""
    numbers = [NUMBER.findall(reason) for reason in reasons]
    shared = [column[0] if len(set(column)) == 1 else "…" for column in zip(*numbers, strict=True)]
    texts = NUMBER.split(reasons[0])
    return "".join(text + number for text, number in zip(texts, [*shared, ""], strict=True))


def reason_groups(
    records: pd.DataFrame, kind: str, where: str, order: tuple[str, ...]
) -> pd.DataFrame:
    """Records grouped by ``kind`` and reason, numbers in the reason aside (``c(z)=0.31`` and
    ``c(z)=0.12`` group together): ``kind``, ``count``, ``reason`` (:func:`shared_reason`) and
    ``examples`` (the first few ``where`` values); kinds in ``order``, the largest group first
    within a kind."""
    text = records["reason"].fillna("").astype(str)
    keyed = records.assign(_key=text.map(lambda r: tuple(NUMBER.split(r))), _reason=text)
    rows = []
    for (value, _), part in keyed.groupby([kind, "_key"], sort=False):
        shown = ", ".join(part[where].astype(str).head(EXAMPLES))
        more = len(part) - EXAMPLES
        rows.append({
            kind: value, "count": len(part), "reason": shared_reason(list(part["_reason"])),
            "examples": shown + (f", … {more} more" if more > 0 else ""),
            "_rank": order.index(value) if value in order else len(order),
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=[kind, "count", "reason", "examples", "_rank"])
    frame = frame.sort_values(["_rank", "count"], ascending=[True, False], kind="stable")
    return frame.drop(columns="_rank").reset_index(drop=True)


def groups_table(groups: pd.DataFrame, title: str, rest: str) -> Table:
    """The first :data:`MAX_GROUPS` reason groups as a table; the others are counted in the
    caption, with ``rest`` saying where all of them are."""
    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in groups.columns:
        table.add_column(str(column), justify="right" if column == "count" else "left")
    for row in groups.head(MAX_GROUPS).itertuples(index=False):
        table.add_row(*[Text(str(value)) for value in row])  # reasons are text, not markup
    hidden = groups.iloc[MAX_GROUPS:]
    if len(hidden):
        table.caption = f"… and {int(hidden['count'].sum())} more {rest}"
    return table


def skipped_table(skipped: list[dict]) -> Table:
    """What the dataset skipped (the manifest's ``skipped``), grouped by scope and reason."""
    records = pd.DataFrame(skipped, columns=["where", "reason", "scope"])
    records["scope"] = records["scope"].fillna("vertebra")  # manifests before scopes existed
    groups = reason_groups(records, "scope", "where", ("dataset", "file", "vertebra"))
    title = f"Skipped by the dataset: {len(records)} (all {len(records)} in manifest.json)"
    return groups_table(groups, title, "in manifest.json")


def unanswered_table(cases: pd.DataFrame) -> Table:
    """Vertebrae that failed, timed out or were refused, grouped by status and reason."""
    records = cases[cases["status"].isin([*FAILED_STATUSES, REFUSED])]
    groups = reason_groups(records, "status", "vertebra", (*FAILED_STATUSES, REFUSED))
    title = f"Failed or timed out (scored as empty) or refused: {len(records)} (all in cases.csv)"
    return groups_table(groups, title, "in cases.csv")


def scored_line(cases: pd.DataFrame) -> str:
    """``207 vertebrae scored (2 failed, 1 timeout, 14 refused, 3 without a category)``."""
    status = cases["status"].value_counts()
    parts = [f"{status[s]} {s}" for s in (*FAILED_STATUSES, REFUSED) if status.get(s, 0)]
    unlabelled = int((cases["category"].fillna("").astype(str) == "").sum())
    if unlabelled:
        parts.append(f"{unlabelled} without a category, in no table")
    return f"{len(cases)} vertebrae scored" + (f" ({', '.join(parts)})" if parts else "")


CENTRE = "centre_"
"""Prefix of the ``cases.csv`` columns that hold the centre slice's own figures in a k-slice
run."""


def centre_cases(cases: pd.DataFrame) -> pd.DataFrame:
    """A k-slice run's cases as the centre slice alone scored them: each ``centre_`` column in
    place of the column it prefixes."""
    centre = [c for c in cases.columns if c.startswith(CENTRE)]
    own = cases.assign(**{c.removeprefix(CENTRE): cases[c] for c in centre})
    return own.drop(columns=centre)


def slab_cell(slab: float, centre: float) -> str:
    """``0.71 vs 0.64`` (``–`` for an undefined mean)."""
    return f"{mean_sd(slab, math.nan)} vs {mean_sd(centre, math.nan)}"


def slab_table(cases: pd.DataFrame, manifest: dict, lesion_metrics: bool) -> Table:
    """The k-slice figures against the centre slice's, computed from the same answers: lesion
    metrics (means) per category, or the vertebra-level measures without lesion masks."""
    k, step = manifest["slices"], manifest["slice_step"]
    title = f"{k} slices {step} apart vs the centre slice alone (same answers)"
    table = Table(title=title, min_width=len(title))
    centre = centre_cases(cases)
    if not lesion_metrics:
        ours, theirs = vertebra_level_summary(cases), vertebra_level_summary(centre)
        for column in ("measure", "group", f"{k} slices vs centre"):
            table.add_column(column)
        for (_, row), value in zip(ours.iterrows(), theirs["value"], strict=True):
            table.add_row(row["measure"], row["group"], slab_cell(row["value"], value))
        return table
    ours = summarize(cases).set_index(["category", "metric"])["mean"]
    theirs = summarize(centre).set_index(["category", "metric"])["mean"]
    present = [c for c in (*LESION_CATEGORIES, HEALTHY) if c in set(ours.index.get_level_values(0))]
    table.add_column("Metric", no_wrap=True)
    for category in present:
        table.add_column(category, justify="right")
    for metric in METRICS.values():
        keys = [(c, metric.name) for c in present]
        cells = [slab_cell(ours[key], theirs[key]) if key in ours.index else "" for key in keys]
        if any(cells):
            table.add_row(f"{metric.short} {metric.arrow}", *cells)
    return table


def print_summary(result: RunResult, console: Console) -> None:
    """Print a title line (method, dataset, split, run id), the summary tables with their
    legend, what was skipped and which vertebrae failed or were refused, for a k-slice run
    its figures against the centre slice's (:func:`slab_table`),
    the trained weights the method used (as recorded in the manifest) and where the run
    directory is."""
    cases = result.cases
    manifest = read_manifest(result.run_dir)
    console.print(Text(run_title(result, manifest), style="bold"))
    if result.lesion_metrics:
        console.print(*lesion_tables(cases), legend(cases))
    else:
        console.print(vertebra_table(cases))
    if manifest.get("skipped"):
        console.print(skipped_table(manifest["skipped"]))
    if cases["status"].isin([*FAILED_STATUSES, REFUSED]).any():
        console.print(unanswered_table(cases))
    if manifest.get("slices", 1) > 1:
        console.print(slab_table(cases, manifest, result.lesion_metrics))
    models = manifest["method"]["models"]
    if models:
        console.print("weights: " + ", ".join(f"{role} {name}" for role, name in models.items()))
    if manifest.get("transfer"):
        console.print(Text(transfer_line(manifest["transfer"], manifest["dataset"]["name"])))
    console.print(f"{scored_line(cases)} → [bold]{result.run_dir}[/]")
