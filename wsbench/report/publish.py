"""Write the published leaderboard: markdown, tidy CSV, HTML with figures, and an index.

Everything here is generated from run summaries copied into ``<out>/runs/<dataset>/<method>/``
(``manifest.json``, ``cases.csv``, ``lesions.csv``) and the publishing choices beside them
(``not_run.json``, ``publish.json``), so the tables can be regenerated and checked from the
repository alone. A method that failed or timed out on some vertebrae is marked ``†`` wherever
it is shown; with ``exclude_failed`` it is left out of the tables and listed under them.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from wsbench.files import write_json
from wsbench.harness.evaluation import CATEGORIES, HEALTHY, METRICS, metric_legend
from wsbench.harness.rundir import mask_path, read_manifest
from wsbench.report.leaderboard import (
    ALPHA,
    BOOTSTRAP_SAMPLES,
    MethodRun,
    failure_note,
    failures,
    interrupted,
    leaderboard_stats,
    not_run,
    published_runs,
)

SUMMARY_FILES = ("manifest.json", "cases.csv", "lesions.csv")
RANKED_METRICS = ("f1", "sq")
LYTIC_RGB, BLASTIC_RGB = (0.9, 0.15, 0.15), (0.15, 0.35, 0.95)
FAILED_MARK = "†"
MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
"""CommonMark with tables; HTML in the text (a reason, a method name) is shown, not obeyed."""


def copy_summaries(runs: dict[str, MethodRun], dest: Path) -> dict[str, MethodRun]:
    """Copy each run's summary files to ``dest/<method>/`` and return the copied runs."""
    copied = {}
    for method, run in runs.items():
        target = dest / method
        target.mkdir(parents=True, exist_ok=True)
        for name in SUMMARY_FILES:
            if (run.run_dir / name).exists():
                shutil.copyfile(run.run_dir / name, target / name)
        copied[method] = MethodRun(method, target, run.manifest, run.cases)
    return copied


def commit_label(manifest: dict) -> str:
    """A run's commit, short, marked ``+uncommitted changes`` when the tree was dirty."""
    commit = (manifest.get("git_commit") or "unknown")[:12]
    return commit + (" +uncommitted changes" if manifest.get("git_dirty") else "")


def models_lines(runs: dict[str, MethodRun]) -> list[str]:
    """``- models: hideseek dae `…`, classifier `…`; ad dae `…```: the trained weights each run
    used (``method.models`` of its manifest); no line when no run recorded any."""
    parts = []
    for method, run in runs.items():
        models = run.manifest.get("method", {}).get("models") or {}
        if models:
            parts.append(f"{method} " + ", ".join(f"{r} `{i}`" for r, i in models.items()))
    return [f"- models: {'; '.join(parts)}"] if parts else []


def failure_lines(runs: dict[str, MethodRun]) -> list[str]:
    """``- † = …: otsu 2 of 207 vertebrae failed or timed out``: what the mark means and which
    methods carry it; no line when no method failed anywhere."""
    failing = [f"{m} {failure_note(r)}" for m, r in runs.items() if failures(r)]
    if not failing:
        return []
    return [f"- {FAILED_MARK} = failed or timed out on some vertebrae, which are scored as an "
            f"empty answer and counted in every mean: {'; '.join(failing)}"]  # fmt: skip


def header_lines(dataset: str, runs: dict[str, MethodRun]) -> list[str]:
    """Dataset fingerprint, split sizes, versions and commits of the runs, the models used, and
    which methods failed on some vertebrae."""
    manifests = [r.manifest for r in runs.values()]
    fingerprints = sorted({m["dataset"]["fingerprint"] for m in manifests})
    versions = sorted({m["packages"].get("wsbench", "?") for m in manifests})
    commits = sorted({commit_label(m) for m in manifests})
    any_cases = next(iter(runs.values())).cases
    counts = any_cases["category"].value_counts()
    sizes = ", ".join(f"{c} {counts[c]}" for c in CATEGORIES if c in counts)
    splits = sorted({m["split"] for m in manifests})
    return [
        f"- dataset fingerprint: `{', '.join(fingerprints)}`",
        f"- split: {', '.join(splits)} — {len(any_cases)} vertebrae ({sizes})",
        f"- wsbench {', '.join(versions)}; runs made at commit {', '.join(commits)}",
        *models_lines(runs),
        f"- mean ± SD over vertebrae; **bold** = best; `*` = worse than the best "
        f"(paired Wilcoxon signed-rank, p < {ALPHA}); 95% CIs from {BOOTSTRAP_SAMPLES} "
        "bootstrap resamples of vertebrae (seed 0) are in the CSV",
        *failure_lines(runs),
    ]


def cell(row: pd.Series) -> str:
    """``**0.68 ± 0.24**`` / ``0.55 ± 0.20*`` / ``–``, with ``(n=17)`` when the mean rests on
    fewer values than the category has vertebrae."""
    if row is None or math.isnan(row["mean"]):
        return "–"
    sd = "" if math.isnan(row["sd"]) else f" ± {row['sd']:.2f}"
    text = f"{row['mean']:.2f}{sd}{'*' if row['worse_than_best'] else ''}"
    count = "" if row["n"] == row["vertebrae"] else f" (n={row['n']})"
    return (f"**{text}**" if row["best"] else text) + count


def counts_cell(row: pd.Series) -> str:
    """``19 (2, 0)``: a method's vertebrae in a category (failed or timed out, refused)."""
    return f"{row['vertebrae']} ({row['failed']}, {row['refused']})"


def category_table(stats: pd.DataFrame, category: str, methods: list[str]) -> list[str]:
    """Markdown rows: metrics (short labels) × methods for one category, after the vertebrae
    each method was scored on, then the legend; a method that failed on any of them is marked,
    with a footnote."""
    part = stats[stats["category"] == category]
    counts = part.groupby("method").first()
    failing = [m for m in methods if m in counts.index and counts.loc[m, "failed"] > 0]
    names = [f"{m} {FAILED_MARK}" if m in failing else m for m in methods]
    lines = ["| Metric | " + " | ".join(names) + " |", "|---" * (len(methods) + 1) + "|"]
    cells = [counts_cell(counts.loc[m]) if m in counts.index else "–" for m in methods]
    lines.append("| Vertebrae: n (failed, refused) | " + " | ".join(cells) + " |")
    shown = [metric for metric in METRICS.values() if metric.name in set(part["metric"])]
    for metric in shown:
        rows = part[part["metric"] == metric.name].set_index("method")
        cells = [cell(rows.loc[m]) if m in rows.index else "–" for m in methods]
        lines.append(f"| {metric.short} {metric.arrow} | " + " | ".join(cells) + " |")
    lines += ["", metric_legend(shown)]
    if failing:
        lines += ["", f"{FAILED_MARK} failed or timed out on some of these vertebrae, scored as "
                      "an empty answer (row *Vertebrae*)."]  # fmt: skip
    return lines


def rank_table(stats: pd.DataFrame, category: str, methods: list[str]) -> list[str]:
    """Markdown rows: each method's rank (95% bootstrap CI) on the headline metrics."""
    part = stats[(stats["category"] == category) & stats["metric"].isin(RANKED_METRICS)]
    if part.empty:
        return []
    metrics = [m for m in RANKED_METRICS if m in set(part["metric"])]
    lines = ["| Method | " + " | ".join(f"rank by {METRICS[m].short}" for m in metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]  # fmt: skip
    failing = set(part.loc[part["failed"] > 0, "method"])
    for method in methods:
        cells = []
        for metric in metrics:
            row = part[(part["metric"] == metric) & (part["method"] == method)]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cells.append(f"{r['rank']:.0f} [{r['rank_ci_low']:.0f}–{r['rank_ci_high']:.0f}]")
        name = f"{method} {FAILED_MARK}" if method in failing else method
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def ranked_runs(
    runs: dict[str, MethodRun], exclude_failed: bool
) -> tuple[dict[str, MethodRun], dict[str, str]]:
    """The runs the tables show, and the methods left out: with ``exclude_failed``, those that
    failed or timed out on any vertebra, each with ``excluded: 2 of 207 vertebrae failed or
    timed out``; else none."""
    excluded = {m: f"excluded: {failure_note(r)}" for m, r in runs.items()
                if exclude_failed and failures(r)}  # fmt: skip
    return {m: r for m, r in runs.items() if m not in excluded}, excluded


def absent_lines(missing: dict[str, str], unfinished: dict[str, str]) -> list[str]:
    """The *Not in the tables* section: methods a bench did not run (``missing``, with its
    reason) and methods whose only runs were interrupted (``unfinished``, with the newest run
    id); none when every method has a finished run."""
    lines = [f"- **{m}**: not run — {why}" for m, why in missing.items()]
    lines += [f"- **{m}**: interrupted — run `{run_id}` did not finish; `wsbench run` with "
              "`--resume` continues it" for m, run_id in unfinished.items()
              if m not in missing]  # fmt: skip
    return ["## Not in the tables", "", *lines, ""] if lines else []


def markdown(dataset: str, runs: dict[str, MethodRun], stats: pd.DataFrame,
             missing: dict[str, str], excluded: dict[str, str],
             unfinished: dict[str, str]) -> str:  # fmt: skip
    """The whole ``<dataset>.md`` page; ``excluded`` methods (with why) are listed, not shown
    in the tables, and so are the ``missing`` (not run) and ``unfinished`` (interrupted)
    ones."""
    methods = [m for m in runs if m not in excluded]
    lines = [f"# wsbench leaderboard — {dataset}", "", *header_lines(dataset, runs), ""]
    present = [c for c in CATEGORIES if c in set(stats.get("category", []))]
    for category in present:
        n = int(stats[stats["category"] == category]["vertebrae"].max())
        title = "Healthy vertebrae (false positives)" if category == HEALTHY else category.title()
        lines += [f"## {title} (n = {n})", "", *category_table(stats, category, methods), ""]
        ranked = rank_table(stats, category, methods)
        if ranked:
            lines += ["Rank (95% bootstrap CI):", "", *ranked, ""]
    if excluded:
        lines += ["## Excluded from ranking (`--exclude-failed`)", ""]
        lines += [f"- **{m}**: {why}" for m, why in excluded.items()] + [""]
    lines += absent_lines(missing, unfinished)
    return "\n".join(lines)


def overlay(ax: plt.Axes, image: np.ndarray, labels: np.ndarray | None, title: str) -> None:
    """Show a slice in a bone window with lytic red and blastic blue overlays."""
    ax.imshow(image, cmap="gray", vmin=-200, vmax=1300)
    if labels is not None:
        rgba = np.zeros((*labels.shape, 4))
        rgba[labels == 1] = (*LYTIC_RGB, 0.55)
        rgba[labels == 2] = (*BLASTIC_RGB, 0.55)
        ax.imshow(rgba)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def figure_rows(runs: dict[str, MethodRun]) -> list[str]:
    """Vertebrae shown in the qualitative figure.

    Rule: for each lesion category, the vertebra whose reference lesion area is the median of
    that category (ties broken by id), then the healthy vertebra with the most false-positive
    pixels summed over methods.
    """
    cases = next(iter(runs.values())).cases
    chosen = []
    for category in ("blastic", "lytic", "mixed"):
        part = cases[(cases["category"] == category) & cases["ref_area_px"].notna()]
        if len(part):
            part = part.sort_values(["ref_area_px", "vertebra"])
            chosen.append(part.iloc[(len(part) - 1) // 2]["vertebra"])
    healthy = [r.cases[r.cases["category"] == HEALTHY].set_index("vertebra")["pred_area_px"]
               for r in runs.values() if "pred_area_px" in r.cases]  # fmt: skip
    if healthy:
        total = pd.concat(healthy, axis=1).sum(axis=1).sort_index()
        if len(total):
            chosen.append(total.idxmax())
    return chosen


def qualitative_figure(runs: dict[str, MethodRun], run_dirs: dict[str, Path]) -> str | None:
    """Paper-Fig.-2-style grid as base64 PNG (rows vertebrae, labelled with their category, so
    that a healthy one reads ``phantom_p0030_T8 (healthy)``; input, ground truth, methods), from
    the masks in each method's run directory ``run_dirs[method]``."""
    rows = figure_rows(runs) if runs else []
    stored = {m: [mask_path(run_dirs[m], v).exists() for v in rows] for m in runs}
    rows = [v for i, v in enumerate(rows) if any(found[i] for found in stored.values())]
    methods = [m for m in runs if any(stored[m])]  # a failed vertebra has no masks
    if not methods or not rows:
        return None
    categories = next(iter(runs.values())).cases.set_index("vertebra")["category"]
    size = (1.6 * (len(methods) + 2), 1.7 * len(rows))
    fig, axes = plt.subplots(len(rows), len(methods) + 2, figsize=size, squeeze=False)
    for i, vertebra in enumerate(rows):
        source = next(m for m in methods if mask_path(run_dirs[m], vertebra).exists())
        with np.load(mask_path(run_dirs[source], vertebra)) as first:
            image, reference = first["image"], first.get("reference")
        overlay(axes[i, 0], image, None, f"{vertebra} ({categories.get(vertebra, '?')})")
        empty = reference is None or not np.any(reference)
        overlay(axes[i, 1], image, reference, "ground truth" + (" (empty)" if empty else ""))
        for j, method in enumerate(methods):
            path = mask_path(run_dirs[method], vertebra)
            labels = np.load(path)["labels"] if path.exists() else None
            overlay(axes[i, j + 2], image, labels, method)
    fig.tight_layout()
    return png_base64(fig)


def size_score_figure(runs: dict[str, MethodRun]) -> str | None:
    """Candidate size vs score (e.g. Δ) for methods that store per-lesion scores."""
    frames = {}
    for method, run in runs.items():
        path = run.run_dir / "lesions.csv"
        if path.exists() and path.stat().st_size > 1:
            lesions = pd.read_csv(path)
            if {"size", "score"} <= set(lesions.columns) and len(lesions):
                frames[method] = lesions
    if not frames:
        return None
    fig, axes = plt.subplots(1, len(frames), figsize=(4.5 * len(frames), 3.5), squeeze=False)
    for ax, (method, lesions) in zip(axes[0], frames.items(), strict=True):
        truth = lesions.get("overlaps_reference", pd.Series(False, index=lesions.index))
        for label, color, name in ((2, BLASTIC_RGB, "blastic"), (1, LYTIC_RGB, "lytic")):
            part = lesions[lesions["label"] == label]
            tp = truth.loc[part.index].astype(bool)
            ax.scatter(part["size"][tp], part["score"][tp], s=10, color=color, label=f"{name} TP")
            ax.scatter(part["size"][~tp], part["score"][~tp], s=14, marker="x", color=color,
                       alpha=0.5, label=f"{name} FP")  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers; no crowded minor labels
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("candidate size (pixels)")
        ax.set_ylabel("score")
        ax.set_title(method)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_base64(fig)


def png_base64(fig: plt.Figure) -> str:
    """A matplotlib figure as base64 PNG (figure closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def html_page(dataset: str, md: str, figures: dict[str, str | None]) -> str:
    """The HTML page: the markdown page rendered, then the figures."""
    parts = [MARKDOWN.render(md)]
    for title, data in figures.items():
        if data:
            parts += [f"<h2>{html.escape(title)}</h2>", f'<img alt="{html.escape(title)}" '
                      f'src="data:image/png;base64,{data}">']  # fmt: skip
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right;white-space:nowrap}th{background:#eee}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>wsbench — "
            f"{html.escape(dataset)}</title><style>{style}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")  # fmt: skip


def write_index(out: Path) -> None:
    """``<out>/README.md`` linking every published dataset."""
    pages = sorted(p.stem for p in out.glob("*.md") if p.name != "README.md")
    lines = ["# wsbench leaderboards", "",
             "Generated by `wsbench leaderboard`; never edited by hand.", ""]  # fmt: skip
    lines += [f"- [{p}]({p}.md) — [CSV]({p}.csv), [HTML with figures]({p}.html)" for p in pages]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def publish_dataset(dataset: str, runs: dict[str, MethodRun], missing: dict[str, str],
                    unfinished: dict[str, str], out: Path, run_dirs: dict[str, Path],
                    exclude_failed: bool = False) -> pd.DataFrame:  # fmt: skip
    """Write ``<dataset>.md``, ``.csv`` and ``.html`` into ``out`` from the given runs; with
    ``exclude_failed`` the methods that failed on any vertebra are listed instead of ranked;
    ``missing`` and ``unfinished`` methods are listed under the tables."""
    shown, excluded = ranked_runs(runs, exclude_failed)
    stats = leaderboard_stats(shown)
    md = markdown(dataset, runs, stats, missing, excluded, unfinished)
    (out / f"{dataset}.md").write_text(md)
    stats.to_csv(out / f"{dataset}.csv", index=False, float_format="%.6g")
    figures = {
        "Qualitative comparison (blastic blue, lytic red)": qualitative_figure(shown, run_dirs),
        "Candidate size vs score": size_score_figure(shown),
    }
    (out / f"{dataset}.html").write_text(html_page(dataset, md, figures))
    return stats


def publish(runs_root: Path, out: Path, exclude_failed: bool = False) -> dict[str, dict[str, str]]:
    """Publish every dataset found under ``runs_root``; returns, per published dataset, the
    methods that failed or timed out on some vertebrae with ``2 of 207 vertebrae failed or timed
    out`` (left out of the tables with ``exclude_failed``)."""
    published = {}
    for dataset_dir in sorted(p for p in runs_root.iterdir() if p.is_dir()):
        runs = published_runs(dataset_dir)
        if not runs:
            continue
        run_dirs = {m: r.run_dir for m, r in runs.items()}
        out.mkdir(parents=True, exist_ok=True)
        summaries = out / "runs" / dataset_dir.name
        if summaries.exists():
            shutil.rmtree(summaries)
        copied = copy_summaries(runs, summaries)
        missing, unfinished = not_run(dataset_dir), interrupted(dataset_dir)
        write_json(summaries / "not_run.json", missing)
        write_json(summaries / "interrupted.json", unfinished)
        write_json(summaries / "publish.json", {"exclude_failed": exclude_failed})
        publish_dataset(dataset_dir.name, copied, missing, unfinished, out, run_dirs,
                        exclude_failed)  # fmt: skip
        published[dataset_dir.name] = {m: failure_note(r) for m, r in copied.items() if failures(r)}
    write_index(out)
    return published


def regenerate_markdown(out: Path, dataset: str) -> str:
    """The markdown page regenerated from the summaries committed under ``out/runs``."""
    summaries = out / "runs" / dataset
    runs = {}
    for method_dir in sorted(p for p in summaries.iterdir() if p.is_dir()):
        manifest = read_manifest(method_dir)
        cases = pd.read_csv(method_dir / "cases.csv",
                            dtype={"subject": str, "session": str, "reason": str})  # fmt: skip
        runs[method_dir.name] = MethodRun(method_dir.name, method_dir, manifest, cases)
    missing = json.loads((summaries / "not_run.json").read_text())
    unfinished_path = summaries / "interrupted.json"
    unfinished = json.loads(unfinished_path.read_text()) if unfinished_path.exists() else {}
    options = summaries / "publish.json"
    exclude_failed = (
        json.loads(options.read_text())["exclude_failed"] if options.exists() else False
    )
    shown, excluded = ranked_runs(runs, exclude_failed)
    return markdown(dataset, runs, leaderboard_stats(shown), missing, excluded, unfinished)
