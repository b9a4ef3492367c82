"""Runner: run directory, determinism, resume after a crash, recorded failures, CLI errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fakes
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import BLASTIC, LYTIC, Phenotype, TrainingSet
from wsbench.harness.runner import RunConfig, RunError, label_foreground, run


def tiny(method: str, **params: object) -> RunConfig:
    return RunConfig(method=method, dataset="fakes:TinyDataset", params=dict(params))


def test_run_directory_contents(tmp_path: Path) -> None:
    result = run(tiny("otsu"), tmp_path)
    assert result.run_dir.parent == tmp_path / "fakes-TinyDataset" / "otsu"
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["method"]["name"] == "otsu"
    assert manifest["dataset"]["fingerprint"] == "tiny-fingerprint"
    assert manifest["split"] == "test" and manifest["seed"] == 0
    assert manifest["finished"] and manifest["timings_s"]["segment"] >= 0
    assert {"numpy", "torch", "panoptica", "wsbench"} <= set(manifest["packages"])
    cases = pd.read_csv(result.run_dir / "cases.csv")
    assert list(cases["vertebra"]) == ["tiny_s3_L1", "tiny_s3_L2", "tiny_s4_L1", "tiny_s4_L2"]
    assert list(cases["category"]) == ["blastic", "lytic", "mixed", "healthy"]
    assert (cases["status"] == "ok").all()
    for vertebra in cases["vertebra"]:
        with np.load(result.run_dir / "masks" / f"{vertebra}.npz") as masks:
            assert masks["labels"].shape == (32, 32) and masks["labels"].dtype == np.uint8


def test_otsu_finds_the_constructed_blastic_lesion(tmp_path: Path) -> None:
    cases = run(tiny("otsu"), tmp_path).cases.set_index("vertebra")
    blastic = cases.loc["tiny_s3_L1"]
    assert blastic["tp"] == 1 and blastic["fn"] == 0


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    first = run(tiny("fakes:NoisyMethod"), tmp_path / "a").run_dir / "cases.csv"
    second = run(tiny("fakes:NoisyMethod"), tmp_path / "b").run_dir / "cases.csv"
    assert first.read_bytes() == second.read_bytes()
    other = RunConfig("fakes:NoisyMethod", "fakes:TinyDataset", seed=1)
    third = run(other, tmp_path / "c").run_dir / "cases.csv"
    assert third.read_bytes() != first.read_bytes()


def test_fit_receives_the_weak_training_view(tmp_path: Path) -> None:
    fakes.NoisyMethod.seen.clear()
    run(tiny("fakes:NoisyMethod"), tmp_path, timeout_s=0)  # fit in this process, to look at it
    (training,) = fakes.NoisyMethod.seen
    assert isinstance(training, TrainingSet) and len(training) == 4


def test_resume_after_crash_gives_identical_cases(tmp_path: Path) -> None:
    fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, None
    reference = run(tiny("fakes:CrashAfterTwo"), tmp_path / "ref").run_dir / "cases.csv"  # worker
    fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        run(tiny("fakes:CrashAfterTwo"), tmp_path / "crash", timeout_s=0)
    (run_dir,) = (tmp_path / "crash" / "fakes-TinyDataset" / "fakes-CrashAfterTwo").iterdir()
    assert len(list((run_dir / "cases").glob("*.json"))) == 2
    assert not (run_dir / "cases.csv").exists()
    fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, None
    resumed = run(tiny("fakes:CrashAfterTwo"), tmp_path / "crash", resume=True, timeout_s=0)
    assert resumed.run_dir == run_dir
    assert fakes.CrashAfterTwo.calls == 2, "finished vertebrae are not recomputed"
    assert (run_dir / "cases.csv").read_bytes() == reference.read_bytes()


def test_a_run_of_another_method_version_or_other_data_is_not_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        run(tiny("fakes:CrashAfterTwo"), tmp_path, timeout_s=0)
    fakes.CrashAfterTwo.calls, fakes.CrashAfterTwo.crash_at = 0, None
    monkeypatch.setattr(fakes.CrashAfterTwo, "version", "2")
    with pytest.raises(RunError, match="made by method version '1', the installed one is '2'"):
        run(tiny("fakes:CrashAfterTwo"), tmp_path, resume=True)
    monkeypatch.setattr(fakes.CrashAfterTwo, "version", "1")
    (run_dir,) = (tmp_path / "fakes-TinyDataset" / "fakes-CrashAfterTwo").iterdir()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["dataset"]["fingerprint"] = "older-data"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="fingerprint older-data differs"):
        run(tiny("fakes:CrashAfterTwo"), tmp_path, resume=True, timeout_s=0)
    assert fakes.CrashAfterTwo.calls == 0


def test_resume_without_previous_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="nothing to resume"):
        run(tiny("otsu"), tmp_path, resume=True)


def test_wrong_shape_marks_vertebra_failed_and_run_goes_on(tmp_path: Path) -> None:
    cases = run(tiny("fakes:WrongShape"), tmp_path).cases.set_index("vertebra")
    assert cases.loc["tiny_s3_L1", "status"] == "failed"
    assert "shape (3, 3), expected (32, 32)" in cases.loc["tiny_s3_L1", "reason"]
    assert cases.loc["tiny_s4_L1", "status"] == "ok"


def test_wrong_labels_mark_vertebra_failed(tmp_path: Path) -> None:
    cases = run(tiny("fakes:WrongLabels"), tmp_path).cases
    assert (cases["status"] == "failed").all()
    assert cases["reason"].str.contains(r"label values \[7\]").all()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(RunError, match="not writable"):
        run(tiny("otsu"), locked)


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunError, match="not writable"):
        run(tiny("otsu"), blocker)


def test_methods_get_the_patient_level_hint_never_the_vertebra_label(tmp_path: Path) -> None:
    fakes.HintRecorder.seen.clear()
    run(tiny("fakes:HintRecorder"), tmp_path, timeout_s=0)  # segment in this process
    # s3: a blastic and a lytic vertebra; s4: a mixed and a healthy one
    assert fakes.HintRecorder.seen == {
        "tiny_s3_L1": Phenotype.MIXED,
        "tiny_s3_L2": Phenotype.MIXED,
        "tiny_s4_L1": Phenotype.MIXED,
        "tiny_s4_L2": Phenotype.MIXED,
    }


def test_label_foreground_by_phenotype() -> None:
    binary = np.array([[0, 1]], np.uint8)
    assert label_foreground(binary, Phenotype.BLASTIC).tolist() == [[0, BLASTIC]]
    assert label_foreground(binary, Phenotype.LYTIC).tolist() == [[0, LYTIC]]
    assert label_foreground(binary, None).tolist() == [[0, LYTIC]]


def test_cli_run_prints_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--method", "otsu", "--dataset", "fakes:TinyDataset", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "F1 (RQ)" in result.output and "blastic" in result.output


def test_cli_threads_are_set_and_recorded(tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        args = ["run", "--method", "otsu", "--dataset", "fakes:TinyDataset", "--out", str(tmp_path)]
        result = CliRunner().invoke(app, [*args, "--threads", "1"])
        assert result.exit_code == 0, result.output
        (manifest,) = tmp_path.glob("*/otsu/*/manifest.json")
        assert json.loads(manifest.read_text())["torch_threads"] == 1 == torch.get_num_threads()
        refused = CliRunner().invoke(app, [*args, "--threads", "0"])
        assert refused.exit_code == 2 and "--threads" in refused.output
    finally:
        torch.set_num_threads(before)


def test_cli_unknown_method_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--method", "otsuu", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "Did you mean 'otsu'" in result.output
    assert "Traceback" not in result.output


def test_cli_run_without_root_says_where_the_data_comes_from(tmp_path: Path) -> None:
    args = ["run", "--method", "otsu", "--dataset", "tcia", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in said
    for text in ("needs --root", "Spine-Mets-CT-SEG", "idc download spine_mets_ct_seg", "tcia.md"):
        assert text in said


def test_cli_unknown_param_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "run",
            "--method",
            "otsu",
            "-p",
            "bins=3",
            "--dataset",
            "fakes:TinyDataset",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code != 0 and "no parameter 'bins'" in result.output


def test_cli_dataset_options_reach_the_adapter_and_the_manifest(tmp_path: Path) -> None:
    from fakes import OptionsDataset

    args = ["run", "-m", "otsu", "-d", "fakes:OptionsDataset", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "-o", "colour=blue", "-o", "size=3"])
    assert result.exit_code == 0, result.output
    assert OptionsDataset.seen[-1] == {"colour": "blue", "size": "3"}
    [manifest] = tmp_path.glob("*/*/*/manifest.json")
    assert json.loads(manifest.read_text())["dataset"]["options"] == {"colour": "blue", "size": "3"}

    bad = CliRunner().invoke(app, [*args, "-o", "colour"])
    assert bad.exit_code != 0 and "'colour' is not of the form key=value" in bad.output


def test_cli_bench_refuses_a_device_it_cannot_use_before_any_run(tmp_path: Path) -> None:
    args = ["bench", "--dataset", "fakes:TinyDataset", "--methods", "fakes:OnDevice"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path), "--device", "gpu"])
    assert result.exit_code == 1 and "device='gpu' is not a torch device" in result.output
    assert not (tmp_path / "fakes-TinyDataset").exists()
