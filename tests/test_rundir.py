"""A run directory is self-contained: it records each vertebra's geometry, so the export needs
neither the dataset nor its preparation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_inhouse import subject

from wsbench.contract import Split
from wsbench.datasets.inhouse.layout import write_inhouse
from wsbench.harness import runner
from wsbench.harness.rundir import read_cases
from wsbench.harness.runner import RunConfig, run
from wsbench.report.export import export_run


def test_each_case_record_holds_the_vertebras_geometry(tmp_path: Path):
    root = tmp_path / "bids"
    write_inhouse(root, [subject("001"), subject("002", split=Split.TRAIN)])
    result = run(RunConfig("otsu", "inhouse", root=str(root)), tmp_path / "runs")
    records = list(read_cases(result.run_dir))
    assert [r["case"]["vertebra"] for r in records] == sorted(result.cases["vertebra"])
    for record in records:
        geometry = record["geometry"]
        assert geometry["source"].endswith("sub-001_ct.nii.gz")
        assert np.asarray(geometry["crop_affine"]).shape == (4, 4)
        assert len(geometry["slice_indices"]) == 5


def test_export_reads_the_run_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = tmp_path / "bids"
    write_inhouse(root, [subject("001"), subject("002", split=Split.TRAIN)])
    result = run(RunConfig("otsu", "inhouse", root=str(root)), tmp_path / "runs")
    first = export_run(result.run_dir, tmp_path / "a")

    def no_preparation(config):
        raise AssertionError(f"export prepared {config.dataset} again")

    monkeypatch.setattr(runner, "prepare_dataset", no_preparation)
    shutil.rmtree(root)  # the source CT is gone too: a NIfTI export needs only the run
    again = export_run(result.run_dir, tmp_path / "b")
    assert [v.vertebrae for v in again] == [v.vertebrae for v in first]
    assert again[0].path.read_bytes() == first[0].path.read_bytes()


def test_a_run_without_geometry_says_to_run_again(tmp_path: Path):
    root = tmp_path / "bids"
    write_inhouse(root, [subject("001"), subject("002", split=Split.TRAIN)])
    result = run(RunConfig("otsu", "inhouse", root=str(root)), tmp_path / "runs")
    for path in (result.run_dir / "cases").glob("*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "geometry": {}}))
    with pytest.raises(runner.RunError, match="no source geometry"):
        export_run(result.run_dir, tmp_path / "x")
