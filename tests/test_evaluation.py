"""Evaluation: panoptica numbers against hand-computed values on constructed masks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsbench.contract import BLASTIC, LYTIC, Phenotype, WeakLabel
from wsbench.harness.evaluation import (
    CATEGORIES,
    COUNT_COLUMNS,
    LESION_METRIC_COLUMNS,
    METRICS,
    Metric,
    category_counts,
    category_of,
    evaluate_case,
    metric_legend,
    summarize,
    vertebra_level_case,
    vertebra_level_summary,
)

SHAPE = (24, 24)
UNIT = (1.0, 1.0)


def blank() -> np.ndarray:
    return np.zeros(SHAPE, np.uint8)


def is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


# --- categories ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "phenotype", "expected"),
    [
        (WeakLabel.MALIGNANT, Phenotype.BLASTIC, "blastic"),
        (WeakLabel.MALIGNANT, Phenotype.LYTIC, "lytic"),
        (WeakLabel.MALIGNANT, Phenotype.MIXED, "mixed"),
        (WeakLabel.MALIGNANT, None, "malignant"),
        (WeakLabel.HEALTHY, None, "healthy"),
        (None, Phenotype.LYTIC, None),
        (None, None, None),
    ],
)
def test_category_of(label, phenotype, expected) -> None:
    assert category_of(label, phenotype) == expected


def test_unknown_category_and_bad_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="category 'sclerotic'"):
        evaluate_case(blank(), blank(), "sclerotic", UNIT)
    with pytest.raises(ValueError, match="one shape"):
        evaluate_case(blank(), np.zeros((5, 5), np.uint8), "mixed", UNIT)
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(blank(), blank(), "mixed", (0.0, 1.0))


# --- lesion metrics -----------------------------------------------------------------------


def test_hit_miss_and_false_positive() -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = BLASTIC  # 16 px, hit: overlap with pred is rows 3-5 × cols 3-5 = 9 px
    ref[10:14, 10:14] = BLASTIC  # 16 px, missed
    pred[3:7, 3:7] = BLASTIC  # 16 px
    pred[18:21, 18:21] = BLASTIC  # 9 px, false positive
    out = evaluate_case(pred, ref, "blastic", (0.8, 0.5))
    assert (out["n_ref"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (2, 2, 1, 1, 1)
    assert (out["ref_area_px"], out["pred_area_px"], out["intersection_px"]) == (32, 25, 9)
    assert out["ref_area_mm2"] == pytest.approx(32 * 0.4)
    assert out["pred_area_mm2"] == pytest.approx(25 * 0.4)
    assert out["intersection_mm2"] == pytest.approx(9 * 0.4)
    assert out["f1"] == pytest.approx(1 / (1 + 0.5 * 1 + 0.5 * 1))  # tp / (tp + fp/2 + fn/2)
    assert out["precision"] == pytest.approx(0.5) and out["recall"] == pytest.approx(0.5)
    assert out["sq"] == pytest.approx(2 * 9 / (16 + 16))
    assert out["pq"] == pytest.approx(0.5 * 2 * 9 / 32)
    assert out["global_dice"] == pytest.approx(2 * 9 / (32 + 25))
    assert out["rvd"] == pytest.approx(0.0)  # matched pair has equal areas
    assert out["empty_both"] is False


def test_many_to_one_merges_predictions_on_one_lesion() -> None:
    """panoptica matches both predictions to the lesion and merges them: no false positive."""
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = LYTIC  # 16 px
    pred[2:4, 2:6] = LYTIC  # 8 px
    pred[5, 2:6] = LYTIC  # 4 px, separated from the first by row 4 (not 8-connected)
    out = evaluate_case(pred, ref, "lytic", UNIT)
    assert (out["n_ref"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (1, 2, 1, 0, 0)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["f1"] == 1.0
    assert out["sq"] == pytest.approx(2 * 12 / (16 + 12))  # Dice of the merged prediction
    assert out["pq"] == pytest.approx(2 * 12 / (16 + 12))
    assert out["rvd"] == pytest.approx((12 - 16) / 16)  # (pred - ref) / ref: under-segmented


def test_one_prediction_over_two_lesions_matches_the_best_one() -> None:
    ref, pred = blank(), blank()
    ref[2:4, 2:4] = BLASTIC  # A: 4 px
    ref[2:4, 6:8] = BLASTIC  # B: 4 px
    pred[2:4, 3:8] = BLASTIC  # 10 px: 2 px on A (Dice 4/14), 4 px on B (Dice 8/14)
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 1)
    assert out["sq"] == pytest.approx(8 / 14)
    assert out["f1"] == pytest.approx(1 / (1 + 0.5))
    assert out["rvd"] == pytest.approx((10 - 4) / 4)
    assert out["global_dice"] == pytest.approx(2 * 6 / (8 + 10))


def test_any_overlap_detects_a_lesion() -> None:
    ref, pred = blank(), blank()
    ref[2:10, 2:10] = BLASTIC  # 64 px
    pred[9, 9] = BLASTIC  # one pixel in the corner: Dice 2/65 > 0
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert out["tp"] == 1 and out["sq"] == pytest.approx(2 / 65)
    pred[9, 9], pred[10, 10] = 0, BLASTIC  # touches the corner diagonally: no overlap
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["tp"], out["fp"], out["fn"]) == (0, 1, 1)


def test_lesions_are_8_connected() -> None:
    ref, pred = blank(), blank()
    ref[2:4, 2:4] = LYTIC
    ref[4:6, 4:6] = LYTIC  # touches the first at a corner only
    pred[2:4, 2:4] = LYTIC
    out = evaluate_case(pred, ref, "lytic", UNIT)
    assert out["n_ref"] == 1 and (out["tp"], out["fn"]) == (1, 0)
    assert out["sq"] == pytest.approx(2 * 4 / (8 + 4))


def test_blastic_is_scored_on_label_2_only() -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = BLASTIC
    pred[2:6, 2:6] = LYTIC  # right place, wrong label
    pred[12:15, 12:15] = LYTIC  # elsewhere, wrong label: ignored too
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["n_pred"], out["pred_area_px"], out["tp"], out["fp"], out["fn"]) == (0, 0, 0, 0, 1)
    assert out["recall"] == 0.0 and is_nan(out["precision"])
    pred[2:6, 2:6] = BLASTIC
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["tp"], out["fp"], out["sq"]) == (1, 0, 1.0)


def test_lytic_is_scored_on_label_1_only() -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = LYTIC
    ref[10:13, 10:13] = BLASTIC  # not a lytic lesion
    pred[2:6, 2:6] = LYTIC
    out = evaluate_case(pred, ref, "lytic", UNIT)
    assert (out["n_ref"], out["tp"], out["fn"], out["sq"]) == (1, 1, 0, 1.0)


def test_mixed_and_malignant_use_the_union() -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:4] = LYTIC
    ref[2:6, 4:6] = BLASTIC  # touching: one lesion of the union
    pred[2:6, 2:6] = LYTIC  # a method that cannot tell the phenotypes apart
    for category in ("mixed", "malignant"):
        out = evaluate_case(pred, ref, category, UNIT)
        assert (out["n_ref"], out["tp"], out["fp"], out["fn"]) == (1, 1, 0, 0)
        assert out["sq"] == 1.0 and out["global_dice"] == 1.0 and out["assd"] == 0.0


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [((1.0, 1.0), 0.5), ((2.0, 0.5), 0.75), ((0.5, 2.0), 0.25)],
)
def test_assd_in_mm_with_anisotropic_spacing(spacing, expected) -> None:
    """A 4×4 square against the same square one row lower.

    Borders (4-neighbourhood erosion) have 12 pixels each. From the prediction's border to the
    reference's: the 4 pixels of its bottom row are one row away (dy each); the two inner pixels
    of its top row are one column from the reference's side columns (min(dx, dy) each); the
    other 6 lie on the reference's border (0). Sum 4·dy + 2·min(dx, dy) over 12, the same in
    the other direction by symmetry. dy, dx = spacing: (1, 1) → 6/12; (2, 0.5) → 9/12;
    (0.5, 2) → 3/12.
    """
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = BLASTIC
    pred[3:7, 2:6] = BLASTIC
    out = evaluate_case(pred, ref, "blastic", spacing)
    assert out["assd"] == pytest.approx(expected)
    assert out["sq"] == pytest.approx(0.75) and out["tp"] == 1


def test_assd_is_averaged_over_matched_pairs() -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = BLASTIC
    pred[3:7, 2:6] = BLASTIC  # ASSD 0.5 (above)
    ref[12:16, 12:16] = BLASTIC
    pred[12:16, 12:16] = BLASTIC  # ASSD 0
    ref[20:22, 2:4] = BLASTIC  # missed: no ASSD
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["tp"], out["fn"]) == (2, 1)
    assert out["assd"] == pytest.approx(0.25)
    assert out["sq"] == pytest.approx((0.75 + 1.0) / 2)


# --- empty masks --------------------------------------------------------------------------


def test_both_empty_gives_nan_metrics_and_a_flag() -> None:
    out = evaluate_case(blank(), blank(), "lytic", UNIT)
    assert out["empty_both"] is True
    assert all(out[c] == 0 for c in COUNT_COLUMNS)
    assert all(is_nan(out[c]) for c in LESION_METRIC_COLUMNS)


def test_empty_reference_with_predictions() -> None:
    pred = blank()
    pred[2:5, 2:5] = LYTIC
    out = evaluate_case(pred, blank(), "lytic", UNIT)
    assert (out["n_ref"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (0, 1, 0, 1, 0)
    assert out["f1"] == 0.0 and out["precision"] == 0.0 and is_nan(out["recall"])
    assert out["pq"] == 0.0 and out["global_dice"] == 0.0
    assert is_nan(out["sq"]) and is_nan(out["assd"]) and is_nan(out["rvd"])
    assert out["empty_both"] is False


def test_empty_prediction_with_lesions() -> None:
    ref = blank()
    ref[2:5, 2:5] = BLASTIC
    ref[10:12, 10:12] = BLASTIC
    out = evaluate_case(blank(), ref, "blastic", UNIT)
    assert (out["n_ref"], out["n_pred"], out["tp"], out["fp"], out["fn"]) == (2, 0, 0, 0, 2)
    assert out["f1"] == 0.0 and out["recall"] == 0.0 and is_nan(out["precision"])
    assert out["pq"] == 0.0 and out["global_dice"] == 0.0
    assert is_nan(out["sq"]) and is_nan(out["assd"]) and is_nan(out["rvd"])


def test_no_overlap_at_all() -> None:
    ref, pred = blank(), blank()
    ref[2:5, 2:5] = BLASTIC
    pred[10:13, 10:13] = BLASTIC
    out = evaluate_case(pred, ref, "blastic", UNIT)
    assert (out["tp"], out["fp"], out["fn"]) == (0, 1, 1)
    assert out["f1"] == 0.0 and out["precision"] == 0.0 and out["recall"] == 0.0
    assert out["pq"] == 0.0 and is_nan(out["sq"]) and is_nan(out["assd"])


# --- healthy vertebrae --------------------------------------------------------------------


def test_healthy_counts_false_positives_of_both_labels() -> None:
    pred = blank()
    pred[2:4, 2:5] = LYTIC  # 6 px
    pred[10:12, 10:12] = BLASTIC  # 4 px
    out = evaluate_case(pred, blank(), "healthy", (0.8, 0.5))
    assert (out["fp"], out["n_pred"], out["tp"], out["fn"]) == (2, 2, 0, 0)
    assert out["pred_area_px"] == 10 and out["pred_area_mm2"] == pytest.approx(10 * 0.4)
    assert all(is_nan(out[c]) for c in LESION_METRIC_COLUMNS)
    clean = evaluate_case(blank(), blank(), "healthy", UNIT)
    assert (clean["fp"], clean["pred_area_mm2"], clean["empty_both"]) == (0, 0.0, True)


# --- metric metadata ----------------------------------------------------------------------


def test_metric_metadata() -> None:
    strict = {"strict_f1", "strict_sq", "strict_pq"}
    assert set(LESION_METRIC_COLUMNS) | {"fp", "pred_area_mm2"} | strict == set(METRICS)
    assert {m.name for m in METRICS.values() if m.strict} == strict
    assert METRICS["f1"].label == "Detection F1 (RQ)"
    assert METRICS["sq"].label == "Instance Dice (SQ)"
    assert METRICS["pq"].label == "Panoptic Dice (PQ_D)"
    assert METRICS["assd"].direction == "lower" and METRICS["rvd"].direction == "zero"
    assert (METRICS["f1"].arrow, METRICS["assd"].arrow, METRICS["rvd"].arrow) == ("↑", "↓", "≈0")
    assert [m.short for m in METRICS.values()] == [
        "F1 (RQ)", "SQ", "PQ_D", "ASSD mm", "G-Dice", "Prec", "Rec", "RVD", "FP/vert", "FP mm²",
        "F1@IoU.5", "SQ@IoU.5", "PQ@IoU.5",
    ]  # fmt: skip
    assert max(len(f"{m.short} {m.arrow}") for m in METRICS.values()) <= 10, "fits 80 columns"
    legend = metric_legend([METRICS["sq"], METRICS["rvd"]])
    assert legend.startswith("SQ: Dice of matched lesions · RVD: relative area difference · ")
    assert "↑ higher is better, ↓ lower, ≈0 closest to zero" in legend and "(n=7)" in legend
    assert CATEGORIES == ("blastic", "lytic", "mixed", "malignant", "healthy")
    assert METRICS["fp"].applies_to("healthy") and not METRICS["fp"].applies_to("blastic")
    assert METRICS["sq"].applies_to("malignant") and not METRICS["sq"].applies_to("healthy")
    with pytest.raises(ValueError, match="direction"):
        Metric("x", "X", "X", "x", "up")


def test_metric_better_and_key() -> None:
    f1, assd, rvd = METRICS["f1"], METRICS["assd"], METRICS["rvd"]
    assert f1.better(0.9, 0.8) and not f1.better(0.8, 0.9) and not f1.better(0.8, 0.8)
    assert assd.better(1.0, 2.0) and not assd.better(2.0, 1.0)
    assert rvd.better(-0.1, 0.2) and rvd.better(0.1, -0.2) and not rvd.better(0.3, -0.2)
    assert f1.better(0.1, math.nan) and not f1.better(math.nan, 0.1)
    assert sorted([-0.5, 0.1, math.nan, -0.2], key=rvd.key)[:3] == [0.1, -0.2, -0.5]


# --- summary ------------------------------------------------------------------------------


def test_summarize_tiny_frame() -> None:
    """Every row counts whatever its status: the failed row ``d`` carries an empty answer's
    metrics (f1 0, no SQ, no false positive) and is in the means."""
    cases = pd.DataFrame({
        "vertebra": ["a", "b", "c", "d", "e", "f"],
        "category": ["blastic", "blastic", "blastic", "blastic", "healthy", "healthy"],
        "status": ["ok", "ok", "refused", "failed", "ok", "timeout"],
        "f1": [1.0, 0.5, np.nan, 0.0, np.nan, np.nan],
        "sq": [0.8, 0.6, np.nan, np.nan, np.nan, np.nan],
        "fp": [0, 1, 0, 0, 3, 0],
        "pred_area_mm2": [5.0, 6.0, 0.0, 0.0, 2.5, 0.0],
    })  # fmt: skip
    summary = summarize(cases).set_index(["category", "metric"])
    f1 = summary.loc[("blastic", "f1")]
    assert f1["mean"] == pytest.approx(0.5)
    assert f1["sd"] == pytest.approx(np.std([1, 0.5, 0], ddof=1))
    assert (f1["n"], f1["n_nan"]) == (3, 1)
    assert (f1["vertebrae"], f1["failed"], f1["refused"]) == (4, 1, 1)
    assert f1["label"] == "Detection F1 (RQ)" and f1["direction"] == "higher"
    assert summary.loc[("blastic", "sq"), "mean"] == pytest.approx(0.7)
    fp = summary.loc[("healthy", "fp")]
    assert (fp["mean"], fp["sd"], fp["n"], fp["n_nan"]) == pytest.approx(
        (1.5, math.sqrt(4.5), 2, 0)
    )
    assert (fp["vertebrae"], fp["failed"], fp["refused"]) == (2, 1, 0)
    assert summary.loc[("healthy", "pred_area_mm2"), "mean"] == pytest.approx(1.25)
    assert ("healthy", "f1") not in summary.index, "lesion metrics are not summarised for healthy"
    assert ("blastic", "fp") not in summary.index
    assert ("blastic", "assd") not in summary.index, "absent columns are skipped"


def test_a_method_failing_on_k_of_n_vertebrae_is_averaged_over_all_n() -> None:
    """Failure rows carry what :func:`evaluate_case` gives an empty prediction; the means are
    over all vertebrae, by hand."""
    ref = blank()
    ref[2:6, 2:6] = BLASTIC
    near = blank()
    near[3:7, 2:6] = BLASTIC  # Dice 0.75 (test_assd_in_mm_with_anisotropic_spacing)
    fp_pred = blank()
    fp_pred[2:5, 2:5] = LYTIC  # one false-positive lesion of 9 px
    rows = [
        ("b1", "blastic", "ok", evaluate_case(ref, ref, "blastic", UNIT)),
        ("b2", "blastic", "ok", evaluate_case(near, ref, "blastic", UNIT)),
        ("b3", "blastic", "failed", evaluate_case(blank(), ref, "blastic", UNIT)),
        ("h1", "healthy", "ok", evaluate_case(fp_pred, blank(), "healthy", UNIT)),
        ("h2", "healthy", "ok", evaluate_case(fp_pred, blank(), "healthy", UNIT)),
        ("h3", "healthy", "timeout", evaluate_case(blank(), blank(), "healthy", UNIT)),
    ]
    cases = pd.DataFrame([{"vertebra": v, "category": c, "status": s, **m} for v, c, s, m in rows])
    summary = summarize(cases).set_index(["category", "metric"])
    assert summary.loc[("blastic", "f1"), "mean"] == pytest.approx((1 + 1 + 0) / 3)
    assert summary.loc[("blastic", "pq"), "mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert summary.loc[("blastic", "global_dice"), "mean"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert summary.loc[("blastic", "recall"), "mean"] == pytest.approx(2 / 3)
    sq = summary.loc[("blastic", "sq")]  # defined over matched lesions only: the failure has none
    assert (sq["mean"], sq["n"], sq["n_nan"]) == (pytest.approx(0.875), 2, 1)
    fp = summary.loc[("healthy", "fp")]
    assert (fp["mean"], fp["n"]) == (pytest.approx(2 / 3), 3)
    assert summary.loc[("healthy", "pred_area_mm2"), "mean"] == pytest.approx(18 / 3)
    assert (fp["vertebrae"], fp["failed"]) == (3, 1)


def test_old_failure_rows_without_metrics_still_summarise() -> None:
    """Runs made before failures were scored have NaN metrics on failed rows: they are counted
    as vertebrae and failures, and left out of the means like any NaN."""
    cases = pd.DataFrame({
        "vertebra": ["a", "b", "c"], "category": ["lytic"] * 3,
        "status": ["ok", "ok", "failed"], "reason": ["", "", "RuntimeError: boom"],
        "f1": [1.0, 0.5, np.nan],
    })  # fmt: skip
    row = summarize(cases).iloc[0]
    assert (row["mean"], row["n"], row["n_nan"], row["vertebrae"], row["failed"]) == (
        0.75,
        2,
        1,
        3,
        1,
    )


def test_category_counts() -> None:
    cases = pd.DataFrame({
        "category": ["healthy", "lytic", "lytic", "", np.nan, "lytic", "healthy"],
        "status": ["ok", "failed", "timeout", "failed", "ok", "refused", "refused"],
    })  # fmt: skip
    counts = category_counts(cases)
    assert counts.to_dict("records") == [
        {"category": "lytic", "vertebrae": 3, "failed": 2, "refused": 1},
        {"category": "healthy", "vertebrae": 2, "failed": 0, "refused": 1},
    ]
    with pytest.raises(ValueError, match=r"no 'category' column.*cases\.csv"):
        category_counts(pd.DataFrame({"status": ["ok"]}))


def test_summarize_single_value_has_nan_sd() -> None:
    cases = pd.DataFrame({"category": ["lytic"], "status": ["ok"], "sq": [0.4]})
    row = summarize(cases).iloc[0]
    assert row["mean"] == 0.4 and math.isnan(row["sd"]) and row["n"] == 1


def test_cases_round_trip_through_csv(tmp_path: Path) -> None:
    ref, pred = blank(), blank()
    ref[2:6, 2:6] = BLASTIC
    pred[3:7, 2:6] = BLASTIC
    rows = [
        {"vertebra": "v1", "category": "blastic", "status": "ok",
         **evaluate_case(pred, ref, "blastic", UNIT)},
        {"vertebra": "v2", "category": "blastic", "status": "ok",
         **evaluate_case(blank(), blank(), "blastic", UNIT)},
        {"vertebra": "v3", "category": "healthy", "status": "ok",
         **evaluate_case(pred, blank(), "healthy", UNIT)},
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "cases.csv", index=False)
    read = pd.read_csv(tmp_path / "cases.csv")
    pd.testing.assert_frame_equal(summarize(frame), summarize(read))
    sq = summarize(read).set_index(["category", "metric"]).loc[("blastic", "sq")]
    assert (sq["mean"], sq["n"], sq["n_nan"]) == (0.75, 1, 1)


# --- vertebra level -----------------------------------------------------------------------


def test_vertebra_level_case() -> None:
    pred = blank()
    pred[2:4, 2:5] = LYTIC  # 6 px
    pred[10:12, 10:12] = BLASTIC  # 4 px
    pred[15, 15] = BLASTIC  # a second blastic lesion of 1 px
    out = vertebra_level_case(pred, (0.8, 0.5))
    assert (out["n_pred_lytic"], out["n_pred_blastic"]) == (1, 2)
    assert (out["pred_lytic_px"], out["pred_blastic_px"]) == (6, 5)
    assert out["pred_lytic_mm2"] == pytest.approx(2.4)
    assert out["pred_blastic_mm2"] == pytest.approx(2.0)
    assert out["pred_phenotype"] == "mixed"
    assert vertebra_level_case(pred * (pred == LYTIC), UNIT)["pred_phenotype"] == "lytic"
    assert vertebra_level_case(pred * (pred == BLASTIC), UNIT)["pred_phenotype"] == "blastic"
    assert vertebra_level_case(blank(), UNIT)["pred_phenotype"] == ""


def test_vertebra_level_summary_tiny_frame() -> None:
    cases = pd.DataFrame({
        "label": ["malignant", "malignant", "malignant", "malignant", "healthy", "healthy",
                  "", "malignant"],
        "phenotype": ["lytic", "blastic", "blastic", np.nan, "", "", "", "lytic"],
        "status": ["ok"] * 7 + ["failed"],  # the failed one carries an empty answer
        "pred_lytic_px": [10, 0, 3, 0, 0, 4, 9, 0],
        "pred_blastic_px": [0, 0, 2, 0, 0, 0, 0, 0],
        "pred_phenotype": ["lytic", "", "mixed", "", "", "lytic", "lytic", ""],
    })  # fmt: skip
    summary = vertebra_level_summary(cases).set_index(["measure", "group"])

    def check(measure: str, group: str, count: int, total: int) -> None:
        row = summary.loc[(measure, group)]
        assert (row["count"], row["total"]) == (count, total), (measure, group)
        assert row["value"] == pytest.approx(count / total)

    check("sensitivity", "all", 2, 5)
    check("sensitivity", "lytic", 1, 2)
    check("sensitivity", "blastic", 1, 2)
    check("specificity", "all", 1, 2)
    check("phenotype agreement", "all", 1, 4)  # one lytic right; blastic missed / called mixed
    check("phenotype agreement", "detected", 1, 2)
    check("phenotype agreement", "lytic", 1, 2)
    check("phenotype agreement", "blastic", 0, 2)
    assert ("sensitivity", "mixed") not in summary.index


def test_vertebra_level_summary_names_missing_columns() -> None:
    with pytest.raises(ValueError, match="pred_blastic_px"):
        vertebra_level_summary(pd.DataFrame({"label": [], "phenotype": [], "pred_lytic_px": [],
                                             "pred_phenotype": []}))  # fmt: skip
