"""Leaderboard statistics and tables from run directories.

For each dataset the newest finished run of every method is read (``cases.csv`` and
``manifest.json``). Per category and metric: mean ± SD over vertebrae, a seeded bootstrap over
vertebrae for the 95% CI of each mean and of each method's rank, and a paired Wilcoxon
signed-rank test of every method against the best one. Ranking uses only each metric's
declared direction. Every vertebra counts whatever its status: a failed or timed-out one carries
the metrics of an empty answer, and each method × category carries its ``vertebrae``, ``failed``
and ``refused`` counts. The detection metrics of the stricter lesion match (IoU > 0.5,
``strict_`` columns) are ranked like the others; :func:`rank_changes` says whose rank they move.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata, wilcoxon

from wsbench.harness.evaluation import METRICS, STRICT, category_counts
from wsbench.harness.rundir import read_manifest

BOOTSTRAP_SAMPLES = 1000
ALPHA = 0.05


@dataclass(frozen=True)
class MethodRun:
    """The newest finished run of one method on one dataset."""

    method: str
    run_dir: Path
    manifest: dict
    cases: pd.DataFrame


def read_run(run_dir: Path) -> MethodRun | None:
    """A finished run directory (manifest with ``finished`` and a ``cases.csv``), else None."""
    manifest_path, cases_path = run_dir / "manifest.json", run_dir / "cases.csv"
    if not (manifest_path.exists() and cases_path.exists()):
        return None
    manifest = read_manifest(run_dir)
    if not manifest.get("finished"):
        return None
    cases = pd.read_csv(cases_path, dtype={"subject": str, "session": str, "reason": str})
    return MethodRun(run_dir.parent.name, run_dir, manifest, cases)


def newest_runs(dataset_dir: Path) -> dict[str, MethodRun]:
    """Newest finished run per method under ``<runs>/<dataset>/``, by method name."""
    found: dict[str, MethodRun] = {}
    for method_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        for run_dir in sorted(method_dir.iterdir(), reverse=True):
            run = read_run(run_dir) if run_dir.is_dir() else None
            if run is not None:
                found[method_dir.name] = run
                break
    return found


def bench_outcomes(dataset_dir: Path) -> dict[str, dict[str, Any]]:
    """Per method, the outcome the dataset's benches recorded (``bench.json``; empty if none)."""
    path = dataset_dir / "bench.json"
    return json.loads(path.read_text()).get("methods", {}) if path.exists() else {}


def published_runs(dataset_dir: Path) -> dict[str, MethodRun]:
    """Per method, the run its bench recorded, else its newest finished run.

    A run made after the bench (a variant with other parameters, say) therefore does not take
    the bench's place; a method the bench never ran is represented by its newest run.
    """
    runs = newest_runs(dataset_dir)
    for method, outcome in bench_outcomes(dataset_dir).items():
        recorded = Path(outcome.get("run_dir") or "").name
        run = read_run(dataset_dir / method / recorded) if outcome["status"] == "ok" else None
        if recorded and run is not None:
            runs[method] = run
    return runs


def failures(run: MethodRun) -> int:
    """How many of the run's vertebrae (with a category) failed or timed out."""
    return int(category_counts(run.cases)["failed"].sum())


def failure_note(run: MethodRun) -> str:
    """``2 of 207 vertebrae failed or timed out``."""
    total = int(category_counts(run.cases)["vertebrae"].sum())
    return f"{failures(run)} of {total} vertebrae failed or timed out"


def not_run(dataset_dir: Path) -> dict[str, str]:
    """Methods a bench could not run on this dataset, with the reason (``bench.json``)."""
    return {m: r["reason"] for m, r in bench_outcomes(dataset_dir).items() if r["status"] != "ok"}


def interrupted(dataset_dir: Path) -> dict[str, str]:
    """Methods with a started run (a manifest) but no finished one, with the newest such run's
    id: ``{"medsam": "20261204-175513-346815-c80203d0"}``."""
    found = {}
    for method_dir in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        started = sorted(r.name for r in method_dir.iterdir() if (r / "manifest.json").is_file())
        if started and not any(read_run(method_dir / name) for name in started):
            found[method_dir.name] = started[-1]
    return found


def direction_key(values: np.ndarray, direction: str) -> np.ndarray:
    """Values turned into 'smaller is better' keys for ``direction``; NaN stays NaN."""
    if direction == "higher":
        return -values
    if direction == "zero":
        return np.abs(values)
    return values


def ranks(means: np.ndarray, direction: str) -> np.ndarray:
    """Rank of each mean along the last axis (1 = best, ties share the lowest rank, NaN ranks
    last)."""
    key = direction_key(np.asarray(means, dtype=float), direction)
    key = np.where(np.isnan(key), np.inf, key)
    return rankdata(key, method="min", axis=-1).astype(float)


def metric_matrix(runs: dict[str, MethodRun], category: str, metric: str) -> pd.DataFrame:
    """Vertebrae (rows) × methods (columns) values of one metric in one category, whatever the
    vertebra's status."""
    columns = {}
    for method, run in runs.items():
        part = run.cases[run.cases["category"] == category]
        if metric in part:
            columns[method] = part.set_index("vertebra")[metric].astype(float)
    return pd.DataFrame(columns)


def bootstrap(matrix: pd.DataFrame, direction: str, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap over vertebrae: 95% CI of each method's mean and of its rank.

    :data:`BOOTSTRAP_SAMPLES` seeded resamples of the vertebrae (rows), the same for every method;
    a method's mean skips the vertebrae it has no value for."""
    # Not scipy.stats.bootstrap (paired, percentile): it draws the same resamples, but it needs
    # two or more vertebrae and gives a NaN mean CI when some resample holds no value of a method,
    # where this skips that resample (4 CIs of the published phantom leaderboard would go blank).
    values = matrix.to_numpy(dtype=float)
    n = values.shape[0]
    samples = values[np.random.default_rng(seed).integers(0, n, (BOOTSTRAP_SAMPLES, n))]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a method without values: its CI is NaN
        counts = np.sum(~np.isnan(samples), axis=1)
        means = np.where(counts > 0, np.nansum(samples, axis=1) / np.maximum(counts, 1), np.nan)
        mean_ci = np.nanpercentile(means, [2.5, 97.5], axis=0)
    rank_draws = ranks(means, direction)
    return {"mean_ci": mean_ci, "rank_ci": np.percentile(rank_draws, [2.5, 97.5], axis=0)}


def paired_p(a: pd.Series, b: pd.Series, direction: str) -> float:
    """Two-sided Wilcoxon signed-rank p of ``a`` vs ``b`` on vertebrae where both exist."""
    both = pd.concat([a, b], axis=1).dropna()
    if len(both) == 0:
        return math.nan
    x = direction_key(both.iloc[:, 0].to_numpy(), direction)
    y = direction_key(both.iloc[:, 1].to_numpy(), direction)
    if np.all(x == y):
        return 1.0
    return float(wilcoxon(x, y).pvalue)


def metric_stats(runs: dict[str, MethodRun], category: str, metric: str, seed: int) -> pd.DataFrame:
    """Per method: mean, SD, n (values in the mean), CI of the mean, rank with CI, p against the
    best, best flag, and the category's ``vertebrae``, ``failed`` and ``refused`` counts."""
    direction = METRICS[metric].direction
    matrix = metric_matrix(runs, category, metric)
    if matrix.empty or matrix.notna().sum().sum() == 0:
        return pd.DataFrame()
    means = matrix.mean().to_numpy()
    rank = ranks(means, direction)
    boot = bootstrap(matrix, direction, seed)
    best = matrix.columns[int(np.argmin(rank))]
    rows = []
    for i, method in enumerate(matrix.columns):
        column = matrix[method]
        counts = category_counts(runs[method].cases).set_index("category").loc[category]
        p = math.nan if method == best else paired_p(column, matrix[best], direction)
        rows.append({
            "category": category, "method": method, "metric": metric, "direction": direction,
            "mean": means[i], "sd": column.std(ddof=1), "n": int(column.notna().sum()),
            "ci_low": boot["mean_ci"][0, i], "ci_high": boot["mean_ci"][1, i],
            "rank": rank[i], "rank_ci_low": boot["rank_ci"][0, i],
            "rank_ci_high": boot["rank_ci"][1, i],
            "p_vs_best": p, "worse_than_best": bool(p < ALPHA) if not math.isnan(p) else False,
            "best": bool(rank[i] == 1 and not math.isnan(means[i])),
            "vertebrae": int(counts["vertebrae"]), "failed": int(counts["failed"]),
            "refused": int(counts["refused"]),
        })  # fmt: skip
    return pd.DataFrame(rows)


def leaderboard_stats(runs: dict[str, MethodRun], seed: int = 0) -> pd.DataFrame:
    """The tidy statistics table: one row per category × method × metric."""
    frames = []
    categories = sorted({c for r in runs.values() for c in r.cases["category"].dropna()})
    for category in categories:
        for metric in METRICS:
            if METRICS[metric].applies_to(category):
                frames.append(metric_stats(runs, category, metric, seed))
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def rank_changes(stats: pd.DataFrame, category: str, metric: str) -> list[tuple[str, int, int]]:
    """``(method, rank at the paper's match, rank at IoU > 0.5)`` of each method whose rank by
    ``metric`` (a paper metric, e.g. ``f1``) differs from its rank by ``strict_<metric>``, both
    ranked among the methods that have rows of both in ``stats`` (a run made before the
    stricter match has none); a NaN mean ranks last, as in the tables."""
    if stats.empty:
        return []
    part = stats[stats["category"] == category]
    paper = part[part["metric"] == metric].set_index("method")["mean"]
    strict = part[part["metric"] == STRICT + metric].set_index("method")["mean"]
    common = [m for m in paper.index if m in strict.index]
    direction = METRICS[metric].direction
    before = ranks(paper[common].to_numpy(dtype=float), direction)
    after = ranks(strict[common].to_numpy(dtype=float), direction)
    moved = zip(common, before, after, strict=True)
    return [(method, int(a), int(b)) for method, a, b in moved if a != b]
