"""`wsbench bench`: every method in turn, failures recorded, missing weights marked not run."""

from __future__ import annotations

import json
from pathlib import Path

from wsbench.harness.bench import bench
from wsbench.report.leaderboard import not_run

METHODS = ["fakes:NoisyMethod", "fakes:NeedsWeights", "fakes:BrokenFit", "fakes:WrongShape"]


def test_bench_goes_on_past_failures_and_reuses_finished_runs(tmp_path: Path):
    outcomes = bench("fakes:TinyDataset", tmp_path, methods=METHODS)
    status = {name: outcome["status"] for name, outcome in outcomes.items()}
    assert status == {
        "fakes:NoisyMethod": "ok",
        "fakes:NeedsWeights": "not run",
        "fakes:BrokenFit": "failed",
        "fakes:WrongShape": "ok",  # its bad vertebra is a failed case inside an ok run
    }
    assert outcomes["fakes:BrokenFit"]["reason"] == "RuntimeError: diverged at step 3"
    assert "--checkpoint" in outcomes["fakes:NeedsWeights"]["detail"]
    dataset_dir = tmp_path / "fakes-TinyDataset"
    assert json.loads((dataset_dir / "bench.json").read_text())["methods"] == outcomes
    assert not_run(dataset_dir) == {
        "fakes:NeedsWeights": "weights not supplied",
        "fakes:BrokenFit": "RuntimeError: diverged at step 3",
    }

    again = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    assert again["fakes:NoisyMethod"]["run_dir"] == outcomes["fakes:NoisyMethod"]["run_dir"]
    assert len(list((dataset_dir / "fakes-NoisyMethod").iterdir())) == 1
    assert json.loads((dataset_dir / "bench.json").read_text())["methods"] == outcomes
    assert list(again) == ["fakes:NoisyMethod"]


def test_bench_reruns_a_method_whose_version_changed(tmp_path: Path, monkeypatch):
    import fakes

    first = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    monkeypatch.setattr(fakes.NoisyMethod, "version", "2")
    second = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    assert second["fakes:NoisyMethod"]["run_dir"] != first["fakes:NoisyMethod"]["run_dir"]
    manifest = json.loads(
        (Path(second["fakes:NoisyMethod"]["run_dir"]) / "manifest.json").read_text()
    )
    assert manifest["method"]["version"] == "2"


def test_bench_reruns_every_method_when_the_harness_version_changed(tmp_path: Path, monkeypatch):
    import wsbench.harness.runner

    first = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    manifest = Path(first["fakes:NoisyMethod"]["run_dir"]) / "manifest.json"
    assert (
        json.loads(manifest.read_text())["harness_version"]
        == wsbench.harness.runner.HARNESS_VERSION
    )
    assert bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1]) == first
    monkeypatch.setattr(wsbench.harness.runner, "HARNESS_VERSION", "next")
    second = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    assert second["fakes:NoisyMethod"]["run_dir"] != first["fakes:NoisyMethod"]["run_dir"]
    record = json.loads(manifest.read_text())
    del record["harness_version"]  # a manifest from before the field: counts as "1"
    manifest.write_text(json.dumps(record))
    assert wsbench.harness.runner.made_otherwise(manifest.parent, "1") is not None
    monkeypatch.setattr(wsbench.harness.runner, "HARNESS_VERSION", "1")
    assert wsbench.harness.runner.made_otherwise(manifest.parent, "1") is None


def test_fresh_bench_runs_again_and_keeps_the_earlier_run(tmp_path: Path):
    first = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1])
    second = bench("fakes:TinyDataset", tmp_path, methods=METHODS[:1], fresh=True)
    old, new = first["fakes:NoisyMethod"]["run_dir"], second["fakes:NoisyMethod"]["run_dir"]
    assert new != old and Path(old).is_dir()
    assert (Path(new) / "cases.csv").read_bytes() == (Path(old) / "cases.csv").read_bytes()


def test_bench_device_reaches_only_the_methods_that_take_one(tmp_path: Path):
    methods = ["fakes:NoisyMethod", "fakes:OnDevice"]
    outcomes = bench("fakes:TinyDataset", tmp_path, methods=methods, device="cpu:0")

    def manifest(name: str) -> dict:
        return json.loads((Path(outcomes[name]["run_dir"]) / "manifest.json").read_text())

    assert manifest("fakes:OnDevice")["config"]["params"] == {"device": "cpu:0"}
    assert manifest("fakes:OnDevice")["method"]["params"] == {"device": "cpu:0"}
    assert manifest("fakes:NoisyMethod")["config"]["params"] == {}
    plain = bench("fakes:TinyDataset", tmp_path, methods=methods)
    assert plain["fakes:NoisyMethod"]["run_dir"] == outcomes["fakes:NoisyMethod"]["run_dir"]
    assert plain["fakes:OnDevice"]["run_dir"] != outcomes["fakes:OnDevice"]["run_dir"]
