"""Run several methods on one dataset, one after another (or on Dask workers:
:mod:`wsbench.harness.distributed`), surviving failures and restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wsbench.contract import SLICE_STEP, PreparedDataset, Split, WeightsNotSuppliedError
from wsbench.harness.distributed import MethodRun, dask_pool, run_methods
from wsbench.harness.evaluation import FAILED_STATUSES
from wsbench.harness.registry import METHODS_GROUP, declared, load_method
from wsbench.harness.rundir import (
    RunError,
    find_resumable,
    read_finished,
    read_manifest,
    safe_name,
)
from wsbench.harness.runner import (
    RunConfig,
    RunResult,
    finished_record,
    made_otherwise,
    prepare_dataset,
    run,
)


def device_params(method: str, device: str | None) -> dict[str, str]:
    """``{"device": device}`` when ``device`` is given and ``method``'s constructor takes a
    ``device`` parameter; ``{}`` otherwise."""
    if device is None:
        return {}
    return {"device": device} if "device" in load_method(method).parameters() else {}


def default_methods() -> list[str]:
    """The registered methods a bench runs when none are named: all but those declaring
    ``bench = False``, quick ones first (:func:`quick_first`); a plugin that cannot be loaded
    stays in, last, so that its failure is recorded."""
    names = []
    for name in declared(METHODS_GROUP):
        try:
            if not load_method(name).bench:
                continue
        except Exception:  # recorded as this method's failure when the bench reaches it
            pass
        names.append(name)
    return sorted(names, key=quick_first)


def quick_first(name: str) -> tuple[int, float, str]:
    """Sort key putting first the methods that train nothing, then those with the shorter
    per-vertebra time limit, then by name; those that cannot be loaded come last."""
    try:
        cls = load_method(name)
    except Exception:  # its failure is recorded when the bench reaches it
        return (2, 0.0, name)
    return (int(cls.learns()), cls.timeout_s, name)


def check_names(names: list[str]) -> None:
    """RunError naming every method in ``names`` that is neither registered nor ``module:Class``,
    before anything runs."""
    known = declared(METHODS_GROUP)
    unknown = [name for name in names if ":" not in name and name not in known]
    if unknown:
        raise RunError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(known)} (or give module:Class)"
        )


def vertebra_counts(run_dir: Path) -> dict[str, int]:
    """How many vertebrae of a finished run ended in each status other than ``ok``."""
    cases = pd.read_csv(run_dir / "cases.csv", usecols=["status"])
    counts = cases["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in ("failed", "timeout", "refused")}


def has_failures(run_dir: Path) -> bool:
    """Whether a finished run holds failed or timed-out vertebrae."""
    counts = vertebra_counts(run_dir)
    return any(counts[status] for status in FAILED_STATUSES)


@dataclass(frozen=True)
class PlannedRun:
    """What a bench does with one method, known before anything runs: ``action`` is ``reuse``
    (a finished run), ``resume``, ``run`` or ``fail`` (with the ``error`` it will record);
    ``to_segment`` vertebrae are left to segment (``None``: the data could not be prepared) at
    ``segment_s_per_vertebra`` each (``None``: never measured)."""

    method: str
    action: str
    config: RunConfig | None = None
    previous: Path | None = None
    segment_s_per_vertebra: float | None = None
    error: Exception | None = None
    to_segment: int | None = None

    @property
    def expected_s(self) -> float | None:
        """Expected seconds of segmenting what is left; ``None`` when unknown."""
        if self.to_segment == 0:
            return 0.0
        if self.to_segment is None or self.segment_s_per_vertebra is None:
            return None
        return self.to_segment * self.segment_s_per_vertebra


def segment_s_per_vertebra(method_dir: Path) -> float | None:
    """Seconds per vertebra the newest finished run under ``method_dir`` spent segmenting (its
    manifest's ``timings_s``, over the rows of its ``cases.csv``; a resumed run's time covers
    only what it segmented, so it reads fast), or ``None`` when there is none."""
    runs = sorted(method_dir.iterdir(), reverse=True) if method_dir.is_dir() else []
    for run_dir in runs:
        try:
            if read_finished(run_dir):
                seconds = read_manifest(run_dir).get("timings_s", {}).get("segment")
                rows = len(pd.read_csv(run_dir / "cases.csv", usecols=["vertebra"]))
                return None if seconds is None or not rows else seconds / rows
        except (RunError, OSError, ValueError):  # a torn run tells nothing of the speed
            continue
    return None


def left_to_segment(
    previous: Path | None, prepared: PreparedDataset | None, split: str, retry_failed: bool
) -> int | None:
    """Vertebrae of the ``split`` of the ``prepared`` data that a run continuing ``previous``
    (``None``: a new run) has to segment; ``None`` when the data could not be prepared."""
    if prepared is None:
        return None
    vertebrae = prepared.split(Split(split))
    if previous is None:
        return len(vertebrae)
    kept = [finished_record(previous, v.key.id, retry_failed, lambda _: None) for v in vertebrae]
    return sum(record is None for record in kept)


def plan_method(
    name: str,
    config: RunConfig,
    out: Path,
    fresh: bool,
    retry_failed: bool,
    prepared: PreparedDataset | None = None,
) -> PlannedRun:
    """Whether ``config`` reuses, resumes or starts a run under ``out``, and how much it has
    to segment of the ``prepared`` data; a run of the same configuration made by another method
    or harness version, or any with ``fresh``, is not continued (:func:`bench`)."""
    method_dir = out / safe_name(config.dataset) / safe_name(name)
    speed = segment_s_per_vertebra(method_dir)
    previous = find_resumable(method_dir, config.digest)
    if previous is not None and (fresh or made_otherwise(previous, load_method(name).version)):
        previous = None
    if previous is None:
        left = left_to_segment(None, prepared, config.split, retry_failed)
        return PlannedRun(name, "run", config, None, speed, to_segment=left)
    if read_finished(previous) and not (retry_failed and has_failures(previous)):
        return PlannedRun(name, "reuse", config, previous, speed, to_segment=0)
    left = left_to_segment(previous, prepared, config.split, retry_failed)
    return PlannedRun(name, "resume", config, previous, speed, to_segment=left)


def shared_data(config: RunConfig) -> PreparedDataset | None:
    """The data of ``config``, prepared once for every method of a bench; ``None`` when it
    cannot be prepared (each run then prepares it again and records why it fails)."""
    try:
        return prepare_dataset(config)[1]
    except Exception:  # recorded as each method's failure when the bench reaches it
        return None


def bench_plan(
    dataset: str,
    out: Path,
    methods: list[str] | None = None,
    root: str | None = None,
    seed: int = 0,
    dataset_options: dict[str, Any] | None = None,
    fresh: bool = False,
    device: str | None = None,
    retry_failed: bool = True,
    slices: int = 1,
    slice_step: int = SLICE_STEP,
    prepared: PreparedDataset | None = None,
) -> list[PlannedRun]:
    """The methods a :func:`bench` with these arguments runs, in its order (``methods`` as
    given, else :func:`default_methods`), each with its :class:`PlannedRun` (counting the
    vertebrae left to segment of the ``prepared`` data)."""
    names = methods or default_methods()
    check_names(names)
    planned = []
    for name in names:
        try:
            config = RunConfig(name, dataset, seed=seed, root=root,
                               params=device_params(name, device),
                               dataset_options=dict(dataset_options or {}),
                               slices=slices, slice_step=slice_step)  # fmt: skip
            planned.append(plan_method(name, config, out, fresh, retry_failed, prepared))
        except Exception as exc:  # recorded as this method's failure when the bench reaches it
            planned.append(PlannedRun(name, "fail", error=exc))
    return planned


def ok_outcome(run_dir: Path) -> dict[str, Any]:
    """The bench record of a method whose run finished in ``run_dir``."""
    return {"status": "ok", "reason": "", "run_dir": str(run_dir), **vertebra_counts(run_dir)}


def error_outcome(exc: Exception) -> dict[str, Any]:
    """The bench record of a method stopped by ``exc``: ``not run`` when its weights were not
    supplied, else ``failed`` with the error."""
    if isinstance(exc, WeightsNotSuppliedError):
        return {"status": "not run", "reason": "weights not supplied", "detail": str(exc),
                "run_dir": ""}  # fmt: skip
    return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "run_dir": ""}


def bench(
    dataset: str,
    out: Path,
    methods: list[str] | None = None,
    root: str | None = None,
    seed: int = 0,
    on_method: Callable[[str, RunConfig], Callable[[int, int, str], None] | None] | None = None,
    dataset_options: dict[str, Any] | None = None,
    fresh: bool = False,
    device: str | None = None,
    timeout_s: float | None = None,
    retry_failed: bool = True,
    on_plan: Callable[[list[PlannedRun]], None] | None = None,
    slices: int = 1,
    slice_step: int = SLICE_STEP,
    workers: int = 1,
    scheduler: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every registered method (or ``methods``; :func:`default_methods`) on ``dataset``;
    record each outcome.

    ``on_plan`` receives the :func:`bench_plan` before anything runs. ``device`` is given as
    the ``device`` parameter to every method whose constructor takes one
    (:func:`device_params`); the others run as they always do. The data is prepared once for
    all methods.

    A method whose finished run of the same configuration, method version and harness version
    (:data:`wsbench.harness.runner.HARNESS_VERSION`) exists is not run again; an unfinished one is
    resumed; one made by another version is run afresh. ``fresh`` runs every method afresh
    regardless; earlier run directories are left in place. A failing method is recorded with
    its error and the bench goes on; one whose weights are not supplied is recorded as not run.
    ``timeout_s`` and ``retry_failed`` are given to every :func:`~wsbench.harness.runner.run`,
    ``slices`` and ``slice_step`` (k-slice evaluation) to every configuration;
    a finished run with failed or timed-out vertebrae is resumed to retry them when
    ``retry_failed``. An ``ok`` outcome counts its failed, timed-out and refused vertebrae.
    With ``workers`` above 1 or a ``scheduler`` address, the methods run on Dask workers
    (:mod:`wsbench.harness.distributed`) with the same results; otherwise one after another in
    this process.
    The record ``<out>/<dataset>/bench.json`` is updated after every method (outcomes of methods
    not in this bench are kept). Returns this bench's outcomes, in the plan's order.
    """
    names = methods or default_methods()
    check_names(names)
    data = RunConfig("", dataset, seed=seed, root=root,
                     dataset_options=dict(dataset_options or {}), slices=slices,
                     slice_step=slice_step)  # fmt: skip
    with dask_pool(workers, scheduler) as client:
        prepared = shared_data(data)
        planned = bench_plan(dataset, out, names, root, seed, dataset_options, fresh, device,
                             retry_failed, slices, slice_step, prepared)  # fmt: skip
        if on_plan is not None:
            on_plan(planned)
        record_path = out / safe_name(dataset) / "bench.json"
        record_path.parent.mkdir(parents=True, exist_ok=True)
        earlier = json.loads(record_path.read_text())["methods"] if record_path.exists() else {}
        outcomes: dict[str, dict[str, Any]] = {}

        def record(name: str, outcome: dict[str, Any]) -> None:
            outcomes[name] = outcome
            ordered = {item.method: outcomes[item.method] for item in planned
                       if item.method in outcomes}  # fmt: skip
            record_path.write_text(json.dumps({"dataset": dataset,
                                               "methods": {**earlier, **ordered}},
                                              indent=2))  # fmt: skip

        def finished(name: str, result: RunResult | Exception) -> None:
            if isinstance(result, Exception):
                record(name, error_outcome(result))
            else:
                record(name, ok_outcome(result.run_dir))

        to_run = []
        for item in planned:
            if item.error is not None or item.config is None:
                error = item.error or RunError(f"method {item.method!r} has no config")
                finished(item.method, error)
            elif item.action == "reuse" and item.previous is not None:
                record(item.method, ok_outcome(item.previous))
            else:
                to_run.append(item)
        if client is not None:
            runs = [MethodRun(item.method, item.config, item.previous is not None,
                              on_method(item.method, item.config) if on_method else None)
                    for item in to_run if item.config is not None]  # fmt: skip
            run_methods(client, runs, out, finished, timeout_s, retry_failed, prepared=prepared)
            return {item.method: outcomes[item.method] for item in planned}
    for item in to_run:
        assert item.config is not None
        try:
            progress = on_method(item.method, item.config) if on_method else None
            result = run(item.config, out, resume=item.previous is not None, progress=progress,
                         timeout_s=timeout_s, retry_failed=retry_failed,
                         prepared=prepared)  # fmt: skip
        except Exception as exc:  # one failing method must not stop the bench
            result = exc
        finished(item.method, result)
    return outcomes
