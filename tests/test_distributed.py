"""`wsbench bench --workers N / --scheduler`: Dask workers give the single process's results,
survive a worker's death, and the plan says what is left and how long it should take."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from wsbench.harness.bench import PlannedRun, bench, bench_plan
from wsbench.harness.distributed import chunk_size, chunks, dask_client, run_distributed
from wsbench.harness.runner import RunConfig, run

distributed = pytest.importorskip("distributed")

DATASET = "fakes:TinyDataset"
LIMIT_S = 180
"""Seconds a test may take before it is stopped (its cluster closed) instead of hanging."""


@pytest.fixture(autouse=True)
def time_limit() -> Iterator[None]:
    """TimeoutError in the test after :data:`LIMIT_S` seconds."""

    def stop(signum: int, frame: object) -> None:
        raise TimeoutError(f"test ran past {LIMIT_S} s: a Dask task or worker hangs")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def cases_of(outcomes: dict, name: str) -> bytes:
    """The bytes of the cases.csv of ``name``'s run."""
    return (Path(outcomes[name]["run_dir"]) / "cases.csv").read_bytes()


@contextmanager
def local_cluster() -> Iterator[str]:
    """The address of a cluster of two worker processes (with this process's environment),
    closed at the end."""
    with dask_client(2, None) as client:
        client.wait_for_workers(2, timeout=LIMIT_S)
        yield client.scheduler.address


def test_chunks_cover_every_vertebra_once_in_order():
    assert chunk_size(207, 2) == 8  # capped: 207 / (4 per worker * 2) = 26
    assert chunk_size(20, 2) == 3
    assert chunk_size(4, 2) == 1
    assert chunks([3, 5, 6, 9, 10], 2) == [(3, 5), (6, 9), (10,)]


def test_two_workers_give_the_single_process_cases(tmp_path: Path, one_torch_thread):
    methods = ["otsu", "fakes:NoisyMethod"]
    one = bench(DATASET, tmp_path / "one", methods=methods)
    two = bench(DATASET, tmp_path / "two", methods=methods, workers=2)
    assert [two[name]["status"] for name in methods] == ["ok", "ok"]
    for name in methods:
        assert cases_of(two, name) == cases_of(one, name)
        run_dir = Path(two[name]["run_dir"])
        lesions = (run_dir / "lesions.csv").read_bytes()
        assert lesions == (Path(one[name]["run_dir"]) / "lesions.csv").read_bytes()
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["distributed"]["workers"] == 2
        assert manifest["finished"] and manifest["torch_threads"] == 1
        assert manifest["warnings"] == []  # the time limit is enforced in the workers
    record = json.loads((tmp_path / "two" / "fakes-TinyDataset" / "bench.json").read_text())
    assert list(record["methods"]) == methods


def test_a_killed_worker_loses_only_its_chunk(tmp_path: Path, monkeypatch, one_torch_thread):
    import fakes

    methods = ["otsu", "fakes:KillsWorker"]
    marker = tmp_path / "killed"
    marker.touch()  # the single-process reference must not kill the test's own process
    monkeypatch.setenv(fakes.KILL_MARKER_ENV, str(marker))
    one = bench(DATASET, tmp_path / "one", methods=methods)
    marker.unlink()
    with local_cluster() as cluster:  # started now: its workers see the marker's variable
        two = bench(DATASET, tmp_path / "two", methods=methods,
                    scheduler=cluster)  # fmt: skip
    assert marker.exists(), "the worker segmenting tiny_s4_L1 was not killed"
    assert [two[name]["status"] for name in methods] == ["ok", "ok"]
    for name in methods:
        assert cases_of(two, name) == cases_of(one, name)
    otsu = json.loads((Path(two["otsu"]["run_dir"]) / "manifest.json").read_text())
    assert otsu["warnings"] == []  # a restarted worker still enforces the time limit


def test_time_limits_failures_and_dying_methods_inside_a_task(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "faults"))  # faulty:Misbehaving
    params = {"hang": "tiny_s3_L1", "fail": "tiny_s3_L2", "die": "tiny_s4_L1"}
    config = RunConfig("faulty:Misbehaving", DATASET, params=params)
    one = run(config, tmp_path / "one", timeout_s=1.0)
    with local_cluster() as cluster:
        two = run_distributed(config, tmp_path / "two", 2, cluster, timeout_s=1.0)
    cases = pd.read_csv(two.run_dir / "cases.csv").set_index("vertebra")
    assert cases["status"].to_dict() == {
        "tiny_s3_L1": "timeout", "tiny_s3_L2": "failed", "tiny_s4_L1": "failed", "tiny_s4_L2": "ok"
    }  # fmt: skip
    assert cases.loc["tiny_s3_L1", "reason"] == "no answer within the time limit of 1 s"
    assert cases.loc["tiny_s4_L1", "reason"] == "the worker process died (exit code 3)"
    assert (two.run_dir / "cases.csv").read_bytes() == (one.run_dir / "cases.csv").read_bytes()


def test_resumed_bench_on_workers_segments_only_what_is_left(tmp_path: Path):
    first = bench(DATASET, tmp_path, methods=["otsu"])
    run_dir = Path(first["otsu"]["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["finished"] = None
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    for path in sorted((run_dir / "cases").glob("*.json"))[:2]:
        path.unlink()
    reference = (run_dir / "cases.csv").read_bytes()
    (run_dir / "cases.csv").unlink()

    plan = bench_plan(DATASET, tmp_path, ["otsu"])
    assert (plan[0].action, plan[0].to_segment) == ("resume", None)  # no data given: unknown
    with local_cluster() as cluster:
        again = bench(DATASET, tmp_path, methods=["otsu"], scheduler=cluster)
    assert again["otsu"]["run_dir"] == str(run_dir)
    assert (run_dir / "cases.csv").read_bytes() == reference
    assert json.loads((run_dir / "manifest.json").read_text())["distributed"]["chunk_size"] == 1


def test_plan_counts_vertebrae_left_and_expects_the_measured_speed(tmp_path: Path):
    from fakes import TinyDataset

    first = bench(DATASET, tmp_path, methods=["otsu"])
    manifest = json.loads((Path(first["otsu"]["run_dir"]) / "manifest.json").read_text())
    per_vertebra = manifest["timings_s"]["segment"] / 4  # TinyDataset: four test vertebrae
    data = TinyDataset().prepare()
    fresh = bench_plan(DATASET, tmp_path, ["otsu", "fakes:NoisyMethod"], fresh=True,
                       prepared=data)  # fmt: skip
    assert [(p.action, p.to_segment) for p in fresh] == [("run", 4), ("run", 4)]
    assert fresh[0].segment_s_per_vertebra == pytest.approx(per_vertebra)
    assert fresh[0].expected_s == pytest.approx(4 * per_vertebra)
    assert fresh[1].expected_s is None  # never run
    reused = bench_plan(DATASET, tmp_path, ["otsu"], prepared=data)
    assert (reused[0].action, reused[0].to_segment, reused[0].expected_s) == ("reuse", 0, 0.0)


def test_plan_table_shows_counts_durations_and_the_total_per_worker():
    from wsbench.cli.main import plan_table

    plan = [
        PlannedRun("otsu", "run", to_segment=207, segment_s_per_vertebra=0.5),
        PlannedRun("gradcam", "resume", to_segment=7, segment_s_per_vertebra=30.0),
        PlannedRun("eigencam", "run", to_segment=207),
        PlannedRun("broken", "fail"),
    ]
    console = Console(record=True, width=160)
    console.print(plan_table("phantom", plan, workers=2))
    text = console.export_text()
    rows = [line.split("│")[1:-1] for line in text.splitlines() if line.count("│") == 6]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert cells == [
        ["1", "otsu", "run", "207", "0:01:44"],  # 103.5 s
        ["2", "gradcam", "resume", "7", "0:03:30"],
        ["3", "eigencam", "run", "207", "unknown"],
        ["4", "broken", "cannot load: recorded as failed", "unknown", "unknown"],
    ]
    assert "expected: 0:02:37 on 2 worker(s), plus 2 method(s) of unknown speed" in text
