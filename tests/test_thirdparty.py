"""A third-party method package that trains (tests/thirdparty), installed with pip into a
throw-away folder and found through its entry point: it goes through ``wsbench train``,
``wsbench run`` and ``wsbench bench`` like a built-in, and passes ``check_method``. (A fresh
process finding an installed plugin is tested in test_registry.py.)"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.models.store import cache_root
from wsbench.testing import check_method

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS / "thirdparty"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed (non-editable, no dependencies) into a folder of its own, built
    from a copy so that the build leaves nothing in the source tree."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "pkg"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return target


@pytest.fixture
def wsbench(installed: Path, monkeypatch: pytest.MonkeyPatch):
    """``wsbench(*args)``: the command line, in this process, with the installed package on the
    path (its entry point is then found like any installed distribution's)."""
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})

    return invoke


def test_the_plugin_trains_runs_and_benches_through_the_cli(wsbench, tmp_path: Path):
    runs, models = tmp_path / "runs", cache_root() / "models"
    data = ["--dataset", "fakes:TinyDataset"]
    listed = wsbench("methods")
    assert "brightest" in listed.output and "wsbench-brightest" in listed.output
    before = wsbench("run", "--method", "brightest", *data, "--out", str(runs))
    assert before.exit_code == 1 and "wsbench train --method brightest" in before.output
    trained = wsbench("train", "--method", "brightest", *data, "-p", "quantile=0.95",
                      "-t", "max_vertebrae=2")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    (card,) = models.glob("brightest-*.json")
    assert json.loads(card.read_text())["vertebrae"] == 2
    ran = wsbench("run", "--method", "brightest", *data, "-p", "quantile=0.95", "--out", str(runs))
    assert ran.exit_code == 0, ran.output
    manifests = [json.loads(m.read_text()) for m in runs.glob("*/brightest/*/manifest.json")]
    (record,) = [m for m in manifests if m["finished"]]  # the run before training never got far
    assert record["method"]["params"] == {"quantile": 0.95}
    assert record["method"]["models"]["threshold"].startswith(card.stem)
    benched = wsbench("bench", *data, "--methods", "brightest,otsu", "--out", str(tmp_path / "b"))
    assert benched.exit_code == 1 and "brightest crashed" in benched.output, benched.output
    outcomes = json.loads((tmp_path / "b" / "fakes-TinyDataset" / "bench.json").read_text())
    assert outcomes["methods"]["otsu"]["status"] == "ok", outcomes["methods"]["otsu"]
    assert outcomes["methods"]["brightest"]["status"] == "failed"  # bench used quantile 0.99
    assert "wsbench train --method brightest" in outcomes["methods"]["brightest"]["reason"]


def test_the_plugin_passes_check_method(installed: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(installed))
    from wsbench_brightest import BrightestTail

    report = check_method(BrightestTail, params={"quantile": 0.9})
    assert report.params == {"quantile": 0.9}
    assert [path.suffix for path in report.trained] == [".npy"]
    assert len(report.segmented) == 8


def test_check_method_names_every_broken_rule(installed: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(installed))
    from wsbench_brightest import BrightestTail

    class Forgetful(BrightestTail):
        """Does not keep its ``margin`` parameter and answers in float64 at random."""

        name = "forgetful"

        def __init__(self, quantile: float = 0.99, margin: float = 1.0) -> None:
            super().__init__(quantile)

        def segment(self, sample):
            return np.random.default_rng().random(sample.image.shape)

    with pytest.raises(AssertionError) as broken:
        check_method(Forgetful)
    message = str(broken.value)
    assert "params()" in message and "dtype float64" in message
