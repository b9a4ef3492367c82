"""Compare finished runs on the same dataset split: other parameters, or other methods.

Per lesion category present (blastic, lytic, mixed, malignant): the mean of each headline lesion
metric with its n, and for every run after the first the paired Wilcoxon p against the first (the
reference) over the vertebrae both scored; false-positive lesions per healthy vertebra; and, for
runs that store per-candidate decisions (``kept`` in ``lesions.csv``), the phenotype the kept
candidates imply for each malignant vertebra against the true one (before the harness's
post-processing, so it describes the method's decision).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsbench.harness.evaluation import LESION_CATEGORIES, METRICS
from wsbench.harness.rundir import RunError
from wsbench.report.leaderboard import MethodRun, paired_p, published_runs, read_run

COMPARED = ("f1", "sq", "pq", "global_dice")
"""The lesion metrics compared (their direction comes from :data:`METRICS`)."""
POLARITY_NAMES = {frozenset(): "none", frozenset({1}): "lytic", frozenset({2}): "blastic",
                  frozenset({1, 2}): "mixed"}  # fmt: skip


def finished_run(path: Path) -> MethodRun:
    """The finished run in ``path`` (RunError otherwise)."""
    run = read_run(path)
    if run is None:
        raise RunError(
            f"{path} is not a finished run folder (manifest.json with 'finished', cases.csv)"
        )
    return run


def finished_runs(paths: list[Path]) -> list[MethodRun]:
    """The runs ``paths`` name: each a finished run folder, or a bench's dataset folder
    (``<out>/<dataset>``), which stands for the run its bench recorded per method."""
    runs = []
    for path in paths:
        if (path / "manifest.json").exists() or not path.is_dir():
            runs.append(finished_run(path))
            continue
        found = published_runs(path)
        if not found:
            raise RunError(f"{path} holds no finished run (neither a run folder nor a bench's)")
        runs += found.values()
    return runs


def figure_vertebrae(runs: dict[str, MethodRun], chosen: list[str], most: int) -> list[str]:
    """The vertebrae a comparison figure shows: ``chosen`` when given (each must be in every
    run), else the first ``most`` that every run scored, by id."""
    shared = set.intersection(*(set(r.cases["vertebra"]) for r in runs.values()))
    missing = [v for v in chosen if v not in shared]
    if missing:
        raise RunError(
            f"vertebra {missing[0]!r} is not in every run; choose among {sorted(shared)[:5]}…"
        )
    return chosen or sorted(shared)[:most]


def run_name(run: MethodRun, reference: MethodRun) -> str:
    """``run``'s method, followed by the parameters in which it differs from ``reference`` when
    both ran the same method."""
    method, params = run.manifest["method"]["name"], run.manifest["method"]["params"]
    if method != reference.manifest["method"]["name"]:
        return method
    theirs = reference.manifest["method"]["params"]
    changed = [f"{k}={v}" for k, v in params.items() if theirs.get(k) != v]
    return " ".join([method, *changed]) if run is not reference else method


def comparable(runs: list[MethodRun]) -> dict[str, MethodRun]:
    """The runs by display name, checked to share the dataset fingerprint and split."""
    reference = runs[0]
    for run in runs[1:]:
        for field, where in (("fingerprint", "dataset"), ("split", None)):
            mine = run.manifest[where][field] if where else run.manifest[field]
            theirs = reference.manifest[where][field] if where else reference.manifest[field]
            if mine != theirs:
                raise RunError(f"{run.run_dir} differs from {reference.run_dir} in its {field}")
    named: dict[str, MethodRun] = {}
    for run in runs:
        name = run_name(run, reference)
        named[name if name not in named else f"{name} ({run.run_dir.name})"] = run
    return named


def metric_rows(runs: dict[str, MethodRun]) -> pd.DataFrame:
    """Mean (n) of each metric per category and run, with the paired p against the first run."""
    names = list(runs)
    present = {c for run in runs.values() for c in run.cases["category"].dropna()}
    rows = []
    for category in (c for c in LESION_CATEGORIES if c in present):
        for metric in COMPARED:
            direction = METRICS[metric].direction
            values = {
                name: run.cases[run.cases["category"] == category].set_index("vertebra")[metric]
                for name, run in runs.items()
                if metric in run.cases
            }
            row = {"category": category, "metric": METRICS[metric].label}
            for name in values:
                column = values[name].dropna()
                row[name] = f"{column.mean():.3f} ({len(column)})" if len(column) else "–"
                if name != names[0] and names[0] in values:
                    row[f"p {name}"] = round(paired_p(values[name], values[names[0]], direction), 3)
            rows.append(row)
    return pd.DataFrame(rows)


def healthy_false_positives(runs: dict[str, MethodRun]) -> pd.Series:
    """Mean predicted lesions per healthy vertebra, per run (runs without lesion metrics, whose
    dataset has no lesion masks, are left out)."""
    return pd.Series(
        {n: r.cases.loc[r.cases["category"] == "healthy", "n_pred"].mean()
         for n, r in runs.items() if "n_pred" in r.cases},
        dtype=float,
    )  # fmt: skip


def candidate_table(run: MethodRun) -> pd.DataFrame | None:
    """The run's per-candidate table (``lesions.csv``), or None when the method wrote none."""
    try:
        return pd.read_csv(run.run_dir / "lesions.csv")
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def implied_phenotypes(run: MethodRun) -> pd.DataFrame | None:
    """True category × phenotype implied by the kept candidates, over malignant vertebrae;
    ``None`` when the run stores no per-candidate decisions."""
    lesions = candidate_table(run)
    if lesions is None or not {"kept", "label"} <= set(lesions):
        return None
    kept = lesions[lesions["kept"]].groupby("vertebra")["label"].agg(frozenset)
    scored = set(lesions["vertebra"])
    cases = run.cases[run.cases["category"].isin(LESION_CATEGORIES)].set_index("vertebra")
    implied = [
        POLARITY_NAMES[kept.get(v, frozenset())] if v in scored else "no candidate scored"
        for v in cases.index
    ]
    table = pd.DataFrame({"true": cases["category"].to_numpy(), "implied": implied})
    return pd.crosstab(table["true"], table["implied"])
