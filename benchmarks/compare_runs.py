"""Compare runs of one method with different parameters on the same dataset split.

    python benchmarks/compare_runs.py REFERENCE_RUN OTHER_RUN [...]

Each run is a ``wsbench run`` output folder (``manifest.json``, ``cases.csv``, ``lesions.csv``);
all must share the dataset fingerprint and split. Prints, per category (blastic, lytic, mixed),
the mean of the lesion metrics with n, and for every run after the first the paired Wilcoxon
p-value against the first (the reference) over the vertebrae both scored; then false-positive
lesions per healthy vertebra; then, from each run's per-candidate table, the phenotype its kept
candidates imply for each malignant vertebra (lytic / blastic / mixed / none; "no candidate
scored" when the vertebra has no row there, e.g. gated out) against the true one — before the
harness's post-processing, so it describes the method's decision. For a run with the gate off
(``only_malignant=false``) it also prints how well the per-vertebra malignancy probability
``c_z`` separates each malignant category from the healthy vertebrae, and how many pass the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from sklearn.metrics import roc_auc_score

from wsbench.leaderboard import MethodRun, paired_p, read_run

METRICS = {"f1": "higher", "sq": "higher", "pq": "higher", "global_dice": "higher"}
"""Compared lesion metrics and which way is better."""
CATEGORIES = ("blastic", "lytic", "mixed")
POLARITY_NAMES = {frozenset(): "none", frozenset({1}): "lytic", frozenset({2}): "blastic",
                  frozenset({1, 2}): "mixed"}  # fmt: skip

app = typer.Typer(add_completion=False, help=__doc__)


def variant_name(run: MethodRun, reference: MethodRun) -> str:
    """The parameters in which ``run`` differs from ``reference`` (``reference`` for itself)."""
    mine, theirs = run.manifest["method"]["params"], reference.manifest["method"]["params"]
    changed = [f"{k}={v}" for k, v in mine.items() if theirs.get(k) != v]
    return " ".join(changed) or "reference"


def metric_rows(runs: dict[str, MethodRun]) -> pd.DataFrame:
    """Mean (n) of each metric per category and run, with the paired p against the first run."""
    names = list(runs)
    rows = []
    for category in CATEGORIES:
        for metric, direction in METRICS.items():
            values = {
                name: run.cases[run.cases["category"] == category].set_index("vertebra")[metric]
                for name, run in runs.items()
            }
            row = {"category": category, "metric": metric}
            for name in names:
                column = values[name].dropna()
                row[name] = f"{column.mean():.3f} ({len(column)})" if len(column) else "–"
                if name != names[0]:
                    p = paired_p(values[name], values[names[0]], direction)
                    row[f"p {name}"] = round(p, 3)
            rows.append(row)
    return pd.DataFrame(rows)


def healthy_false_positives(runs: dict[str, MethodRun]) -> pd.Series:
    """Mean predicted lesions per healthy vertebra, per run."""
    return pd.Series(
        {n: r.cases.loc[r.cases["category"] == "healthy", "n_pred"].mean() for n, r in runs.items()}
    )


def candidate_table(run: MethodRun) -> pd.DataFrame | None:
    """The run's per-candidate table (``lesions.csv``), or None when the method wrote none."""
    path = run.run_dir / "lesions.csv"
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return None


def implied_phenotypes(run: MethodRun, lesions: pd.DataFrame) -> pd.DataFrame:
    """Malignant vertebrae × (true category, phenotype implied by the kept candidates)."""
    kept = lesions[lesions["kept"]].groupby("vertebra")["label"].agg(frozenset)
    scored = set(lesions["vertebra"])
    cases = run.cases[run.cases["category"].isin(CATEGORIES)].set_index("vertebra")
    implied = [
        POLARITY_NAMES[kept.get(v, frozenset())] if v in scored else "no candidate scored"
        for v in cases.index
    ]
    return pd.DataFrame({"true": cases["category"].to_numpy(), "implied": implied})


def gate_auc(run: MethodRun, lesions: pd.DataFrame) -> pd.DataFrame | None:
    """ROC-AUC of the per-vertebra malignancy probability (``c_z`` of ``lesions.csv``) of each
    malignant category against the healthy vertebrae; ``None`` unless the run's gate was off
    (``only_malignant=false``), since a gated run records only the vertebrae that passed."""
    if run.manifest["method"]["params"].get("only_malignant", True):
        return None
    c_z = lesions.groupby("vertebra")["c_z"].first()
    cases = run.cases.set_index("vertebra").join(c_z, how="inner")
    healthy = cases.loc[cases["category"] == "healthy", "c_z"]
    rows = []
    for category in CATEGORIES:
        sick = cases.loc[cases["category"] == category, "c_z"]
        labels = [0] * len(healthy) + [1] * len(sick)
        rows.append({"category": category, "n": len(sick), "n healthy": len(healthy),
                     "AUC": roc_auc_score(labels, pd.concat([healthy, sick])),
                     "passes gate (c ≥ 0.5)": int((sick >= 0.5).sum())})  # fmt: skip
    return pd.DataFrame(rows)


def finished_run(path: Path) -> MethodRun:
    """The finished run in ``path``."""
    run = read_run(path)
    if run is None:
        raise typer.BadParameter(f"{path} is not a finished run folder (manifest, cases.csv)")
    return run


def run_identity(run: MethodRun) -> dict[str, str]:
    """What runs must share to be compared: method, dataset fingerprint and split."""
    manifest = run.manifest
    return {
        "method": manifest["method"]["name"],
        "dataset": manifest["dataset"]["fingerprint"],
        "split": manifest["split"],
    }


@app.command()
def main(
    run_dirs: Annotated[list[Path], typer.Argument(help="run folders; the first is the reference")],
) -> None:
    """Print the comparison tables."""
    runs_in_order = [finished_run(path) for path in run_dirs]
    reference = runs_in_order[0]
    for run in runs_in_order[1:]:
        mine, theirs = run_identity(run), run_identity(reference)
        differing = [field for field in mine if mine[field] != theirs[field]]
        if differing:
            raise typer.BadParameter(
                f"{run.run_dir} differs from the reference in {', '.join(differing)}"
            )
    runs = {variant_name(r, reference): r for r in runs_in_order}
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(metric_rows(runs).to_string(index=False))
        print("\nfalse-positive lesions per healthy vertebra")
        print(healthy_false_positives(runs).round(2).to_string())
        for name, run in runs.items():
            lesions = candidate_table(run)
            if lesions is None or "kept" not in lesions:
                continue
            table = implied_phenotypes(run, lesions)
            print(f"\nphenotype implied by kept candidates — {name}")
            print(pd.crosstab(table["true"], table["implied"]).to_string())
            gate = gate_auc(run, lesions) if "c_z" in lesions else None
            if gate is not None:
                print(f"\nclassifier c(z) against healthy vertebrae — {name}")
                print(gate.round(3).to_string(index=False))


if __name__ == "__main__":
    app()
