"""Leaderboard statistics: directions, ties, NaN, bootstrap determinism, Wilcoxon, publishing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from wsbench.report.leaderboard import (
    MethodRun,
    bootstrap,
    interrupted,
    leaderboard_stats,
    metric_stats,
    paired_p,
    ranks,
)
from wsbench.report.publish import cell, commit_label, html_page, publish, regenerate_markdown

PROJECT = Path(__file__).resolve().parents[1]


def test_ranks_follow_direction_with_ties_and_nan() -> None:
    values = np.array([0.5, 0.9, 0.5, np.nan])
    assert ranks(values, "higher").tolist() == [2, 1, 2, 4]
    assert ranks(values, "lower").tolist() == [1, 3, 1, 4]
    assert ranks(np.array([-0.3, 0.1, 0.2]), "zero").tolist() == [3, 1, 2]


def test_bootstrap_is_deterministic_under_a_seed() -> None:
    matrix = pd.DataFrame({"a": np.linspace(0, 1, 20), "b": np.linspace(0.2, 0.9, 20)})
    first, second = bootstrap(matrix, "higher", seed=3), bootstrap(matrix, "higher", seed=3)
    assert np.array_equal(first["mean_ci"], second["mean_ci"])
    assert np.array_equal(first["rank_ci"], second["rank_ci"])
    other = bootstrap(matrix, "higher", seed=4)
    assert not np.array_equal(first["mean_ci"], other["mean_ci"])
    low, high = first["mean_ci"][:, 0]
    assert low < 0.5 < high


def test_paired_p_matches_scipy_and_ignores_nan() -> None:
    rng = np.random.default_rng(0)
    a = pd.Series(rng.normal(0.6, 0.1, 30))
    b = pd.Series(a + rng.normal(0.05, 0.05, 30))
    a_with_nan = a.copy()
    a_with_nan.iloc[:5] = np.nan
    expected = wilcoxon(a.iloc[5:], b.iloc[5:]).pvalue
    assert paired_p(a_with_nan, b, "higher") == pytest.approx(expected)
    assert paired_p(a, a, "higher") == 1.0


def test_paired_p_on_zero_direction_compares_magnitudes() -> None:
    a = pd.Series([0.1, -0.2, 0.3, -0.1, 0.2, -0.3, 0.15, -0.25])
    assert paired_p(a, -a, "zero") == 1.0


def run_of(
    method: str, f1: list[float], categories: list[str], status: list[str] | None = None
) -> MethodRun:
    cases = pd.DataFrame({
        "vertebra": [f"v{i}" for i in range(len(f1))], "category": categories,
        "status": status or "ok", "f1": f1,
    })  # fmt: skip
    manifest = {"dataset": {"fingerprint": "fp"}, "packages": {"wsbench": "0"}, "split": "test",
                "git_commit": "abc"}  # fmt: skip
    return MethodRun(method, Path("."), manifest, cases)


def test_metric_stats_best_and_significance() -> None:
    n = 12
    good = run_of("good", [0.9] * n, ["blastic"] * n)
    bad = run_of("bad", [0.2 + 0.01 * i for i in range(n)], ["blastic"] * n)
    stats = metric_stats({"good": good, "bad": bad}, "blastic", "f1", seed=0).set_index("method")
    assert stats.loc["good", "best"] and not stats.loc["bad", "best"]
    assert stats.loc["good", "rank"] == 1 and stats.loc["bad", "rank"] == 2
    assert stats.loc["bad", "worse_than_best"]
    assert stats.loc["bad", "p_vs_best"] == pytest.approx(
        wilcoxon([0.2 + 0.01 * i for i in range(n)], [0.9] * n).pvalue
    )
    assert stats.loc["bad", "mean"] == pytest.approx(np.mean([0.2 + 0.01 * i for i in range(n)]))


def test_metric_stats_use_every_vertebra_and_count_failures() -> None:
    """A failed row (scored as an empty answer: f1 0) and a refused one are in the mean."""
    statuses = ["ok", "failed", "timeout", "refused", "ok"]
    run = run_of("m", [1.0, 0.0, 0.0, 0.5, 1.0], ["lytic"] * 5, statuses)
    row = metric_stats({"m": run}, "lytic", "f1", seed=0).iloc[0]
    assert row["mean"] == pytest.approx(2.5 / 5) and row["n"] == 5
    assert (row["vertebrae"], row["failed"], row["refused"]) == (5, 2, 1)


def test_all_nan_metric_gives_no_rows() -> None:
    runs = {"a": run_of("a", [np.nan, np.nan], ["healthy", "healthy"])}
    assert metric_stats(runs, "healthy", "f1", seed=0).empty
    assert leaderboard_stats(runs).empty


def test_published_leaderboard_is_what_the_command_produces() -> None:
    folder = PROJECT / "leaderboard"
    pages = [p for p in folder.glob("*.md") if p.name != "README.md"] if folder.is_dir() else []
    if not pages:
        pytest.skip("no leaderboard published yet")
    for page in pages:
        assert regenerate_markdown(folder, page.stem) == page.read_text(), page.name


def test_commit_label_marks_runs_made_with_uncommitted_changes() -> None:
    assert commit_label({"git_commit": "0123456789abcdef", "git_dirty": False}) == "0123456789ab"
    assert commit_label({"git_commit": "0123456789abcdef", "git_dirty": True}) == (
        "0123456789ab +uncommitted changes"
    )
    assert commit_label({}) == "unknown"


def test_git_dirty_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    from wsbench.harness.runner import RunConfig, git_dirty, run

    result = run(RunConfig("otsu", "fakes:TinyDataset"), tmp_path)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["git_dirty"] == git_dirty()


def test_publish_from_run_directories(tmp_path: Path) -> None:
    from wsbench.harness.runner import RunConfig, run

    runs_root = tmp_path / "runs"
    for method in ("otsu", "fakes:NoisyMethod"):
        run(RunConfig(method, "fakes:TinyDataset"), runs_root)
    bench_record = {"methods": {"medsam": {"status": "failed", "reason": "weights not supplied"}}}
    (runs_root / "fakes-TinyDataset" / "bench.json").write_text(json.dumps(bench_record))
    out = tmp_path / "leaderboard"
    assert publish(runs_root, out) == {"fakes-TinyDataset": {}}, "no method failed"
    md = (out / "fakes-TinyDataset.md").read_text()
    assert "| Metric | fakes-NoisyMethod | otsu |" in md
    assert (
        "## Blastic (n = 1)" in md
        and "| Vertebrae: n (failed, refused) | 1 (0, 0) | 1 (0, 0) |" in md
    )
    assert "†" not in md
    assert "## Not in the tables\n\n- **medsam**: not run — weights not supplied\n" in md
    assert "F1 (RQ): detection F1 · SQ: Dice of matched lesions" in md, "a legend under the table"
    assert regenerate_markdown(out, "fakes-TinyDataset") == md
    tidy = pd.read_csv(out / "fakes-TinyDataset.csv")
    assert {"category", "method", "metric", "mean", "ci_low", "rank_ci_high", "vertebrae", "failed",
            "refused"} <= set(tidy)  # fmt: skip
    assert {"strict_f1", "strict_sq", "strict_pq"} <= set(tidy["metric"]), "cases.csv has them"
    assert "| Method | F1@IoU.5 ↑ | rank by F1@IoU.5 | SQ@IoU.5 ↑ | rank by SQ@IoU.5 |" in md
    page = (out / "fakes-TinyDataset.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page
    assert "<title>wsbench — fakes-TinyDataset</title>" in page
    assert "<th>Metric</th>\n<th>fakes-NoisyMethod</th>\n<th>otsu</th>" in page
    assert "<li><strong>medsam</strong>: not run — weights not supplied</li>" in page
    assert json.loads((out / "runs/fakes-TinyDataset/not_run.json").read_text()) == {
        "medsam": "weights not supplied"
    }
    assert "fakes-TinyDataset" in (out / "README.md").read_text()


def test_html_page_renders_the_markdown_and_embeds_the_figures() -> None:
    md = "# Board\n\n- **bold** and <b>text</b>\n\n| Metric | a |\n|---|---|\n| F1 ↑ | **0.50** |\n"
    page = html_page("d<1>", md, {"Figure": "QUJD", "Absent": None})
    head = "<!doctype html><html><head><meta charset='utf-8'><title>wsbench — d&lt;1&gt;</title>"
    assert page.startswith(head) and page.endswith("\n</body></html>\n")
    body = page[page.index("<body>\n") + len("<body>\n") : -len("\n</body></html>\n")]
    assert body == (
        "<h1>Board</h1>\n"
        "<ul>\n<li><strong>bold</strong> and &lt;b&gt;text&lt;/b&gt;</li>\n</ul>\n"
        "<table>\n<thead>\n<tr>\n<th>Metric</th>\n<th>a</th>\n</tr>\n</thead>\n"
        "<tbody>\n<tr>\n<td>F1 ↑</td>\n<td><strong>0.50</strong></td>\n</tr>\n</tbody>\n"
        "</table>\n\n"
        '<h2>Figure</h2>\n<img alt="Figure" src="data:image/png;base64,QUJD">'
    )


def test_publish_takes_the_run_the_bench_recorded_not_a_later_variant(tmp_path: Path) -> None:
    from wsbench.harness.runner import RunConfig, run

    runs_root = tmp_path / "runs"
    benched = run(RunConfig("otsu", "fakes:TinyDataset"), runs_root).run_dir
    variant = RunConfig("otsu", "fakes:TinyDataset", seed=1)  # another config, made later
    later = run(variant, runs_root).run_dir
    dataset_dir = runs_root / "fakes-TinyDataset"
    record = {"methods": {"otsu": {"status": "ok", "reason": "", "run_dir": str(benched)}}}
    (dataset_dir / "bench.json").write_text(json.dumps(record))
    publish(runs_root, tmp_path / "leaderboard")
    manifest = tmp_path / "leaderboard" / "runs" / "fakes-TinyDataset" / "otsu" / "manifest.json"
    assert json.loads(manifest.read_text())["config_digest"] == benched.name.rsplit("-", 1)[1]
    (dataset_dir / "bench.json").unlink()  # without a bench record: the newest finished run
    publish(runs_root, tmp_path / "leaderboard")
    assert json.loads(manifest.read_text())["config_digest"] == later.name.rsplit("-", 1)[1]


def test_cells_show_n_where_fewer_vertebrae_have_a_value() -> None:
    row = pd.Series({"mean": 0.77, "sd": 0.13, "n": 17, "vertebrae": 19, "best": True,
                     "worse_than_best": False})  # fmt: skip
    assert cell(row) == "**0.77 ± 0.13** (n=17)"
    assert cell(row.replace(17, 19)) == "**0.77 ± 0.13**"
    assert cell(pd.Series({**row, "best": False, "worse_than_best": True})) == (
        "0.77 ± 0.13* (n=17)"
    )


def test_interrupted_and_not_run_methods_are_listed_not_dropped(tmp_path: Path) -> None:
    from wsbench.harness.runner import RunConfig, run

    runs_root = tmp_path / "runs"
    run(RunConfig("otsu", "fakes:TinyDataset"), runs_root)
    dataset_dir = runs_root / "fakes-TinyDataset"
    unfinished = dataset_dir / "fakes-NoisyMethod" / "20260101-000000-000000-0000abcd"
    unfinished.mkdir(parents=True)
    (unfinished / "manifest.json").write_text(json.dumps({"finished": None}))
    record = {"methods": {"medsam": {"status": "not run", "reason": "weights not supplied"}}}
    (dataset_dir / "bench.json").write_text(json.dumps(record))
    assert interrupted(dataset_dir) == {"fakes-NoisyMethod": unfinished.name}
    out = tmp_path / "leaderboard"
    publish(runs_root, out)
    md = (out / "fakes-TinyDataset.md").read_text()
    section = md[md.index("## Not in the tables") :]
    assert "- **medsam**: not run — weights not supplied" in section
    assert f"- **fakes-NoisyMethod**: interrupted — run `{unfinished.name}` did not finish" in (
        section
    )
    assert regenerate_markdown(out, "fakes-TinyDataset") == md
    page = (out / "fakes-TinyDataset.html").read_text()
    assert f"<code>{unfinished.name}</code>" in page and "`" not in page, "Markdown is rendered"
