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
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from wsbench.files import write_json
from wsbench.harness.evaluation import (
    CATEGORIES,
    HEALTHY,
    METRICS,
    STRICT,
    STRICT_HEADLINE,
    metric_legend,
)
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
    rank_changes,
)

SUMMARY_FILES = ("manifest.json", "cases.csv", "lesions.csv")
RANKED_METRICS = ("f1", "sq")
LYTIC_RGB, BLASTIC_RGB = (0.9, 0.15, 0.15), (0.15, 0.35, 0.95)
FAILED_MARK = "†"
TRANSFER_MARK = "‡"
TITLE_WIDTH = 24
"""Characters per line of a figure panel's title (a long vertebra id wraps, not overlaps)."""
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


def transfers(runs: dict[str, MethodRun]) -> dict[str, dict[str, dict[str, str]]]:
    """The transfer runs among ``runs``: method → its models not trained on the run's dataset
    (role → ``{"dataset", "fingerprint"}``, the manifest's ``transfer``)."""
    return {m: r.manifest["transfer"] for m, r in runs.items() if r.manifest.get("transfer")}


def transfer_sources(models: dict[str, dict[str, str]]) -> str:
    """``phantom``: the datasets a transfer run's models were trained on, sorted, joined."""
    return ", ".join(sorted({origin["dataset"] for origin in models.values()}))


def transfer_lines(runs: dict[str, MethodRun]) -> list[str]:
    """``- ‡ = transfer run …: hideseek dae, classifier from phantom``: what the mark means and
    where each marked method's models come from; no line without a transfer run."""
    parts = []
    for method, models in transfers(runs).items():
        parts.append(f"{method} {', '.join(models)} from {transfer_sources(models)}")
    if not parts:
        return []
    return [f"- {TRANSFER_MARK} = transfer run, with models trained on other data than this "
            f"dataset's training split: {'; '.join(parts)}"]  # fmt: skip


def method_label(method: str, failed: bool, transferred: bool) -> str:
    """The method's name as the tables show it, with ``†`` when it failed on some of the
    table's vertebrae and ``‡`` for a transfer run."""
    marks = (FAILED_MARK if failed else "") + (TRANSFER_MARK if transferred else "")
    return f"{method} {marks}" if marks else method


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
        *transfer_lines(runs),
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


def category_table(
    stats: pd.DataFrame, category: str, methods: list[str], transferred: frozenset[str]
) -> list[str]:
    """Markdown rows: metrics (short labels) × methods for one category, after the vertebrae
    each method was scored on, then the legend; a method that failed on any of them is marked,
    with a footnote, and so are the ``transferred`` ones (:func:`method_label`)."""
    part = stats[stats["category"] == category]
    counts = part.groupby("method").first()
    failing = [m for m in methods if m in counts.index and counts.loc[m, "failed"] > 0]
    names = [method_label(m, m in failing, m in transferred) for m in methods]
    lines = ["| Metric | " + " | ".join(names) + " |", "|---" * (len(methods) + 1) + "|"]
    cells = [counts_cell(counts.loc[m]) if m in counts.index else "–" for m in methods]
    lines.append("| Vertebrae: n (failed, refused) | " + " | ".join(cells) + " |")
    shown = [m for m in METRICS.values() if m.name in set(part["metric"]) and not m.strict]
    for metric in shown:
        rows = part[part["metric"] == metric.name].set_index("method")
        cells = [cell(rows.loc[m]) if m in rows.index else "–" for m in methods]
        lines.append(f"| {metric.short} {metric.arrow} | " + " | ".join(cells) + " |")
    lines += ["", metric_legend(shown)]
    if failing:
        lines += ["", f"{FAILED_MARK} failed or timed out on some of these vertebrae, scored as "
                      "an empty answer (row *Vertebrae*)."]  # fmt: skip
    return lines


def rank_cell(row: pd.Series) -> str:
    """``2 [1–3]``: a rank with its 95% bootstrap CI."""
    return f"{row['rank']:.0f} [{row['rank_ci_low']:.0f}–{row['rank_ci_high']:.0f}]"


def rank_table(
    stats: pd.DataFrame, category: str, methods: list[str], transferred: frozenset[str]
) -> list[str]:
    """Markdown rows: each method's rank (95% bootstrap CI) on the headline metrics, names
    marked as in :func:`category_table`."""
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
            cells.append(rank_cell(row.iloc[0]))
        name = method_label(method, method in failing, method in transferred)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


STRICT_TITLE = "At the stricter match, IoU > 0.5 one-to-one (panoptic quality's):"
RERUN = "re-run (`wsbench bench --fresh`, or `wsbench run`) to compute it"


def changes_line(stats: pd.DataFrame, category: str) -> str:
    """``Ranks moved from the paper's match (Dice > 0): by F1 (RQ) medsam 1 → 5, otsu 5 → 1; by
    SQ none.``, computed by :func:`rank_changes` for the headline metrics."""
    parts = []
    for name in STRICT_HEADLINE:
        paper = name.removeprefix(STRICT)
        moved = ", ".join(f"{m} {a} → {b}" for m, a, b in rank_changes(stats, category, paper))
        parts.append(f"by {METRICS[paper].short} {moved or 'none'}")
    return f"Ranks moved from the paper's match (Dice > 0): {'; '.join(parts)}."


def strict_table(stats: pd.DataFrame, category: str, methods: list[str],
                 transferred: frozenset[str], uncomputed: list[str]) -> list[str]:  # fmt: skip
    """Markdown rows: each method's detection F1 and instance Dice at IoU > 0.5 with its rank
    (95% bootstrap CI), the legend, whose ranks moved from the paper's match, and which methods'
    runs predate the stricter match (``uncomputed``); names marked as in
    :func:`category_table`. Nothing for a category the metrics do not apply to."""
    if not METRICS[STRICT_HEADLINE[0]].applies_to(category):
        return []
    if all(m in uncomputed for m in methods):
        return [f"{STRICT_TITLE} not computed: these runs were made before it; {RERUN}.", ""]
    part = stats[(stats["category"] == category) & stats["metric"].isin(STRICT_HEADLINE)]
    shown = [METRICS[name] for name in STRICT_HEADLINE]
    header = " | ".join(f"{m.short} {m.arrow} | rank by {m.short}" for m in shown)
    lines = [STRICT_TITLE, "", f"| Method | {header} |", "|---" * (2 * len(shown) + 1) + "|"]
    failing = set(part.loc[part["failed"] > 0, "method"])
    for method in methods:
        cells = []
        for metric in shown:
            row = part[(part["metric"] == metric.name) & (part["method"] == method)]
            cells += [cell(row.iloc[0]), rank_cell(row.iloc[0])] if len(row) else ["–", "–"]
        name = method_label(method, method in failing, method in transferred)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", metric_legend(shown), "", changes_line(stats, category)]
    missing = [m for m in methods if m in uncomputed]
    if missing:
        lines += ["", f"Not computed for {', '.join(missing)} (made before the stricter match): "
                      f"{RERUN}."]  # fmt: skip
    return [*lines, ""]


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
    """The whole ``<dataset>.md`` page: per category its table, ranks and, for lesion
    categories, the stricter match (:func:`strict_table`); ``excluded`` methods (with why) are
    listed, not shown in the tables, and so are the ``missing`` (not run) and ``unfinished``
    (interrupted) ones."""
    methods = [m for m in runs if m not in excluded]
    lines = [f"# wsbench leaderboard — {dataset}", "", *header_lines(dataset, runs), ""]
    present = [c for c in CATEGORIES if c in set(stats.get("category", []))]
    transferred = frozenset(transfers(runs))
    uncomputed = [m for m in methods if STRICT_HEADLINE[0] not in runs[m].cases]
    for category in present:
        n = int(stats[stats["category"] == category]["vertebrae"].max())
        title = "Healthy vertebrae (false positives)" if category == HEALTHY else category.title()
        table = category_table(stats, category, methods, transferred)
        lines += [f"## {title} (n = {n})", "", *table, ""]
        ranked = rank_table(stats, category, methods, transferred)
        if ranked:
            lines += ["Rank (95% bootstrap CI):", "", *ranked, ""]
        lines += strict_table(stats, category, methods, transferred, uncomputed)
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
    ax.set_title("\n".join(textwrap.wrap(title, TITLE_WIDTH)), fontsize=8)
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
    """Paper-Fig.-2-style grid as base64 PNG of the vertebrae :func:`figure_rows` picks (rows
    labelled with their category, so that a healthy one reads ``phantom_p0030_T8 (healthy)``),
    from the masks in each method's run directory ``run_dirs[method]``."""
    if not runs:
        return None
    categories = next(iter(runs.values())).cases.set_index("vertebra")["category"]
    fig = overlay_grid(run_dirs, figure_rows(runs), categories.to_dict())
    return None if fig is None else png_base64(fig)


def centre(array: np.ndarray | None) -> np.ndarray | None:
    """The centre slice of a k-slice run's ``(K, H, W)`` mask array; a 2D array as it is."""
    return array[len(array) // 2] if array is not None and array.ndim == 3 else array


def stored_mask(run_dirs: dict[str, Path], vertebra: str) -> Path:
    """The mask file of ``vertebra`` in the first run directory that stored one."""
    return next(
        mask_path(d, vertebra) for d in run_dirs.values() if mask_path(d, vertebra).exists()
    )


def overlay_grid(
    run_dirs: dict[str, Path], vertebrae: list[str], categories: dict[str, str]
) -> plt.Figure | None:
    """A grid of overlays: one row per vertebra (labelled with its category when known), columns
    input, ground truth (when any vertebra has a reference) and each run's answer, from the
    masks in ``run_dirs`` (name → run directory); ``None`` when no run stored a mask of them."""
    stored = {m: [mask_path(d, v).exists() for v in vertebrae] for m, d in run_dirs.items()}
    rows = [v for i, v in enumerate(vertebrae) if any(found[i] for found in stored.values())]
    names = [m for m in run_dirs if any(stored[m])]  # a failed vertebra has no masks
    if not names or not rows:
        return None
    first = {v: np.load(stored_mask(run_dirs, v)) for v in rows}
    truth = any("reference" in first[v] for v in rows)
    lead = 2 if truth else 1
    fig, axes = plt.subplots(len(rows), len(names) + lead,
                             figsize=(1.6 * (len(names) + lead), 1.7 * len(rows)),
                             squeeze=False)  # fmt: skip
    for i, vertebra in enumerate(rows):
        image, reference = (centre(first[vertebra].get(k)) for k in ("image", "reference"))
        category = categories.get(vertebra)
        overlay(axes[i, 0], image, None, vertebra + (f" ({category})" if category else ""))
        if truth:
            empty = reference is None or not np.any(reference)
            overlay(axes[i, 1], image, reference, "ground truth" + (" (empty)" if empty else ""))
        for j, name in enumerate(names):
            path = mask_path(run_dirs[name], vertebra)
            labels = centre(np.load(path)["labels"]) if path.exists() else None
            overlay(axes[i, j + lead], image, labels, name)
    fig.tight_layout()
    return fig


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
    """A matplotlib figure as base64 PNG with a 256-colour palette (a third of the RGBA size;
    grey CT and two overlay colours survive it), figure closed."""
    from PIL import Image

    drawn, buffer = io.BytesIO(), io.BytesIO()
    fig.savefig(drawn, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    palette = Image.open(drawn).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    palette.save(buffer, format="PNG", optimize=True)
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
    if not stats.empty:
        sources = {m: transfer_sources(t) for m, t in transfers(shown).items()}
        stats["transfer_from"] = stats["method"].map(sources).fillna("")
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
