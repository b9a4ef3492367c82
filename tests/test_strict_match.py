"""The stricter lesion match (IoU > 0.5, one-to-one) beside the paper's (Dice > 0): per-vertebra
values against hand-computed ones, the run summary, and the leaderboard's table and rank changes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from wsbench.contract import BLASTIC, LYTIC
from wsbench.harness.evaluation import STRICT_COUNT_COLUMNS, STRICT_METRIC_COLUMNS, evaluate_case
from wsbench.harness.runner import RunResult
from wsbench.report.leaderboard import MethodRun, leaderboard_stats, rank_changes
from wsbench.report.publish import markdown
from wsbench.report.summary import print_summary

SHAPE = (24, 24)
UNIT = (1.0, 1.0)


def blank() -> np.ndarray:
    return np.zeros(SHAPE, np.uint8)


def counts(out: dict, prefix: str = "") -> tuple[int, int, int]:
    return out[f"{prefix}tp"], out[f"{prefix}fp"], out[f"{prefix}fn"]


# --- per vertebra -------------------------------------------------------------------------


def test_a_blob_over_a_small_lesion_is_detected_at_dice_but_not_at_iou() -> None:
    ref, pred = blank(), blank()
    ref[10:12, 10:12] = BLASTIC  # 4 px
    pred[4:20, 4:20] = BLASTIC  # 256 px over it: Dice 8/260, IoU 4/256
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert counts(out) == (1, 0, 0)
    assert out["f1"] == 1.0 and out["sq"] == pytest.approx(8 / 260)
    assert out["pq"] == pytest.approx(8 / 260)
    assert counts(out, "strict_") == (0, 1, 1)
    assert out["strict_f1"] == 0.0 and out["strict_pq"] == 0.0
    assert math.isnan(out["strict_sq"]), "no matched pair at IoU > 0.5"


def mask(*boxes: tuple[slice, slice]) -> np.ndarray:
    out = blank()
    for box in boxes:
        out[box] = LYTIC
    return out


REF = (slice(4, 8), slice(4, 8))  # 16 px


@pytest.mark.parametrize(
    ("pred", "matched", "dice"),
    [
        # the lesion and 16 more pixels below it: IoU 16/32 = 0.5, not above
        (mask(REF, (slice(8, 12), slice(4, 8))), False, None),
        # 15 more: IoU 16/31 > 0.5, Dice 32/47
        (mask(REF, (slice(8, 11), slice(4, 8)), (slice(11, 12), slice(4, 7))), True, 32 / 47),
        # half the lesion: IoU 8/16 = 0.5, not above
        (mask((slice(4, 6), slice(4, 8))), False, None),
        # 9 of its 16 pixels: IoU 9/16, Dice 18/25
        (mask((slice(4, 7), slice(4, 7))), True, 18 / 25),
    ],
)
def test_a_match_needs_iou_strictly_above_one_half(
    pred: np.ndarray, matched: bool, dice: float | None
) -> None:
    out = evaluate_case(pred, mask(REF), "lytic", UNIT)
    assert counts(out) == (1, 0, 0), "any overlap is a match at Dice > 0"
    assert counts(out, "strict_") == ((1, 0, 0) if matched else (0, 1, 1))
    assert out["strict_f1"] == (1.0 if matched else 0.0)
    if matched:
        assert out["strict_sq"] == pytest.approx(dice) and out["sq"] == pytest.approx(dice)
        assert out["strict_pq"] == pytest.approx(dice)
    else:
        assert math.isnan(out["strict_sq"]) and out["strict_pq"] == 0.0


def test_fragments_merge_at_dice_but_the_smaller_one_is_a_false_positive_at_iou() -> None:
    ref = mask((slice(2, 8), slice(2, 6)))  # 24 px
    pred = mask((slice(2, 6), slice(2, 6)), (slice(7, 8), slice(2, 6)))  # 16 px (IoU 16/24), 4 px
    out = evaluate_case(pred, ref, "lytic", UNIT)
    assert counts(out) == (1, 0, 0) and out["sq"] == pytest.approx(40 / 44), "merged: 20 px"
    assert counts(out, "strict_") == (1, 1, 0)
    assert out["strict_f1"] == pytest.approx(1 / (1 + 0.5))
    assert out["strict_sq"] == pytest.approx(32 / 40)
    assert out["strict_pq"] == pytest.approx(2 / 3 * 0.8)


def test_a_slab_is_matched_at_iou_too() -> None:
    ref, pred = np.zeros((3, *SHAPE), np.uint8), np.zeros((3, *SHAPE), np.uint8)
    ref[1, 4:8, 4:8] = BLASTIC  # 16 voxels on the middle slice
    pred[0:3, 4:8, 4:8] = BLASTIC  # the same square on all three: IoU 16/48
    out = evaluate_case(pred, ref, "blastic", (6.4, 1.0, 1.0))
    assert counts(out) == (1, 0, 0) and out["sq"] == pytest.approx(32 / 64)
    assert counts(out, "strict_") == (0, 1, 1)


def test_healthy_and_empty_vertebrae_carry_strict_counts_and_no_metrics() -> None:
    pred = mask((slice(2, 4), slice(2, 4)), (slice(10, 12), slice(10, 12)))
    healthy = evaluate_case(pred, blank(), "healthy", UNIT)
    assert counts(healthy, "strict_") == counts(healthy) == (0, 2, 0)
    assert all(math.isnan(healthy[c]) for c in STRICT_METRIC_COLUMNS)
    empty = evaluate_case(blank(), blank(), "lytic", UNIT)
    assert all(empty[c] == 0 for c in STRICT_COUNT_COLUMNS)
    assert all(math.isnan(empty[c]) for c in STRICT_METRIC_COLUMNS)
    missed = evaluate_case(blank(), mask(REF), "lytic", UNIT)
    assert counts(missed, "strict_") == (0, 0, 1) and missed["strict_f1"] == 0.0


# --- run summary --------------------------------------------------------------------------


def test_the_summary_shows_strict_f1_and_sq_in_one_compact_table(tmp_path: Path) -> None:
    run_dir = tmp_path / "phantom" / "medsam" / "20260101-000000-000000-0000abcd"
    run_dir.mkdir(parents=True)
    manifest = {"method": {"name": "medsam", "models": {}}, "dataset": {"name": "phantom"},
                "split": "test", "finished": "2026-01-01T00:00:00"}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    cases = pd.DataFrame({
        "vertebra": ["b1", "b2", "l1"], "category": ["blastic", "blastic", "lytic"],
        "status": "ok", "reason": "", "f1": [1.0, 1.0, 1.0], "sq": [0.1, 0.3, 0.2],
        "strict_f1": [0.0, 0.5, 0.0], "strict_sq": [math.nan, 0.7, math.nan],
        "strict_pq": [0.0, 0.35, 0.0],
    })  # fmt: skip
    console = Console(width=80, record=True)
    print_summary(RunResult(run_dir, cases, True), console)
    lines = console.export_text().splitlines()
    lines = lines[: next(i for i, line in enumerate(lines) if "vertebrae scored" in line)]
    assert all(len(line) <= 80 for line in lines)
    title = next(i for i, line in enumerate(lines) if "Stricter match: IoU > 0.5" in line)
    rows = {line.split("│")[1].strip(): line for line in lines[title:] if line.startswith("│")}
    assert set(rows) == {"F1@IoU.5 ↑", "SQ@IoU.5 ↑"}, "PQ stays in cases.csv"
    assert "0.25 ± 0.35" in rows["F1@IoU.5 ↑"] and "0.00" in rows["F1@IoU.5 ↑"]
    assert "0.70 (n=1)" in rows["SQ@IoU.5 ↑"]
    above = {line.split("│")[1].strip() for line in lines[:title] if line.startswith("│")}
    assert "F1@IoU.5 ↑" not in above, "the main table is not doubled"
    text = " ".join(" ".join(lines).split())
    assert "F1@IoU.5: detection F1, lesions matched at IoU > 0.5" in text


# --- leaderboard --------------------------------------------------------------------------


def fake_run(method: str, columns: dict[str, list[float]]) -> MethodRun:
    n = len(next(iter(columns.values())))
    cases = pd.DataFrame({"vertebra": [f"v{i}" for i in range(n)], "category": "blastic",
                          "status": "ok", **columns})  # fmt: skip
    manifest = {"dataset": {"fingerprint": "fp"}, "packages": {"wsbench": "0"}, "split": "test",
                "git_commit": "abc"}  # fmt: skip
    return MethodRun(method, Path("."), manifest, cases)


BLOB = {"f1": [1.0, 1.0, 1.0, 1.0], "sq": [0.1, 0.2, 0.1, 0.2],
        "strict_f1": [0.0, 0.0, 0.0, 0.0], "strict_sq": [math.nan] * 4}  # fmt: skip
TIGHT = {"f1": [1.0, 0.5, 0.5, 1.0], "sq": [0.8, 0.7, 0.9, 0.8],
         "strict_f1": [1.0, 0.5, 0.5, 1.0], "strict_sq": [0.8, 0.7, 0.9, 0.8]}  # fmt: skip


def page(runs: dict[str, MethodRun]) -> str:
    return markdown("phantom", runs, leaderboard_stats(runs), {}, {}, {})


def test_the_leaderboard_ranks_the_strict_match_and_names_whose_rank_moved() -> None:
    runs = {"blob": fake_run("blob", BLOB), "tight": fake_run("tight", TIGHT)}
    stats = leaderboard_stats(runs)
    f1 = stats[stats["metric"] == "strict_f1"].set_index("method")
    assert f1["rank"].to_dict() == {"blob": 2.0, "tight": 1.0}, "rows of the CSV"
    assert f1.loc["tight", "mean"] == pytest.approx(0.75)
    assert rank_changes(stats, "blastic", "f1") == [("blob", 1, 2), ("tight", 2, 1)]
    assert rank_changes(stats, "blastic", "sq") == []
    md = page(runs)
    table = md[md.index("At the stricter match, IoU > 0.5") :]
    assert table.splitlines()[2:6] == [
        "| Method | F1@IoU.5 ↑ | rank by F1@IoU.5 | SQ@IoU.5 ↑ | rank by SQ@IoU.5 |",
        "|---|---|---|---|---|",
        "| blob | 0.00 ± 0.00 | 2 [2–2] | – | 2 [2–2] |",
        "| tight | **0.75 ± 0.29** | 1 [1–1] | **0.80 ± 0.08** | 1 [1–1] |",
    ]
    assert (
        "Ranks moved from the paper's match (Dice > 0): by F1 (RQ) blob 1 → 2, tight 2 → 1; "
        "by SQ none." in table
    )
    main = md[: md.index("At the stricter match")]
    assert "F1@IoU.5" not in main, "the main table keeps the paper's metrics"


def test_runs_made_before_the_strict_match_are_named_not_ranked() -> None:
    old_columns = {"f1": [0.9, 0.9, 0.9, 0.9], "sq": [0.5, 0.5, 0.5, 0.5]}
    runs = {"blob": fake_run("blob", BLOB), "old": fake_run("old", old_columns),
            "tight": fake_run("tight", TIGHT)}  # fmt: skip
    md = page(runs)
    assert "| old | – | – | – | – |" in md
    assert "by F1 (RQ) blob 1 → 2, tight 2 → 1;" in md, "ranked among the runs that have both"
    assert (
        "Not computed for old (made before the stricter match): re-run (`wsbench bench "
        "--fresh`, or `wsbench run`) to compute it." in md
    )
    only_old = page({"old": fake_run("old", old_columns)})
    assert (
        "At the stricter match, IoU > 0.5 one-to-one (panoptic quality's): not computed: these "
        "runs were made before it; re-run" in only_old
    )
    assert "rank by F1@IoU.5" not in only_old
