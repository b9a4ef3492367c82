"""Per-vertebra evaluation with panoptica, metric metadata, and summary tables (paper §4).

Each vertebra's mid-sagittal prediction is compared with its reference on the mask of its category
(blastic → label 2, lytic → label 1, mixed / malignant / healthy → the union of both). Lesions are
the 8-connected components of that mask (``wsbench.harness.postprocess.components``); panoptica
matches them with positive-Dice, many-to-one matching and computes every lesion metric. A k-slice
evaluation scores the ``(K, H, W)`` slab of its slices the same way, lesions being the 18-connected
components across neighbouring evaluated slices. Beside the paper's match, the detection
metrics are also computed at panoptica's standard stricter match, IoU > 0.5 one-to-one
(``strict_`` columns), so that a blob over the whole body does not count as a detection. Raw
counts and areas are stored beside the metrics so any aggregate can be recomputed. The policy for
empty masks is written in ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
from panoptica import (
    InputType,
    NaiveThresholdMatching,
    Panoptica_Evaluator,
    disable_citation_reminder,
)
from panoptica import Metric as PanopticaMetric
from panoptica.utils.edge_case_handling import (
    EdgeCaseHandler,
    EdgeCaseResult,
    MetricZeroTPEdgeCaseHandling,
)

from wsbench.contract import BLASTIC, LYTIC, Phenotype, WeakLabel
from wsbench.harness.postprocess import components

disable_citation_reminder()  # panoptica is cited in docs/evaluation.md; keep CLI output clean

LESION_CATEGORIES = ("blastic", "lytic", "mixed", "malignant")
"""Categories scored with lesion metrics (``malignant`` = malignant without a phenotype)."""
HEALTHY = "healthy"
CATEGORIES = (*LESION_CATEGORIES, HEALTHY)
"""Every evaluation category, in the order tables show them."""

SCORED_LABEL: dict[str, int | None] = {
    "blastic": BLASTIC,
    "lytic": LYTIC,
    "mixed": None,
    "malignant": None,
    HEALTHY: None,
}
"""The lesion label a category is scored on; ``None`` = the binary union (label > 0)."""

LESION_METRIC_COLUMNS = (
    "f1", "sq", "pq", "assd", "global_dice", "precision", "recall", "rvd",
)  # fmt: skip
COUNT_COLUMNS = (
    "n_ref", "n_pred", "tp", "fp", "fn",
    "ref_area_px", "pred_area_px", "intersection_px",
    "ref_area_mm2", "pred_area_mm2", "intersection_mm2",
)  # fmt: skip
STRICT = "strict_"
"""Prefix of the ``cases.csv`` columns of the stricter lesion match (IoU > 0.5, one-to-one)."""
STRICT_METRIC_COLUMNS = ("strict_f1", "strict_sq", "strict_pq")
STRICT_COUNT_COLUMNS = ("strict_tp", "strict_fp", "strict_fn")
STRICT_HEADLINE = ("strict_f1", "strict_sq")
"""The stricter-match metrics that summary and leaderboard tables show; ``strict_pq`` is in
``cases.csv`` and the leaderboard CSV."""


DIRECTION_ARROWS = {"higher": "↑", "lower": "↓", "zero": "≈0"}
"""Which way a metric is better (higher, lower, closest to zero) and its symbol in tables."""


@dataclass(frozen=True)
class Metric:
    """A reported metric: its column ``name``, display ``label``, ``short`` label for tables
    at 80 columns with its ``meaning`` for the legend, which way is better, and the categories
    it is reported for."""

    name: str
    label: str
    short: str
    meaning: str
    direction: str
    categories: tuple[str, ...] = LESION_CATEGORIES

    def __post_init__(self) -> None:
        if self.direction not in DIRECTION_ARROWS:
            raise ValueError(
                f"metric {self.name}: direction {self.direction!r} is not higher, lower or zero"
            )

    @property
    def arrow(self) -> str:
        """The direction as a table symbol: ``↑`` higher, ``↓`` lower, ``≈0`` closest to zero."""
        return DIRECTION_ARROWS[self.direction]

    def key(self, value: float) -> float:
        """Sort key: smaller is better; NaN sorts last (``inf``)."""
        if value is None or math.isnan(value):
            return math.inf
        if self.direction == "higher":
            return -value
        if self.direction == "zero":
            return abs(value)
        return value

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b`` (a NaN is never better)."""
        return self.key(a) < self.key(b)

    def applies_to(self, category: str) -> bool:
        """True when this metric is reported for vertebrae of ``category``."""
        return category in self.categories

    @property
    def strict(self) -> bool:
        """True for a metric of the stricter match (IoU > 0.5), named ``strict_<paper name>``."""
        return self.name.startswith(STRICT)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("f1", "Detection F1 (RQ)", "F1 (RQ)", "detection F1", "higher"),
        Metric("sq", "Instance Dice (SQ)", "SQ", "Dice of matched lesions", "higher"),
        Metric("pq", "Panoptic Dice (PQ_D)", "PQ_D", "F1 × SQ", "higher"),
        Metric("assd", "ASSD (mm)", "ASSD mm", "symmetric surface distance", "lower"),
        Metric("global_dice", "Global Dice", "G-Dice", "Dice of all lesion pixels", "higher"),
        Metric("precision", "Detection precision", "Prec", "detection precision", "higher"),
        Metric("recall", "Detection recall", "Rec", "detection recall", "higher"),
        Metric("rvd", "RVD", "RVD", "relative area difference", "zero"),
        Metric(
            "fp",
            "FP lesions per healthy vertebra",
            "FP/vert",
            "false-positive lesions",
            "lower",
            (HEALTHY,),
        ),
        Metric(
            "pred_area_mm2",
            "FP area (mm²)",
            "FP mm²",
            "false-positive area",
            "lower",
            (HEALTHY,),
        ),
        Metric(
            "strict_f1",
            "Detection F1 at IoU > 0.5",
            "F1@IoU.5",
            "detection F1, lesions matched at IoU > 0.5",
            "higher",
        ),
        Metric(
            "strict_sq",
            "Instance Dice at IoU > 0.5",
            "SQ@IoU.5",
            "Dice of lesions matched at IoU > 0.5",
            "higher",
        ),
        Metric(
            "strict_pq", "Panoptic Dice at IoU > 0.5", "PQ@IoU.5", "F1 × SQ at IoU > 0.5", "higher"
        ),
    )
}
"""Every summarised metric by its ``cases.csv`` column; ranking uses ``direction`` only. The
``strict_`` ones (:attr:`Metric.strict`) repeat the paper's detection metrics at IoU > 0.5."""


def metric_legend(metrics: list[Metric]) -> str:
    """One line explaining the short labels of ``metrics``, the direction arrows and the
    per-cell ``(n=…)``: ``SQ: Dice of matched lesions · … · ↑ higher is better, …``."""
    names = [f"{m.short}: {m.meaning}" for m in metrics]
    arrows = "↑ higher is better, ↓ lower, ≈0 closest to zero"
    n_note = "(n=7): values in a mean where some vertebrae have none (NaN)"
    return " · ".join([*names, arrows, n_note])


FAILED_STATUSES = ("failed", "timeout")
"""Statuses of a vertebra the method gave no answer for (it raised, returned garbage, its worker
died, or it ran out of time); the row is scored as an empty answer and counted in every mean,
and a resumed run computes it again unless told to keep it. The other statuses are ``ok`` and
:data:`REFUSED`."""
REFUSED = "refused"
"""Status of a vertebra the method answered but declined to look at; scored on its answer."""


def category_of(label: WeakLabel | None, phenotype: Phenotype | None) -> str | None:
    """The evaluation category of a vertebra; ``None`` when its label is unknown.

    Malignant vertebrae take their phenotype (``blastic``/``lytic``/``mixed``) or ``malignant``
    without one; healthy vertebrae are ``healthy`` whatever the phenotype column says.
    """
    if label is None:
        return None
    if WeakLabel(label) == WeakLabel.HEALTHY:
        return HEALTHY
    return Phenotype(phenotype).value if phenotype is not None else "malignant"


def scored_mask(labels: np.ndarray, category: str) -> np.ndarray:
    """The binary mask a category is scored on: its lesion label, or the union of both."""
    if category not in SCORED_LABEL:
        raise ValueError(f"category {category!r} is not one of {', '.join(CATEGORIES)}")
    value = SCORED_LABEL[category]
    return labels > 0 if value is None else labels == value


def _edge_case_handler() -> EdgeCaseHandler:
    """panoptica's defaults, except that ASSD is NaN (not inf) when nothing is matched."""
    handler = EdgeCaseHandler()
    handling = dict(handler.listmetric_zeroTP_handling)
    handling[PanopticaMetric.ASSD] = MetricZeroTPEdgeCaseHandling(default_result=EdgeCaseResult.NAN)
    return EdgeCaseHandler(listmetric_zeroTP_handling=handling)


PAPER_EVALUATOR = Panoptica_Evaluator(
    expected_input=InputType.UNMATCHED_INSTANCE,
    instance_matcher=NaiveThresholdMatching(
        matching_metric=PanopticaMetric.DSC,
        matching_threshold=0.0,
        allow_many_to_one=True,
        strict_threshold=True,
    ),
    edge_case_handler=_edge_case_handler(),
    instance_metrics=[PanopticaMetric.DSC, PanopticaMetric.ASSD, PanopticaMetric.RVD],
    global_metrics=[PanopticaMetric.DSC],
)
"""Paper §4: a lesion is detected when any prediction overlaps it (Dice > 0), many-to-one."""

STRICT_EVALUATOR = Panoptica_Evaluator(
    expected_input=InputType.UNMATCHED_INSTANCE,
    instance_matcher=NaiveThresholdMatching(
        matching_metric=PanopticaMetric.IOU,
        matching_threshold=0.5,
        allow_many_to_one=False,
        strict_threshold=True,
    ),
    edge_case_handler=_edge_case_handler(),
    instance_metrics=[PanopticaMetric.DSC],
    global_metrics=[],
)
"""Panoptic quality's match: a lesion is detected by a prediction with IoU > 0.5, one-to-one
(above 0.5 no prediction can match two disjoint lesions, nor two predictions one lesion)."""


def _check_spacing(spacing: tuple[float, ...], ndim: int) -> None:
    if len(spacing) != ndim or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing {spacing!r} must be {ndim} positive pixel sizes in mm")


def _check_slab(pred: np.ndarray, what: str) -> None:
    if pred.ndim not in (2, 3):
        raise ValueError(f"{what} {pred.shape} must be a 2D slice or a (K, H, W) slab of slices")


def pixel_area(spacing: tuple[float, ...]) -> float:
    """Area of one pixel of a slice in mm² (the last two entries of ``spacing``)."""
    return float(np.prod(spacing[-2:]))


def _counts(
    pred_instances: np.ndarray, ref_instances: np.ndarray, pixel_mm2: float
) -> dict[str, float | int]:
    """Lesion counts and areas of the scored masks (no matching yet)."""
    pred, ref = pred_instances > 0, ref_instances > 0
    areas = {
        "ref_area_px": int(ref.sum()),
        "pred_area_px": int(pred.sum()),
        "intersection_px": int((pred & ref).sum()),
    }
    record: dict[str, float | int] = {
        "n_ref": int(ref_instances.max(initial=0)),
        "n_pred": int(pred_instances.max(initial=0)),
        "tp": 0,
        "fp": 0,
        "fn": 0,
        **areas,
    }
    for name, px in areas.items():
        record[name.replace("_px", "_mm2")] = px * pixel_mm2
    return record


def _panoptica_values(
    evaluator: Panoptica_Evaluator,
    pred_instances: np.ndarray,
    ref_instances: np.ndarray,
    spacing: tuple[float, ...],
) -> dict[str, float]:
    """panoptica's counts and metrics of one matching (at least one mask non-empty); a metric
    it leaves out or undefined reads NaN."""
    result = evaluator.evaluate(
        pred_instances, ref_instances, voxelspacing=tuple(float(s) for s in spacing)
    )["ungrouped"]
    values = {key: math.nan if value is None else float(value)
              for key, value in result.to_dict().items()}  # fmt: skip
    return defaultdict(lambda: math.nan, values)


def _paper_metrics(
    pred_instances: np.ndarray, ref_instances: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float | int]:
    """Matching counts and lesion metrics at the paper's match (:data:`PAPER_EVALUATOR`)."""
    values = _panoptica_values(PAPER_EVALUATOR, pred_instances, ref_instances, spacing)
    tp = int(values["tp"])
    return {
        "tp": tp,
        "fp": int(values["fp"]),
        "fn": int(values["fn"]),
        "f1": values["rq"],
        "sq": values["sq_dsc"] if tp > 0 else math.nan,  # panoptica's zero-TP value is 0
        "pq": values["pq_dsc"],
        "assd": values["sq_assd"],
        "global_dice": values["global_bin_dsc"],
        "precision": values["prec"],
        "recall": values["rec"],
        "rvd": values["sq_rvd"],
    }


def _strict_metrics(
    pred_instances: np.ndarray, ref_instances: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float | int]:
    """Matching counts and detection metrics at IoU > 0.5 (:data:`STRICT_EVALUATOR`)."""
    values = _panoptica_values(STRICT_EVALUATOR, pred_instances, ref_instances, spacing)
    tp = int(values["tp"])
    return {
        "strict_tp": tp,
        "strict_fp": int(values["fp"]),
        "strict_fn": int(values["fn"]),
        "strict_f1": values["rq"],
        "strict_sq": values["sq_dsc"] if tp > 0 else math.nan,
        "strict_pq": values["pq_dsc"],
    }


def evaluate_case(
    pred: np.ndarray, ref: np.ndarray, category: str, spacing: tuple[float, ...]
) -> dict[str, float | int]:
    """Counts, areas and lesion metrics of one 2D slice, or one ``(K, H, W)`` slab of slices
    (k-slice evaluation), scored as ``category``.

    ``spacing`` is the voxel size in mm along each of the array's axes (a slab's first one is
    the distance between its slices). Lesions of a slab are connected across neighbouring
    slices, so a lesion seen on several slices is one lesion; areas are summed over the slices.
    Healthy vertebrae get their false positives (``fp``, ``pred_area_px``, ``pred_area_mm2``)
    and NaN lesion metrics; a case with neither reference nor predicted lesions gets
    ``empty_both=True`` and NaN metrics. The ``strict_`` counts and metrics are those of the
    IoU > 0.5 match, under the same rules.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_slab(pred, "prediction")
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} must be of one shape")
    _check_spacing(spacing, pred.ndim)
    pred_instances = components(scored_mask(pred, category))
    ref_instances = components(scored_mask(ref, category))
    record = _counts(pred_instances, ref_instances, pixel_area(spacing))
    empty_both = record["n_ref"] == 0 and record["n_pred"] == 0
    metrics = dict.fromkeys(LESION_METRIC_COLUMNS, math.nan)
    strict: dict[str, float | int] = {**dict.fromkeys(STRICT_COUNT_COLUMNS, 0),
                                      **dict.fromkeys(STRICT_METRIC_COLUMNS, math.nan)}  # fmt: skip
    if not empty_both:
        found = _paper_metrics(pred_instances, ref_instances, spacing)
        record.update({k: found.pop(k) for k in ("tp", "fp", "fn")})
        found_strict = _strict_metrics(pred_instances, ref_instances, spacing)
        strict.update({k: found_strict.pop(k) for k in STRICT_COUNT_COLUMNS})
        if category != HEALTHY:
            metrics.update(found)
            strict.update(found_strict)
    return {**record, **metrics, "empty_both": bool(empty_both), **strict}


def category_counts(cases: pd.DataFrame) -> pd.DataFrame:
    """Per category present (table order): ``vertebrae`` (rows, whatever their status),
    ``failed`` (status in :data:`FAILED_STATUSES`) and ``refused``; rows without a category are
    left out."""
    if "category" not in cases:
        raise ValueError(
            f"the cases table (columns {list(cases.columns)}) has no 'category' column; "
            "summaries need one row per vertebra with its category, as cases.csv has"
        )
    category = cases["category"].fillna("").astype(str)
    status = cases.get("status", pd.Series("ok", index=cases.index)).fillna("").astype(str)
    present = set(category) - {""}
    order = [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))
    rows = [
        {"category": c, "vertebrae": int((category == c).sum()),
         "failed": int(((category == c) & status.isin(FAILED_STATUSES)).sum()),
         "refused": int(((category == c) & (status == REFUSED)).sum())}
        for c in order
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["category", "vertebrae", "failed", "refused"])


def summarize(cases: pd.DataFrame) -> pd.DataFrame:
    """Per category × metric: mean, SD (ddof=1), n (non-NaN values), n_nan, and the category's
    ``vertebrae``, ``failed`` and ``refused`` counts (:func:`category_counts`).

    Every row with a category counts, whatever its ``status``: a failed or timed-out vertebra
    carries the metrics of an empty answer (``docs/evaluation.md``). Only metrics that apply to
    a category and whose column is present are reported.
    """
    counts = category_counts(cases)
    category = cases["category"].fillna("").astype(str)
    rows = []
    for count in counts.itertuples(index=False):
        part = cases[category == count.category]
        for metric in METRICS.values():
            if not metric.applies_to(count.category) or metric.name not in part:
                continue
            values = pd.to_numeric(part[metric.name], errors="coerce").astype(float)
            n = int(values.notna().sum())
            rows.append({
                "category": count.category, "metric": metric.name, "label": metric.label,
                "direction": metric.direction,
                "mean": float(values.mean()) if n else math.nan,
                "sd": float(values.std(ddof=1)) if n > 1 else math.nan,
                "n": n, "n_nan": int(len(values) - n), "vertebrae": count.vertebrae,
                "failed": count.failed, "refused": count.refused,
            })  # fmt: skip
    columns = ["category", "metric", "label", "direction", "mean", "sd", "n", "n_nan",
               "vertebrae", "failed", "refused"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def predicted_phenotype(pred: np.ndarray) -> str:
    """``lytic`` (only label 1), ``blastic`` (only label 2), ``mixed`` (both) or ``""``."""
    has_lytic, has_blastic = bool((pred == LYTIC).any()), bool((pred == BLASTIC).any())
    if has_lytic and has_blastic:
        return Phenotype.MIXED.value
    if has_lytic:
        return Phenotype.LYTIC.value
    if has_blastic:
        return Phenotype.BLASTIC.value
    return ""


def vertebra_level_case(
    pred: np.ndarray, spacing: tuple[float, ...]
) -> dict[str, float | int | str]:
    """Predicted lesion counts and areas per label, and the predicted phenotype, of one slice or
    one ``(K, H, W)`` slab (lesions connected across its slices, areas summed);
    ``spacing`` as for :func:`evaluate_case`."""
    pred = np.asarray(pred)
    _check_slab(pred, "prediction")
    _check_spacing(spacing, pred.ndim)
    pixel_mm2 = pixel_area(spacing)
    record: dict[str, float | int | str] = {}
    for name, value in (("lytic", LYTIC), ("blastic", BLASTIC)):
        mask = pred == value
        record[f"n_pred_{name}"] = int(components(mask).max(initial=0))
        record[f"pred_{name}_px"] = int(mask.sum())
        record[f"pred_{name}_mm2"] = int(mask.sum()) * pixel_mm2
    record["pred_phenotype"] = predicted_phenotype(pred)
    return record


def _ratio(count: int, total: int) -> float:
    return count / total if total else math.nan


def _weak_label(value: object) -> str:
    """``healthy``/``malignant``, or ``""`` for an empty or unreadable label cell."""
    try:
        return WeakLabel.parse(value).value
    except ValueError:
        return ""


def _text(value: object) -> str:
    """A cell as lower-case text; NaN and None become ``""``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip().lower()


def vertebra_level_summary(cases: pd.DataFrame) -> pd.DataFrame:
    """Vertebra-level sensitivity, specificity and phenotype agreement, with their counts.

    A vertebra is predicted malignant when it has any predicted lesion pixel
    (``pred_lytic_px + pred_blastic_px > 0``). Rows: ``measure``, ``group`` (``all`` or a
    phenotype), ``value`` = ``count`` / ``total``. Every vertebra with a known label counts,
    whatever its ``status`` (a failed one has no predicted pixel: an empty answer).
    """
    missing = {"label", "phenotype", "pred_lytic_px", "pred_blastic_px", "pred_phenotype"}
    missing -= set(cases.columns)
    if missing:
        raise ValueError(
            f"vertebra-level summary needs columns {sorted(missing)} "
            "(from vertebra_level_case); re-run the evaluation"
        )
    label = cases["label"].map(_weak_label)
    scored, label = cases[label != ""], label[label != ""]
    positive = (
        pd.to_numeric(scored["pred_lytic_px"], errors="coerce").fillna(0)
        + pd.to_numeric(scored["pred_blastic_px"], errors="coerce").fillna(0)
    ) > 0
    sheet = scored["phenotype"].map(_text)
    predicted = scored["pred_phenotype"].map(_text)
    malignant, healthy = label == "malignant", label == "healthy"
    rows = []

    def add(measure: str, group: str, count: int, total: int) -> None:
        rows.append({"measure": measure, "group": group, "value": _ratio(count, total),
                     "count": int(count), "total": int(total)})  # fmt: skip

    add("sensitivity", "all", int((positive & malignant).sum()), int(malignant.sum()))
    for phenotype in Phenotype:
        group = malignant & (sheet == phenotype.value)
        if group.any():
            add("sensitivity", phenotype.value, int((positive & group).sum()), int(group.sum()))
    add("specificity", "all", int((~positive & healthy).sum()), int(healthy.sum()))
    typed = malignant & sheet.isin([p.value for p in Phenotype])
    agree = typed & (predicted == sheet)
    add("phenotype agreement", "all", int(agree.sum()), int(typed.sum()))
    add("phenotype agreement", "detected", int(agree.sum()), int((typed & positive).sum()))
    for phenotype in Phenotype:
        group = typed & (sheet == phenotype.value)
        if group.any():
            add("phenotype agreement", phenotype.value, int((agree & group).sum()),
                int(group.sum()))  # fmt: skip
    return pd.DataFrame(rows, columns=["measure", "group", "value", "count", "total"])
