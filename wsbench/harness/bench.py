"""Run several methods on one dataset, one after another, surviving failures and restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from wsbench.contract import WeightsNotSuppliedError
from wsbench.harness.evaluation import FAILED_STATUSES
from wsbench.harness.registry import METHODS_GROUP, declared, load_method
from wsbench.harness.rundir import RunError, find_resumable, read_finished, safe_name
from wsbench.harness.runner import RunConfig, made_otherwise, run


def device_params(method: str, device: str | None) -> dict[str, str]:
    """``{"device": device}`` when ``device`` is given and ``method``'s constructor takes a
    ``device`` parameter; ``{}`` otherwise."""
    if device is None:
        return {}
    return {"device": device} if "device" in load_method(method).parameters() else {}


def default_methods() -> list[str]:
    """The registered methods a bench runs when none are named: all but those declaring
    ``bench = False``; a plugin that cannot be loaded stays in, so that its failure is recorded."""
    names = []
    for name in declared(METHODS_GROUP):
        try:
            if not load_method(name).bench:
                continue
        except Exception:  # recorded as this method's failure when the bench reaches it
            pass
        names.append(name)
    return names


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
) -> dict[str, dict[str, Any]]:
    """Run every registered method (or ``methods``; :func:`default_methods`) on ``dataset``;
    record each outcome.

    ``device`` is given as the ``device`` parameter to every method whose constructor takes one
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
    names = methods or default_methods()
    check_names(names)
    record_path = out / safe_name(dataset) / "bench.json"
    record_path.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(record_path.read_text())["methods"] if record_path.exists() else {}
    outcomes: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            config = RunConfig(name, dataset, seed=seed, root=root,
                               params=device_params(name, device),
                               dataset_options=dict(dataset_options or {}))  # fmt: skip
            progress = on_method(name, config) if on_method else None
            previous = find_resumable(out / safe_name(dataset) / safe_name(name), config.digest)
            if previous is not None and (
                fresh or made_otherwise(previous, load_method(name).version)
            ):
                previous = None
            finished = previous is not None and read_finished(previous)
            if finished and not (retry_failed and has_failures(previous)):
                run_dir = previous
            else:
                run_dir = run(config, out, resume=previous is not None, progress=progress,
                              timeout_s=timeout_s, retry_failed=retry_failed).run_dir  # fmt: skip
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
