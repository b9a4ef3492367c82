"""Faults in the reports: failed, timed-out and refused vertebrae count in every table and are
shown, never dropped; old runs with unscored failure rows still read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from fakes import TinyDataset
from rich.console import Console
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import BLASTIC, LYTIC, Method, PreparedDataset, Scope, Segmentation, Skipped
from wsbench.harness.evaluation import evaluate_case
from wsbench.harness.runner import RunConfig, run
from wsbench.report.leaderboard import leaderboard_stats, newest_runs
from wsbench.report.publish import publish, regenerate_markdown
from wsbench.report.summary import print_summary, unanswered_table

UNIT = (1.0, 1.0)
DATASET = "board"


def blank() -> np.ndarray:
    return np.zeros((24, 24), np.uint8)


REFERENCE = blank()
REFERENCE[2:6, 2:6] = BLASTIC
FALSE_POSITIVE = blank()
FALSE_POSITIVE[10:13, 10:13] = LYTIC  # one lesion of 9 px on a healthy vertebra


def case(vertebra: str, status: str, pred: np.ndarray) -> dict:
    """A ``cases.csv`` row as the runner writes it; a failure carries the empty answer's metrics."""
    category = "blastic" if vertebra.startswith("b") else "healthy"
    reference = REFERENCE if category == "blastic" else blank()
    reason = {"ok": "", "failed": "RuntimeError: CUDA out of memory", "timeout": "timed out"}
    return {"vertebra": vertebra, "category": category, "status": status,
            "reason": reason[status], **evaluate_case(pred, reference, category, UNIT)}  # fmt: skip


STEADY = [
    case("b1", "ok", REFERENCE), case("b2", "ok", REFERENCE), case("b3", "ok", REFERENCE),
    case("h1", "ok", blank()), case("h2", "ok", blank()), case("h3", "ok", blank()),
    case("h4", "ok", blank()), case("h5", "ok", FALSE_POSITIVE), case("h6", "ok", FALSE_POSITIVE),
]  # fmt: skip
"""Finds every lesion; a false positive on the two hard healthy vertebrae: FP mean 2/6."""
CRASHY = [
    case("b1", "ok", REFERENCE), case("b2", "ok", REFERENCE), case("b3", "failed", blank()),
    case("h1", "ok", FALSE_POSITIVE), case("h2", "ok", blank()), case("h3", "ok", blank()),
    case("h4", "ok", blank()), case("h5", "timeout", blank()), case("h6", "failed", blank()),
]  # fmt: skip
"""Fails on one blastic and on the two hard healthy vertebrae; one false positive elsewhere."""


def write_run(runs_root: Path, method: str, rows: list[dict]) -> Path:
    """A finished run directory holding ``rows`` as its ``cases.csv``."""
    run_dir = runs_root / DATASET / method / "20260101-000000-000000-0000abcd"
    run_dir.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(run_dir / "cases.csv", index=False)
    manifest = {"finished": "2026-01-01T00:00:00", "dataset": {"fingerprint": "fp"},
                "packages": {"wsbench": "0"}, "split": "test", "git_commit": "abc",
                "method": {"name": method, "models": {}}}  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def board(tmp_path: Path) -> Path:
    runs_root = tmp_path / "runs"
    write_run(runs_root, "crashy", CRASHY)
    write_run(runs_root, "steady", STEADY)
    return runs_root


def test_a_failing_method_is_scored_on_all_vertebrae_and_marked(tmp_path: Path) -> None:
    """Scored as empty, crashy's miss costs it the blastic lead (with failures dropped it would
    tie steady at F1 1.0); on healthy vertebrae an empty answer is the best FP score, so crashy
    ranks first there, marked † with its 2 failures shown beside it."""
    runs_root = board(tmp_path)
    stats = leaderboard_stats(newest_runs(runs_root / DATASET))
    stats = stats.set_index(["category", "metric", "method"]).sort_index()
    f1 = stats.loc[("blastic", "f1")]
    assert f1["mean"].to_dict() == {"crashy": 2 / 3, "steady": 1.0}
    assert f1["rank"].to_dict() == {"crashy": 2.0, "steady": 1.0}
    assert f1["best"].to_dict() == {"crashy": False, "steady": True}
    fp = stats.loc[("healthy", "fp")]
    assert fp["mean"].to_dict() == {"crashy": 1 / 6, "steady": 2 / 6}
    assert fp["rank"].to_dict() == {"crashy": 1.0, "steady": 2.0}
    assert fp[["vertebrae", "failed", "refused"]].to_dict("index") == {
        "crashy": {"vertebrae": 6, "failed": 2, "refused": 0},
        "steady": {"vertebrae": 6, "failed": 0, "refused": 0},
    }
    out = tmp_path / "leaderboard"
    assert publish(runs_root, out) == {DATASET: {"crashy": "3 of 9 vertebrae failed or timed out"}}
    md = (out / f"{DATASET}.md").read_text()
    assert (
        "- † = failed or timed out on some vertebrae, which are scored as an empty answer and "
        "counted in every mean: crashy 3 of 9 vertebrae failed or timed out"
    ) in md
    healthy = md[md.index("## Healthy vertebrae (false positives) (n = 6)") :]
    assert healthy.startswith(
        "## Healthy vertebrae (false positives) (n = 6)\n\n"
        "| Metric | crashy † | steady |\n|---|---|---|\n"
        "| Vertebrae: n (failed, refused) | 6 (2, 0) | 6 (0, 0) |\n"
        "| FP/vert ↓ | **0.17 ± 0.41** | 0.33 ± 0.52 |\n"
    )
    assert "| crashy † | 2 [" in md  # the rank table marks it too
    assert "† failed or timed out on some of these vertebrae, scored as an empty answer" in md
    tidy = pd.read_csv(out / f"{DATASET}.csv")
    crashy = tidy[(tidy["method"] == "crashy") & (tidy["category"] == "blastic")]
    assert set(crashy["vertebrae"]) == {3} and set(crashy["failed"]) == {1}
    assert regenerate_markdown(out, DATASET) == md


def test_exclude_failed_lists_the_method_instead_of_ranking_it(tmp_path: Path) -> None:
    runs_root, out = board(tmp_path), tmp_path / "leaderboard"
    result = CliRunner().invoke(
        app, ["leaderboard", "--runs", str(runs_root), "--out", str(out), "--exclude-failed"],
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "crashy: 3 of 9 vertebrae failed or timed out; excluded from the tables" in result.output
    md = (out / f"{DATASET}.md").read_text()
    assert "| Metric | steady |" in md and "| Metric | crashy" not in md
    assert (
        "## Excluded from ranking (`--exclude-failed`)\n\n"
        "- **crashy**: excluded: 3 of 9 vertebrae failed or timed out\n"
    ) in md
    assert "| FP/vert ↓ | **0.33 ± 0.52** |" in md
    assert set(pd.read_csv(out / f"{DATASET}.csv")["method"]) == {"steady"}
    assert regenerate_markdown(out, DATASET) == md, "the choice is kept beside the summaries"
    assert json.loads((out / "runs" / DATASET / "publish.json").read_text()) == {
        "exclude_failed": True
    }
    default = CliRunner().invoke(
        app, ["leaderboard", "--runs", str(runs_root), "--out", str(out)], env={"COLUMNS": "200"}
    )
    assert default.exit_code == 0, default.output
    assert "crashy: 3 of 9 vertebrae failed or timed out; ranked with those scored as an empty" in (
        default.output
    )
    assert "| Metric | crashy † | steady |" in (out / f"{DATASET}.md").read_text()


def test_old_failure_rows_without_metrics_still_publish(tmp_path: Path) -> None:
    """A run made before failures were scored: its failed row has no metrics (NaN)."""
    runs_root = tmp_path / "runs"
    old = [{**row, **dict.fromkeys(("f1", "sq", "pq", "fp", "pred_area_mm2"), np.nan)}
           if row["status"] != "ok" else row for row in CRASHY]  # fmt: skip
    write_run(runs_root, "crashy", old)
    write_run(runs_root, "steady", STEADY)
    publish(runs_root, tmp_path / "leaderboard")
    tidy = pd.read_csv(tmp_path / "leaderboard" / f"{DATASET}.csv")
    row = tidy[(tidy["method"] == "crashy") & (tidy["metric"] == "f1")].iloc[0]
    assert (row["mean"], row["n"], row["vertebrae"], row["failed"]) == (1.0, 2, 3, 1)
    fp = tidy[(tidy["method"] == "crashy") & (tidy["metric"] == "fp")].iloc[0]
    assert (fp["mean"], fp["n"], fp["vertebrae"], fp["failed"]) == (0.25, 4, 6, 2)


# --- the run summary ---------------------------------------------------------------------------


class SkippingDataset(TinyDataset):
    """:class:`TinyDataset` with two file-level and five vertebra-level skip records."""

    def prepare(self) -> PreparedDataset:
        prepared = super().prepare()
        prepared.skipped = [
            Skipped("rawdata/sub-09/ct.nii.gz", "truncated gzip stream; download it again",
                    Scope.FILE),
            Skipped("rawdata/sub-02/lesions.nii.gz", "lesion mask values [0, 1, 7] are not 0/1/2",
                    Scope.FILE),
            *(Skipped(f"sub-0{i}_T{i}", f"lesion mask lies outside vertebra T{i}")
              for i in range(1, 6)),
        ]  # fmt: skip
        return prepared


class CrashOrRefuse(Method):
    """Raises on subject s3's vertebrae; refuses s4's healthy vertebra; answers empty else."""

    name = "crashorrefuse"

    def segment(self, sample):
        if sample.key.subject == "s3":
            raise RuntimeError(f"no convergence on {sample.key.level}")
        labels = np.zeros(sample.image.shape, np.uint8)
        if sample.key.level == "L2":
            return Segmentation(labels=labels, refusal="c(z)=0.31 ≤ p_target=0.5")
        return labels


def test_the_run_summary_lists_skipped_failed_and_refused_records(tmp_path: Path) -> None:
    result = run(
        RunConfig("test_report_faults:CrashOrRefuse", "test_report_faults:SkippingDataset"),
        tmp_path,
    )
    console = Console(record=True, width=200)
    print_summary(result, console)
    text = console.export_text()
    lines = [" ".join(re.sub("[│┃]", " ", line).split()) for line in text.splitlines()]
    header = lines.index("blastic lytic mixed")
    assert lines[header + 1] == "Metric n=1, failed 1 n=1, failed 1 n=1"
    healthy = lines.index("healthy")
    assert lines[healthy + 1] == "Metric n=1, refused 1"
    assert "Skipped by the dataset: 7 (all 7 in manifest.json)" in lines
    assert (
        "file 1 lesion mask values [0, 1, 7] are not 0/1/2 rawdata/sub-02/lesions.nii.gz" in lines
    )
    assert "file 1 truncated gzip stream; download it again rawdata/sub-09/ct.nii.gz" in lines
    assert (
        "vertebra 5 lesion mask lies outside vertebra T… sub-01_T1, sub-02_T2, sub-03_T3, … 2 more"
    ) in lines
    assert ("failed 2 RuntimeError: no convergence on L… tiny_s3_L1, tiny_s3_L2") in lines
    assert "refused 1 refused: c(z)=0.31 ≤ p_target=0.5 tiny_s4_L2" in lines
    assert "Failed or timed out (scored as empty) or refused: 3 (all in cases.csv)" in lines
    assert " ".join(text.split()).endswith(
        f"4 vertebrae scored (2 failed, 1 refused) → {result.run_dir}"
    )


def test_many_reasons_fit_one_screen_and_the_rest_are_counted() -> None:
    """Twelve distinct failure reasons: ten groups shown, the rest counted; numbers that differ
    inside a group are shown as …, a shared one is kept."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
             "kappa", "lambda", "mu"]  # fmt: skip
    cases = pd.DataFrame({
        "vertebra": [f"v{i:02d}" for i in range(14)],
        "status": ["failed"] * 12 + ["timeout"] * 2,
        "reason": [f"ValueError: {w}" for w in words] + ["took 61.2 s > 60 s", "took 75 s > 60 s"],
    })  # fmt: skip
    console = Console(record=True, width=200)
    console.print(unanswered_table(cases))
    lines = [
        " ".join(re.sub("[│┃]", " ", line).split()) for line in console.export_text().splitlines()
    ]
    assert "Failed or timed out (scored as empty) or refused: 14 (all in cases.csv)" in lines
    assert "timeout 2 took … s > 60 s v12, v13" not in lines, "failed groups come first"
    assert [line for line in lines if line.startswith("failed")] == [
        f"failed 1 ValueError: {w} v{i:02d}" for i, w in enumerate(words[:10])
    ]
    assert "… and 4 more in cases.csv" in lines
