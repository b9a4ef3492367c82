"""Run several methods on one dataset, one after another, surviving failures and restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from wsbench.contract import WeightsNotSuppliedError
from wsbench.harness.evaluation import FAILED_STATUSES
from wsbench.harness.registry import METHODS_GROUP, declared, load_method
from wsbench.harness.rundir import (
    RunError,
    find_resumable,
    read_finished,
    read_manifest,
    safe_name,
)
from wsbench.harness.runner import RunConfig, made_otherwise, run


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
    (a finished run), ``resume``, ``run`` or ``fail`` (with the ``error`` it will record)."""

    method: str
    action: str
    config: RunConfig | None = None
    previous: Path | None = None
    last_segment_s: float | None = None
    error: Exception | None = None


def last_segment_s(method_dir: Path) -> float | None:
    """Seconds the newest finished run under ``method_dir`` spent segmenting (its manifest's
    ``timings_s``), or ``None`` when there is none."""
    runs = sorted(method_dir.iterdir(), reverse=True) if method_dir.is_dir() else []
    for run_dir in runs:
        try:
            if read_finished(run_dir):
                return read_manifest(run_dir).get("timings_s", {}).get("segment")
        except RunError:  # a torn manifest tells nothing of the duration
            continue
    return None


def plan_method(
    name: str, config: RunConfig, out: Path, fresh: bool, retry_failed: bool
) -> PlannedRun:
    """Whether ``config`` reuses, resumes or starts a run under ``out``; a run of the same
    configuration made by another method or harness version, or any with ``fresh``, is not
    continued (:func:`bench`)."""
    method_dir = out / safe_name(config.dataset) / safe_name(name)
    duration = last_segment_s(method_dir)
    previous = find_resumable(method_dir, config.digest)
    if previous is not None and (fresh or made_otherwise(previous, load_method(name).version)):
        previous = None
    if previous is None:
        return PlannedRun(name, "run", config, None, duration)
    reuse = read_finished(previous) and not (retry_failed and has_failures(previous))
    return PlannedRun(name, "reuse" if reuse else "resume", config, previous, duration)


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
) -> list[PlannedRun]:
    """The methods a :func:`bench` with these arguments runs, in its order (``methods`` as
    given, else :func:`default_methods`), each with its :class:`PlannedRun`."""
    names = methods or default_methods()
    check_names(names)
    planned = []
    for name in names:
        try:
            config = RunConfig(name, dataset, seed=seed, root=root,
                               params=device_params(name, device),
                               dataset_options=dict(dataset_options or {}))  # fmt: skip
            planned.append(plan_method(name, config, out, fresh, retry_failed))
        except Exception as exc:  # recorded as this method's failure when the bench reaches it
            planned.append(PlannedRun(name, "fail", error=exc))
    return planned


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
) -> dict[str, dict[str, Any]]:
    """Run every registered method (or ``methods``; :func:`default_methods`) on ``dataset``;
    record each outcome.

    ``on_plan`` receives the :func:`bench_plan` before anything runs. ``device`` is given as
    the ``device`` parameter to every method whose constructor takes one
    (:func:`device_params`); the others run as they always do.

    A method whose finished run of the same configuration, method version and harness version
    (:data:`wsbench.harness.runner.HARNESS_VERSION`) exists is not run again; an unfinished one is
    resumed; one made by another version is run afresh. ``fresh`` runs every method afresh
    regardless; earlier run directories are left in place. A failing method is recorded with
    its error and the bench goes on; one whose weights are not supplied is recorded as not run.
    ``timeout_s`` and ``retry_failed`` are given to every :func:`~wsbench.harness.runner.run`;
    a finished run with failed or timed-out vertebrae is resumed to retry them when
    ``retry_failed``. An ``ok`` outcome counts its failed, timed-out and refused vertebrae.
    The record ``<out>/<dataset>/bench.json`` is updated after every method (outcomes of methods
    not in this bench are kept). Returns this bench's outcomes.
    """
    planned = bench_plan(dataset, out, methods, root, seed, dataset_options, fresh, device,
                         retry_failed)  # fmt: skip
    if on_plan is not None:
        on_plan(planned)
    record_path = out / safe_name(dataset) / "bench.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(record_path.read_text())["methods"] if record_path.exists() else {}
    outcomes: dict[str, dict[str, Any]] = {}
    for item in planned:
        name = item.method
        try:
            if item.error is not None or item.config is None:
                raise item.error or RunError(f"method {name!r} has no configuration")
            progress = on_method(name, item.config) if on_method else None
            if item.action == "reuse" and item.previous is not None:
                run_dir = item.previous
            else:
                run_dir = run(item.config, out, resume=item.previous is not None,
                              progress=progress, timeout_s=timeout_s,
                              retry_failed=retry_failed).run_dir  # fmt: skip
            outcomes[name] = {"status": "ok", "reason": "", "run_dir": str(run_dir),
                              **vertebra_counts(run_dir)}  # fmt: skip
        except WeightsNotSuppliedError as exc:
            outcomes[name] = {"status": "not run", "reason": "weights not supplied",
                              "detail": str(exc), "run_dir": ""}  # fmt: skip
        except Exception as exc:  # one failing method must not stop the bench
            outcomes[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}",
                              "run_dir": ""}  # fmt: skip
        record = {"dataset": dataset, "methods": {**earlier, **outcomes}}
        record_path.write_text(json.dumps(record, indent=2))
    return outcomes
