"""Faults met while running methods: failures, hangs, dead workers, refusals, resumes over
torn or failed records, unsafe ids, a full disk, unknown or crashing methods in a bench, and
checkpoints that are not weights. Each test checks the outcome recorded and that every valid
vertebra still got its result."""

from __future__ import annotations

import errno
import json
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
from pathlib import Path

import fakes
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.harness import worker
from wsbench.harness.bench import bench
from wsbench.harness.evaluation import evaluate_case
from wsbench.harness.params import ParameterError, method_params
from wsbench.harness.registry import load_method
from wsbench.harness.rundir import RunError, case_path, mask_path, read_case, read_manifest
from wsbench.harness.runner import RunConfig, run
from wsbench.harness.worker import fork_unsafe

TINY = "fakes:TinyDataset"
TEST_IDS = ["tiny_s3_L1", "tiny_s3_L2", "tiny_s4_L1", "tiny_s4_L2"]
METRICS = ["n_pred", "tp", "fp", "fn", "pred_area_px", "f1", "sq", "pq", "global_dice", "recall"]


@pytest.fixture
def forkable() -> None:
    """Skip a test that needs the time limit when this process cannot fork a worker (a test
    earlier in the session ran torch's thread pool)."""
    why = fork_unsafe()
    if why:
        pytest.skip(f"time limits are not enforced in this process: {why}")


def interrupt_when(flag: Path, pid: int, limit_s: float = 60.0) -> None:
    """Ctrl-C to process ``pid`` as soon as the file ``flag`` exists (a method has begun to
    hang), so that the interrupt lands while the run waits on that vertebra."""
    deadline = time.monotonic() + limit_s
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pid, signal.SIGINT)


def misbehaving(**params: str) -> RunConfig:
    """A run of :class:`faulty.Misbehaving` on the tiny dataset."""
    return RunConfig("faulty:Misbehaving", TINY, params=params)


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def scores_of_nothing(vertebra_id: str) -> dict[str, float]:
    """The tiny vertebra's scores for an empty answer, computed directly."""
    (vertebra,) = [v for v in fakes.TinyDataset().prepare().vertebrae if v.key.id == vertebra_id]
    category = "healthy" if vertebra.phenotype is None else vertebra.phenotype.value
    empty = np.zeros_like(vertebra.reference)
    return evaluate_case(empty, vertebra.reference, category, vertebra.spacing)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_a_failed_vertebra_is_scored_as_an_empty_answer(tmp_path: Path) -> None:
    result = run(misbehaving(fail="tiny_s3_L1"), tmp_path)
    cases = result.cases.set_index("vertebra")
    assert list(cases.index) == TEST_IDS
    row = cases.loc["tiny_s3_L1"]
    assert (
        row["status"] == "failed" and row["reason"] == "RuntimeError: no convergence on tiny_s3_L1"
    )
    expected = scores_of_nothing("tiny_s3_L1")
    assert expected["fn"] == 1 and expected["f1"] == 0.0
    assert all(same(float(row[m]), float(expected[m])) for m in METRICS)
    assert (cases.drop(index="tiny_s3_L1")["status"] == "ok").all()
    assert not mask_path(result.run_dir, "tiny_s3_L1").exists()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["failed"] == [
        {"vertebra": "tiny_s3_L1", "status": "failed", "reason": row["reason"]}
    ]


def test_failing_ranks_exactly_like_answering_nothing(tmp_path: Path) -> None:
    broken = ["tiny_s3_L2", "tiny_s4_L2"]
    failing = run(misbehaving(fail=",".join(broken)), tmp_path / "a").cases
    silent = run(misbehaving(empty=",".join(broken)), tmp_path / "b").cases
    scores = [c for c in failing.columns if c not in ("status", "reason")]
    pd.testing.assert_frame_equal(failing[scores], silent[scores])
    assert list(failing["status"]) == ["ok", "failed", "ok", "failed"]


def test_a_hung_vertebra_is_stopped_and_the_run_goes_on(tmp_path: Path, forkable: None) -> None:
    result = run(misbehaving(hang="tiny_s3_L2"), tmp_path, timeout_s=1.5)
    cases = result.cases.set_index("vertebra")
    assert cases.loc["tiny_s3_L2", "status"] == "timeout"
    assert cases.loc["tiny_s3_L2", "reason"] == "no answer within the time limit of 1.5 s"
    assert (cases.drop(index="tiny_s3_L2")["status"] == "ok").all()
    assert cases.loc["tiny_s3_L2", "fn"] == scores_of_nothing("tiny_s3_L2")["fn"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["timeout_s"] == 1.5 and manifest["finished"]


def test_a_dataset_level_fault_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    expected = (
        r"cannot be evaluated: labels.csv: rows 4 and 7 contra"
        r".*1 unusable file\(s\), first: sub-9_ct.nii.gz cannot be read"
    )
    with pytest.raises(RunError, match=expected):
        run(RunConfig("otsu", "faulty:UnusableLabels"), tmp_path)
    assert not (tmp_path / "faulty-UnusableLabels").exists()


def test_without_a_safe_fork_the_run_goes_on_unlimited_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "fork_unsafe", lambda: worker.POOL_STARTED)
    warnings: list[str] = []
    result = run(misbehaving(fail="tiny_s3_L1"), tmp_path, notify=warnings.append)
    assert warnings == [f"the time limit of 5 s is not enforced: {worker.POOL_STARTED}"]
    assert list(result.cases["status"]) == ["failed", "ok", "ok", "ok"]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["warnings"] == warnings


def test_the_method_default_time_limit_is_recorded(tmp_path: Path) -> None:
    result = run(RunConfig("otsu", TINY), tmp_path)
    assert json.loads((result.run_dir / "manifest.json").read_text())["timeout_s"] == 120.0


def test_a_bench_finishes_every_method_after_one_hangs(tmp_path: Path, forkable: None) -> None:
    outcomes = bench(TINY, tmp_path, ["faulty:Hangs", "otsu"], timeout_s=1.0)
    assert outcomes["faulty:Hangs"]["status"] == "ok" and outcomes["faulty:Hangs"]["timeout"] == 1
    assert outcomes["otsu"]["status"] == "ok" and outcomes["otsu"]["timeout"] == 0
    hung = pd.read_csv(Path(outcomes["faulty:Hangs"]["run_dir"]) / "cases.csv")
    assert list(hung["status"]) == ["timeout", "ok", "ok", "ok"]


def test_a_worker_that_dies_fails_its_vertebra_only(tmp_path: Path, forkable: None) -> None:
    cases = run(misbehaving(die="tiny_s3_L1"), tmp_path).cases.set_index("vertebra")
    assert cases.loc["tiny_s3_L1", "status"] == "failed"
    assert cases.loc["tiny_s3_L1", "reason"] == "the worker process died (exit code 3)"
    assert (cases.drop(index="tiny_s3_L1")["status"] == "ok").all()


def test_ctrl_c_stops_the_worker_keeps_finished_vertebrae_and_resume_completes(
    tmp_path: Path, forkable: None, request: pytest.FixtureRequest
) -> None:
    # a shell starts background jobs with SIGINT ignored, and Python then leaves it ignored:
    # give this process the Ctrl-C a terminal would
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    hanging = tmp_path / "hanging"
    config = misbehaving(hang="tiny_s4_L1", flag=str(hanging))
    interrupt = threading.Thread(target=interrupt_when, args=(hanging, os.getpid()), daemon=True)
    interrupt.start()
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path, timeout_s=60)
    assert multiprocessing.active_children() == []
    (run_dir,) = (tmp_path / "fakes-TinyDataset" / "faulty-Misbehaving").iterdir()
    assert sorted(p.stem for p in (run_dir / "cases").iterdir()) == ["tiny_s3_L1", "tiny_s3_L2"]
    resumed = run(config, tmp_path, resume=True, timeout_s=1)
    assert resumed.run_dir == run_dir
    assert list(resumed.cases["status"]) == ["ok", "ok", "timeout", "ok"]


def test_a_refusal_is_recorded_with_its_reason_and_scored(tmp_path: Path) -> None:
    result = run(misbehaving(refuse="tiny_s4_L2"), tmp_path)
    row = result.cases.set_index("vertebra").loc["tiny_s4_L2"]
    assert (row["status"], row["reason"]) == ("refused", "refused: looks healthy")
    assert row["fp"] == 0 and mask_path(result.run_dir, "tiny_s4_L2").exists()
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert [r["vertebra"] for r in manifest["refused"]] == ["tiny_s4_L2"] and not manifest["failed"]


def test_resume_retries_failed_vertebrae_unless_told_to_keep_them(tmp_path: Path) -> None:
    flag = tmp_path / "server-down"
    flag.touch()
    config = misbehaving(flaky="tiny_s3_L1,tiny_s4_L1", flag=str(flag))
    first = run(config, tmp_path / "runs")
    assert list(first.cases["status"]) == ["failed", "ok", "failed", "ok"]
    flag.unlink()  # the transient error has gone
    kept = run(config, tmp_path / "runs", resume=True, retry_failed=False)
    assert kept.run_dir == first.run_dir and list(kept.cases["status"]) == list(
        first.cases["status"]
    )
    retried = run(config, tmp_path / "runs", resume=True)
    assert retried.run_dir == first.run_dir and (retried.cases["status"] == "ok").all()
    reference = run(misbehaving(), tmp_path / "clean").cases
    scores = [c for c in reference.columns if c not in ("status", "reason")]
    pd.testing.assert_frame_equal(retried.cases[scores], reference[scores])


def test_resume_redoes_a_torn_case_record_and_names_it(tmp_path: Path) -> None:
    first = run(RunConfig("otsu", TINY), tmp_path)
    torn = case_path(first.run_dir, "tiny_s4_L1")
    torn.write_text(torn.read_text()[:40])
    warnings: list[str] = []
    resumed = run(RunConfig("otsu", TINY), tmp_path, resume=True, notify=warnings.append)
    assert resumed.run_dir == first.run_dir
    (warning,) = warnings
    assert str(torn) in warning and "torn" in warning and "computing tiny_s4_L1 again" in warning
    assert (first.run_dir / "cases.csv").read_text() == resumed.cases.to_csv(index=False)
    pd.testing.assert_frame_equal(resumed.cases, first.cases)
    assert json.loads(torn.read_text())["case"]["vertebra"] == "tiny_s4_L1"


def test_unsafe_ids_stay_in_tables_and_never_leave_the_run_directory(tmp_path: Path) -> None:
    result = run(RunConfig("otsu", "faulty:UnsafeIds"), tmp_path / "runs")
    ids = ["unsafe_..", "unsafe_../x_L2", "unsafe_a/b_L1", "unsafe_a_b_L1"]
    assert sorted(result.cases["vertebra"]) == sorted(
        [f"{i}_L3" if i == "unsafe_.." else i for i in ids]
    )
    assert (result.cases["status"] == "ok").all()
    files = sorted(p for p in (tmp_path / "runs").rglob("*") if p.is_file())
    assert all(result.run_dir in p.parents for p in files if p.suffix in (".json", ".npz")
               and p.name != "manifest.json" and p.parent.name in ("cases", "masks"))  # fmt: skip
    assert len(list((result.run_dir / "cases").iterdir())) == 4
    assert len(list((result.run_dir / "masks").iterdir())) == 4
    assert not (tmp_path / "runs" / "unsafe" / "otsu" / "x_L2.json").exists()
    saved = pd.read_csv(result.run_dir / "cases.csv", dtype={"subject": str})
    assert sorted(saved["subject"]) == ["..", "../x", "a/b", "a_b"]


def test_a_full_disk_names_the_file_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    result = cli("run", "-m", "otsu", "-d", TINY, "--out", str(tmp_path))
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "could not write" in text and "tiny_s3_L1.npz: No space left on device" in text
    assert "free space on that disk, or write elsewhere" in text


def test_bench_refuses_an_unknown_method_before_running_any(tmp_path: Path) -> None:
    result = cli("bench", "-d", TINY, "--methods", "otsu,nosuch", "--out", str(tmp_path))
    assert result.exit_code != 0
    assert "unknown method(s) 'nosuch'" in " ".join(result.output.split())
    assert not (tmp_path / "fakes-TinyDataset" / "otsu").exists()
    with pytest.raises(RunError, match="unknown method"):
        bench(TINY, tmp_path, ["nosuch"])


def test_bench_exits_non_zero_when_a_method_crashed_and_still_runs_the_others(
    tmp_path: Path,
) -> None:
    result = cli("bench", "-d", TINY, "--methods", "fakes:BrokenFit,otsu", "--out", str(tmp_path))
    assert result.exit_code == 1 and "fakes:BrokenFit crashed" in result.output
    record = json.loads((tmp_path / "fakes-TinyDataset" / "bench.json").read_text())["methods"]
    assert record["otsu"]["status"] == "ok"
    assert record["fakes:BrokenFit"] == {
        "status": "failed", "reason": "RuntimeError: diverged at step 3", "run_dir": ""
    }  # fmt: skip


def test_a_bench_marks_a_method_with_failed_vertebrae(tmp_path: Path, forkable: None) -> None:
    outcomes = bench(TINY, tmp_path, ["faulty:Hangs"], timeout_s=1.0)
    assert outcomes["faulty:Hangs"]["timeout"] == 1
    again = cli("bench", "-d", TINY, "--methods", "faulty:Hangs", "--out", str(tmp_path),
                "--timeout", "1", "--keep-failed")  # fmt: skip
    assert again.exit_code == 0 and "ok (1 timeout)" in again.output


class Payload:
    """Any Python object: what a pickled checkpoint may smuggle in."""


def test_a_checkpoint_that_is_not_weights_is_one_short_line(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    torch.save({"model": Payload()}, pickled)
    truncated = tmp_path / "half.pt"
    truncated.write_bytes(pickle.dumps({"weights": [1.0] * 50})[:30])
    for path, why in ((pickled, "holds pickled Python objects"), (truncated, "truncated")):
        result = cli("run", "-m", "hideseek", "-d", TINY, "--out", str(tmp_path / "runs"),
                     "--checkpoint", str(path))  # fmt: skip
        assert result.exit_code == 1
        text = " ".join(result.output.split())
        assert f"{path} is not a DAE checkpoint wsbench can read" in text and why in text
        assert "weights_only" not in text and len(result.output.splitlines()) <= 4


def test_every_method_lists_its_real_parameters() -> None:
    with pytest.raises(ParameterError, match=r"method 'otsu' has no parameter 'x'.*Accepted: none"):
        method_params(load_method("otsu"), ["x=1"])
    ungated = method_params(load_method("hideseek-ungated"), ["p_target=0.6", "tau=0.1"])
    assert ungated == {"p_target": 0.6, "tau": 0.1}
    assert "p_target" in load_method("hideseek-ungated").parameters()
    accepted = "Accepted: checkpoint, model, refit_classifier, steps_stochastic"
    with pytest.raises(ParameterError, match=accepted):
        method_params(load_method("hideseek-ungated"), ["ptarget=0.6"])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(content=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_run_directory_readers_read_or_name_the_file(tmp_path: Path, content: bytes) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "cases").mkdir(parents=True, exist_ok=True)
    for path, reader in ((case_path(run_dir, "v"), read_case), (run_dir / "manifest.json", None)):
        path.write_bytes(content)
        try:
            record = reader(path) if reader else read_manifest(run_dir)
        except RunError as exc:
            assert str(path) in str(exc)
        else:
            assert isinstance(record, dict)
            if reader:
                assert isinstance(record["case"], dict)
