"""A third-party method package that trains (tests/thirdparty), installed with pip into a
throw-away folder and found through its entry point: it goes through ``wsbench train``,
``wsbench run`` and ``wsbench bench`` like a built-in, and passes ``check_method``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def wsbench(installed: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    """``wsbench args`` in a fresh process that sees the installed package and the test fakes,
    started outside the source tree (so that ``wsbench`` is the installed one)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(TESTS)]),
           "WSBENCH_CACHE": str(cache)}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "wsbench", *args], capture_output=True,
                          text=True, env=env, cwd=cache.parent)  # fmt: skip


def test_the_plugin_trains_runs_and_benches_through_the_cli(installed: Path, tmp_path: Path):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    data = ["--dataset", "fakes:TinyDataset"]
    listed = wsbench(installed, cache, "methods")
    assert "brightest" in listed.stdout and "wsbench-brightest" in listed.stdout
    before = wsbench(installed, cache, "run", "--method", "brightest", *data, "--out", str(runs))
    assert before.returncode == 1 and "wsbench train --method brightest" in before.stderr
    trained = wsbench(installed, cache, "train", "--method", "brightest", *data,
                      "-p", "quantile=0.95", "-t", "max_vertebrae=2")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    (card,) = (cache / "models").glob("brightest-*.json")
    assert json.loads(card.read_text())["vertebrae"] == 2
    ran = wsbench(installed, cache, "run", "--method", "brightest", *data, "-p", "quantile=0.95",
                  "--out", str(runs))  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    manifests = [json.loads(m.read_text()) for m in runs.glob("*/brightest/*/manifest.json")]
    (record,) = [m for m in manifests if m["finished"]]  # the run before training never got far
    assert record["method"]["params"] == {"quantile": 0.95}
    assert record["method"]["models"]["threshold"].startswith(card.stem)
    benched = wsbench(installed, cache, "bench", *data, "--methods", "brightest,otsu",
                      "--out", str(tmp_path / "bench"))  # fmt: skip
    assert benched.returncode == 0, benched.stderr
    outcomes = json.loads((tmp_path / "bench" / "fakes-TinyDataset" / "bench.json").read_text())
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
