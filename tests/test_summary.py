"""The run summary at 80 columns: a title line, short metric labels, n where it differs, a
legend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich.console import Console

from wsbench.harness.runner import RunResult
from wsbench.report.summary import mean_cell, print_summary

RUN_ID = "20260101-000000-000000-0000abcd"


def finished_run(tmp_path: Path) -> RunResult:
    """A run directory of three blastic and two healthy vertebrae; SQ is NaN on the blastic
    vertebra where nothing was matched."""
    run_dir = tmp_path / "phantom" / "hideseek" / RUN_ID
    run_dir.mkdir(parents=True)
    manifest = {"method": {"name": "hideseek", "models": {}}, "dataset": {"name": "phantom"},
                "split": "test", "finished": "2026-01-01T00:00:00"}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    cases = pd.DataFrame({
        "vertebra": ["b1", "b2", "b3", "h1", "h2"],
        "category": ["blastic"] * 3 + ["healthy"] * 2,
        "status": ["ok", "ok", "refused", "ok", "ok"],
        "reason": ["", "", "refused: c(z)=0.1 < 0.5", "", ""],
        "f1": [1.0, 0.5, 0.0, math.nan, math.nan],
        "sq": [0.8, 0.6, math.nan, math.nan, math.nan],
        "fp": [math.nan, math.nan, math.nan, 0.0, 2.0],
        "pred_area_mm2": [math.nan, math.nan, math.nan, 0.0, 12.5],
    })  # fmt: skip
    return RunResult(run_dir, cases, True)


def summary_lines(result: RunResult) -> list[str]:
    console = Console(width=80, record=True)
    print_summary(result, console)
    return console.export_text().splitlines()


def test_the_summary_fits_80_columns_with_a_title_and_one_line_per_metric(tmp_path: Path) -> None:
    lines = summary_lines(finished_run(tmp_path))
    assert lines[0] == f"hideseek on phantom, split test — run {RUN_ID}"
    assert all(len(line) <= 80 for line in lines)
    rows = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert {"F1 (RQ) ↑", "SQ ↑", "FP/vert ↓", "FP mm² ↓"} <= set(rows)
    assert "0.50 ± 0.50" in rows["F1 (RQ) ↑"] and "(n=" not in rows["F1 (RQ) ↑"]
    assert "0.70 ± 0.14 (n=2)" in rows["SQ ↑"], "SQ rests on 2 of the 3 blastic vertebrae"
    assert "6.25 ± 8.84" in rows["FP mm² ↓"]
    text = " ".join(" ".join(lines).split())
    assert "F1 (RQ): detection F1 · SQ: Dice of matched lesions · FP/vert: false-positive" in text
    assert "↑ higher is better, ↓ lower, ≈0 closest to zero" in text


def test_mean_cell_shows_n_only_where_it_differs() -> None:
    assert mean_cell(0.77, 0.13, 19, 19) == "0.77 ± 0.13"
    assert mean_cell(0.77, 0.13, 17, 19) == "0.77 ± 0.13 (n=17)"
    assert mean_cell(math.nan, math.nan, 0, 19) == "–"
