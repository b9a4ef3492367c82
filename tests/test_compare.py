"""``wsbench compare``: runs on one split side by side, with paired tests, by hand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.harness.rundir import RunError
from wsbench.harness.runner import RunConfig, run
from wsbench.report.compare import (
    comparable,
    finished_run,
    healthy_false_positives,
    implied_phenotypes,
    metric_rows,
)

TINY = "fakes:TinyDataset"


@pytest.fixture
def two_runs(tmp_path: Path) -> list[Path]:
    methods = ("otsu", "fakes:NoisyMethod")
    return [run(RunConfig(method, TINY), tmp_path / "runs").run_dir for method in methods]


def test_metric_rows_are_the_means_by_hand_with_a_p_per_other_run(two_runs):
    runs = comparable([finished_run(path) for path in two_runs])
    assert list(runs) == ["otsu", "fakes:NoisyMethod"]
    rows = metric_rows(runs).set_index(["category", "metric"])
    otsu = pd.read_csv(two_runs[0] / "cases.csv")
    for category in ("blastic", "lytic", "mixed"):
        f1 = otsu.loc[otsu["category"] == category, "f1"]
        assert rows.loc[(category, "Detection F1 (RQ)"), "otsu"] == f"{f1.mean():.3f} ({len(f1)})"
    assert set(rows.index.get_level_values("category")) == {"blastic", "lytic", "mixed"}
    assert "p otsu" not in rows and rows["p fakes:NoisyMethod"].dropna().between(0, 1).all()
    fp = healthy_false_positives(runs)
    assert fp["otsu"] == otsu.loc[otsu["category"] == "healthy", "n_pred"].mean()
    assert implied_phenotypes(runs["otsu"]) is None  # Otsu stores no candidate decisions


def test_variants_of_one_method_are_named_by_their_parameters(tmp_path: Path):
    configs = [RunConfig("fakes:OnDevice", TINY, params=p) for p in ({}, {"device": "meta"})]
    paths = [run(config, tmp_path).run_dir for config in configs]
    names = list(comparable([finished_run(p) for p in paths]))
    assert names == ["fakes:OnDevice", "fakes:OnDevice device=meta"]


def test_runs_of_other_data_are_refused_and_the_cli_prints_the_tables(two_runs, tmp_path: Path):
    other = run(RunConfig("otsu", TINY, split="train"), tmp_path / "other").run_dir
    with pytest.raises(RunError, match="in its split"):
        comparable([finished_run(two_runs[0]), finished_run(other)])
    with pytest.raises(RunError, match="not a finished run folder"):
        finished_run(tmp_path)
    result = CliRunner().invoke(app, ["compare", *map(str, two_runs)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Detection F1 (RQ)" in result.output and "healthy vertebrae" in result.output


def test_a_bench_folder_stands_for_its_newest_runs_and_the_figure_is_drawn(two_runs, tmp_path):
    from PIL import Image

    from wsbench.report.compare import figure_vertebrae, finished_runs

    dataset_dir = two_runs[0].parent.parent
    runs = comparable(finished_runs([dataset_dir]))
    assert sorted(runs) == ["fakes:NoisyMethod", "otsu"]
    assert figure_vertebrae(runs, [], 2) == ["tiny_s3_L1", "tiny_s3_L2"]
    with pytest.raises(RunError, match="'tiny_s1_L1' is not in every run"):
        figure_vertebrae(runs, ["tiny_s1_L1"], 2)
    figure = tmp_path / "side.png"
    args = ["compare", str(dataset_dir), "--figure", str(figure), "--vertebra", "tiny_s4_L1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "figure of 1 vertebrae × 2 runs" in " ".join(result.output.split())
    width, height = Image.open(figure).size
    assert width > 2 * height  # one row: input, ground truth and two runs side by side
