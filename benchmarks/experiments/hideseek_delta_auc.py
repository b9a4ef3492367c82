"""Does Δ separate true from false Hide-and-Seek candidates better than c(z_hide)? (paper A.4.2)

Usage:

    python benchmarks/experiment.py hideseek-delta-auc [RUN_DIR] [--bootstrap 2000]

Reads a finished ``wsbench run --method hideseek`` (or ``hideseek-ungated``) directory (default:
the Hide-and-Seek run published under ``leaderboard/runs/phantom``, else the run the bench
recorded under ``--runs``, else the newest finished one there). Every
scored candidate is a row of ``lesions.csv`` with ``score`` = Δ (Eq. 3), ``c_hide`` = the classifier
probability of the image revealing only that candidate, and ``overlaps_reference`` = whether it
touches a reference lesion of its own polarity (the true/false label). Per candidate polarity it
prints the ROC-AUC of Δ, of ``c_hide`` and of ``c_z`` = ``c(z)``, the classifier probability of
the unedited vertebra (the paper's Table 7 ``p_orig``; A.4.2's "raw malignancy probability" may
mean either), and of the candidate's ``size`` in pixels (a size prior alone, the baseline Δ has to
beat), with 95 % intervals and the intervals of the differences Δ − ``c_hide`` and Δ − ``size``
from a bootstrap that resamples vertebrae (candidates of one vertebra are not independent), and
draws the ROC curves to ``docs/figures/hideseek_delta_auc.png``; both for all scored candidates and
for those of malignant vertebrae only (a healthy vertebra the gate lets through has only false
candidates). Within one vertebra Δ is an increasing affine function of ``c_hide`` (``c(z) >
c(z_healthy)`` after the gate), so the two rank its candidates identically: any AUC difference comes
from pooling candidates of different vertebrae, i.e. from Δ's normalisation by ``c(z) −
c(z_healthy)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from sklearn.metrics import roc_auc_score, roc_curve

from wsbench.contract import BLASTIC, LYTIC
from wsbench.report.leaderboard import published_runs, read_run

from .common import FIGURES, ROOT, pyplot, save_figure

PUBLISHED = ROOT / "leaderboard" / "runs" / "phantom"
POLARITIES = {"lytic": (LYTIC,), "blastic": (BLASTIC,), "both": (LYTIC, BLASTIC)}
SCORES = {"Δ": "score", "c(z_hide)": "c_hide", "c(z)": "c_z", "size": "size"}
COMPARED = ("c(z_hide)", "size")
"""The scores Δ is compared with (the difference of AUCs, bootstrapped)."""

app = typer.Typer(add_completion=False, help=__doc__)


def published_run(dataset_dir: Path, method: str = "hideseek") -> Path:
    """The ``method`` run published for ``dataset_dir``: a finished run directory named after the
    method (the leaderboard's copies), else the run its bench recorded or the newest finished
    one."""
    direct = read_run(dataset_dir / method) if (dataset_dir / method).is_dir() else None
    run = direct or (published_runs(dataset_dir).get(method) if dataset_dir.is_dir() else None)
    if run is None:
        raise typer.BadParameter(f"no finished {method} run under {dataset_dir}")
    return run.run_dir


def candidates_of(run_dir: Path) -> pd.DataFrame:
    """``lesions.csv`` joined with each vertebra's label and category from ``cases.csv``."""
    lesions = pd.read_csv(run_dir / "lesions.csv")
    missing = {"score", "c_hide", "c_z", "overlaps_reference", "label"} - set(lesions.columns)
    if missing:
        raise typer.BadParameter(
            f"{run_dir / 'lesions.csv'} lacks {sorted(missing)}: is it a hideseek run on a "
            "dataset with lesion masks?"
        )
    cases = pd.read_csv(run_dir / "cases.csv")[["vertebra", "label", "category"]]
    cases = cases.rename(columns={"label": "vertebra_label"})
    table = lesions.merge(cases, on="vertebra", how="left")
    table["truth"] = table["overlaps_reference"].astype(bool)
    return table


def bootstrap_aucs(
    table: pd.DataFrame, repeats: int, seed: int
) -> dict[str, tuple[float, float, float]]:
    """Point AUC and 95 % vertebra-bootstrap interval of each score and of their difference."""
    truth = table["truth"].to_numpy()
    values = {name: table[column].to_numpy() for name, column in SCORES.items()}
    groups = list(table.groupby("vertebra").indices.values())
    rng = np.random.default_rng(seed)
    differences = [f"Δ − {name}" for name in COMPARED]
    draws: dict[str, list[float]] = {name: [] for name in [*SCORES, *differences]}
    for _ in range(repeats):
        rows = np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))])
        if len(np.unique(truth[rows])) < 2:
            continue
        aucs = {name: roc_auc_score(truth[rows], v[rows]) for name, v in values.items()}
        for name, value in aucs.items():
            draws[name].append(value)
        for name in COMPARED:
            draws[f"Δ − {name}"].append(aucs["Δ"] - aucs[name])
    point = {name: roc_auc_score(table["truth"], table[c]) for name, c in SCORES.items()}
    point |= {f"Δ − {name}": point["Δ"] - point[name] for name in COMPARED}
    return {
        name: (point[name], *np.percentile(values, [2.5, 97.5])) for name, values in draws.items()
    }


def draw(scopes: dict[str, pd.DataFrame], out: Path, title: str) -> None:
    """ROC curves of the :data:`SCORES`: one row per scope of vertebrae, one panel per polarity."""
    plt = pyplot()
    fig, axes = plt.subplots(len(scopes), len(POLARITIES), figsize=(13, 4.2 * len(scopes)),
                             squeeze=False)  # fmt: skip
    for row, (scope, table) in zip(axes, scopes.items(), strict=True):
        for ax, (name, labels) in zip(row, POLARITIES.items(), strict=True):
            part = table[table["label"].isin(labels)]
            if part["truth"].nunique() < 2:
                ax.set_title(f"{name}, {scope} vertebrae: one class only")
                continue
            for score, column in SCORES.items():
                fpr, tpr, _ = roc_curve(part["truth"], part[column])
                auc = roc_auc_score(part["truth"], part[column])
                ax.plot(fpr, tpr, label=f"{score}  AUC {auc:.3f}")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.5, ls=":")
            counts = f"{int(part['truth'].sum())} true / {len(part)}"
            ax.set(xlabel="false candidates kept (FPR)", ylabel="true candidates kept (TPR)",
                   title=f"{name} candidates, {scope} vertebrae\n({counts})")  # fmt: skip
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)


@app.command()
def main(
    run_dir: Annotated[Path | None, typer.Argument(help="finished hideseek run")] = None,
    runs: Annotated[Path, typer.Option(help="dataset folder of runs to read")] = PUBLISHED,
    method: Annotated[str, typer.Option(help="which published run to read")] = "hideseek",
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples of vertebrae")] = 2000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    out: Annotated[Path, typer.Option(help="ROC figure")] = FIGURES / "hideseek_delta_auc.png",
) -> None:
    """Print ROC-AUC of Δ, c(z_hide) and c(z) per candidate polarity; draw the ROC curves."""
    run_dir = run_dir or published_run(runs, method)
    table = candidates_of(run_dir)
    print(f"run {run_dir}: {len(table)} scored candidates in "
          f"{table['vertebra'].nunique()} vertebrae")  # fmt: skip
    names = [*SCORES, *(f"Δ − {name}" for name in COMPARED)]
    print("| candidates | vertebrae | n | true | "
          + " | ".join(f"AUC {n} [95% CI]" if "−" not in n else f"{n} [95% CI]" for n in names)
          + " |")  # fmt: skip
    print("|---" * (4 + len(names)) + "|")
    scopes = {"all": table, "malignant": table[table["vertebra_label"] == "malignant"]}
    for scope, rows in scopes.items():
        for name, labels in POLARITIES.items():
            part = rows[rows["label"].isin(labels)]
            if part["truth"].nunique() < 2:
                print(f"| {name} | {scope} | {len(part)} | {int(part['truth'].sum())} | "
                      "one class only |" + " |" * (len(names) - 1))  # fmt: skip
                continue
            result = bootstrap_aucs(part, bootstrap, seed)
            cells = [f"{p:.3f} [{lo:.3f}, {hi:.3f}]" for p, lo, hi in result.values()]
            print(f"| {name} | {scope} | {len(part)} | {int(part['truth'].sum())} | "
                  + " | ".join(cells) + " |")  # fmt: skip
    draw(scopes, out, f"Δ vs c(z_hide) and c(z) for true/false candidates — {run_dir.name}")
