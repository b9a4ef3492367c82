"""Run one method on one dataset split and write its run directory
(:mod:`wsbench.harness.rundir`)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsbench.contract import (
    BLASTIC,
    LYTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Scope,
    Segmentation,
    Split,
    TrainingSet,
    TrainOptions,
    patient_hints,
)
from wsbench.files import digest, write_csv, write_json
from wsbench.harness.evaluation import (
    FAILED_STATUSES,
    REFUSED,
    category_of,
    evaluate_case,
    vertebra_level_case,
)
from wsbench.harness.postprocess import postprocess
from wsbench.harness.provenance import git_commit, git_dirty, package_versions, torch_threads
from wsbench.harness.registry import load_dataset, load_method
from wsbench.harness.rundir import (
    RunError,
    TornRecord,
    case_path,
    ensure_writable,
    find_resumable,
    mask_path,
    read_case,
    read_manifest,
    safe_name,
    save_masks,
    write_case,
)
from wsbench.harness.worker import Outcome, TimedCalls
from wsbench.models.store import cache_root

HARNESS_VERSION = "2"
"""Version of what the harness does around a method: the sample it is given (crop, slices,
hint), the post-processing and the scoring. Bump it with any change to those, so that
``wsbench bench`` runs every method again instead of reusing runs made the old way. Manifests
written before it existed count as ``"1"`` (the harness of 2026-11-26, patient-level hints);
``"2"`` scores failed and timed-out vertebrae as empty answers and records refusals."""


@dataclass
class RunConfig:
    """What identifies a run: same config and seed give the same numbers."""

    method: str
    dataset: str
    split: str = Split.TEST.value
    seed: int = 0
    root: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Short hash of the config, the suffix of its run ids."""
        return digest(asdict(self), length=8)


@dataclass
class RunResult:
    """Where a finished run lives and its per-vertebra table."""

    run_dir: Path
    cases: pd.DataFrame
    lesion_metrics: bool


def label_foreground(binary: np.ndarray, phenotype: Phenotype | None) -> np.ndarray:
    """Label a phenotype-blind method's foreground by the vertebra's phenotype (mixed or none →
    lytic), so that it is scored as the foreground it is; the method never sees this phenotype.

    Mixed and healthy vertebrae are scored on the binary union, so the label chosen for them
    does not change any metric.
    """
    value = BLASTIC if phenotype == Phenotype.BLASTIC else LYTIC
    return np.where(binary > 0, value, 0).astype(np.uint8)


def validate_output(method: Method, output: object, shape: tuple[int, ...]) -> Segmentation:
    """The method's answer as a :class:`Segmentation`, or ValueError saying what is wrong."""
    seg = output if isinstance(output, Segmentation) else Segmentation(labels=output)  # type: ignore[arg-type]
    labels = seg.labels
    if not isinstance(labels, np.ndarray):
        raise ValueError(f"returned {type(labels).__name__}, expected a numpy uint8 label map")
    if labels.shape != shape:
        raise ValueError(f"returned a label map of shape {labels.shape}, expected {shape}")
    if labels.dtype != np.uint8:
        raise ValueError(f"returned dtype {labels.dtype}, expected uint8")
    allowed = {0, 1, 2} if method.distinguishes_phenotype else {0, 1}
    extra = set(np.unique(labels).tolist()) - allowed
    if extra:
        raise ValueError(f"returned label values {sorted(extra)}, allowed {sorted(allowed)}")
    if not isinstance(seg.refusal, str):
        raise ValueError(f"returned a refusal of type {type(seg.refusal).__name__}, expected str")
    for name in ("scores", "candidates"):
        value = getattr(seg, name)
        if value is not None and np.shape(value) != shape:
            raise ValueError(f"returned a {name} map of shape {np.shape(value)}, expected {shape}")
    return seg


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (when installed) torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def vertebra_seed(seed: int, vertebra_id: str) -> int:
    """Per-vertebra seed, independent of order, so a resumed run gives the same numbers."""
    return int(digest([seed, vertebra_id], length=8), 16)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 3)


def segment_vertebra(
    method: Method, vertebra: PreparedVertebra, hint: Phenotype | None
) -> tuple[Segmentation, np.ndarray]:
    """The method's validated answer, given the patient-level phenotype ``hint``, with
    post-processed labels, and its raw label map. The method gets copies of the arrays, so
    nothing it does to them reaches the evaluation."""
    sample = vertebra.sample(hint).copy()
    output = method.segment(sample)
    seg = validate_output(method, output, sample.image.shape)
    raw = seg.labels
    if not method.distinguishes_phenotype:
        raw = label_foreground(raw, vertebra.phenotype)
    seg.labels = postprocess(raw, sample.body_mask)
    return seg, raw


def case_record(
    vertebra: PreparedVertebra, labels: np.ndarray, lesion_metrics: bool, status: str, reason: str
) -> dict[str, Any]:
    """One ``cases.csv`` row: ids, labels, category, status with its reason, and the counts and
    metrics of the post-processed ``labels``."""
    key = vertebra.key
    record: dict[str, Any] = {
        "vertebra": key.id,
        "dataset": key.dataset,
        "subject": key.subject,
        "session": key.session,
        "level": key.level,
        "label": vertebra.label.value if vertebra.label else "",
        "phenotype": vertebra.phenotype.value if vertebra.phenotype else "",
        "category": category_of(vertebra.label, vertebra.phenotype) or "",
        "status": status,
        "reason": reason,
    }
    if lesion_metrics and vertebra.reference is not None and record["category"]:
        record.update(
            evaluate_case(labels, vertebra.reference, record["category"], vertebra.spacing)
        )
    else:
        record.update(vertebra_level_case(labels, vertebra.spacing))
    return record


def lesion_rows(vertebra: PreparedVertebra, seg: Segmentation) -> list[dict[str, Any]]:
    """Per-candidate rows (label, size, score, kept, extras) of one vertebra.

    With a candidate map and a reference, ``overlaps_reference`` says whether the candidate
    touches a reference lesion of its own label (blastic/lytic) — its true-positive status.
    """
    reference = vertebra.reference
    rows = []
    for index, lesion in enumerate(seg.lesions):
        row = {"vertebra": vertebra.key.id, "candidate": index, **asdict(lesion)}
        row.update(row.pop("extra"))
        if seg.candidates is not None and reference is not None:
            pixels = np.asarray(seg.candidates) == index + 1
            row["overlaps_reference"] = bool((reference[pixels] == lesion.label).any())
        rows.append(row)
    return rows


def answer_vertebra(
    method: Method, vertebra: PreparedVertebra, seed: int, hint: Phenotype | None
) -> tuple[Segmentation, np.ndarray]:
    """:func:`segment_vertebra` with the per-vertebra seed (:func:`vertebra_seed`) set first."""
    seed_everything(vertebra_seed(seed, vertebra.key.id))
    return segment_vertebra(method, vertebra, hint)


def store_vertebra(
    run_dir: Path,
    vertebra: PreparedVertebra,
    outcome: Outcome[tuple[Segmentation, np.ndarray]],
    lesion_metrics: bool,
) -> dict[str, Any]:
    """Evaluate and store one vertebra's outcome; a failure or timeout is scored as an empty
    answer and stores no masks."""
    if outcome.answer is None:
        labels = np.zeros(vertebra.sample().image.shape, np.uint8)
        case = case_record(vertebra, labels, lesion_metrics, outcome.status, outcome.reason)
        record = {"case": case, "lesions": [], "geometry": dict(vertebra.geometry)}
    else:
        seg, raw = outcome.answer
        status, reason = (REFUSED, f"refused: {seg.refusal}") if seg.refusal else ("ok", "")
        case = case_record(vertebra, seg.labels, lesion_metrics, status, reason)
        save_masks(mask_path(run_dir, vertebra.key.id), seg, raw, vertebra)
        record = {"case": case, "lesions": lesion_rows(vertebra, seg),
                  "geometry": dict(vertebra.geometry)}  # fmt: skip
    write_case(run_dir, vertebra.key.id, record)
    return record


def finished_record(
    run_dir: Path, vertebra_id: str, retry: bool, notify: Callable[[str], None]
) -> dict[str, Any] | None:
    """The stored record of a vertebra a resumed run keeps; ``None`` when there is none, when
    it is torn (``notify`` says so, naming the file) or, with ``retry``, when it failed or timed
    out."""
    path = case_path(run_dir, vertebra_id)
    if not path.exists():
        return None
    try:
        record = read_case(path)
    except TornRecord as exc:
        notify(f"{exc}; computing {vertebra_id} again")
        return None
    if retry and record["case"].get("status") in FAILED_STATUSES:
        return None
    return record


def workdir(method_cls: type[Method]) -> Path:
    """The per-method scratch folder handed to ``fit`` and ``train``."""
    return cache_root() / "work" / safe_name(method_cls.name or method_cls.__name__)


def train_method(
    method: Method, training: TrainingSet, options: TrainOptions, settings: dict[str, Any]
) -> list[Path]:
    """Seed everything with ``options.seed`` and run the method's :meth:`Method.train`."""
    seed_everything(options.seed)
    return method.train(training, options, **settings)


def prepare_dataset(config: RunConfig) -> tuple[DatasetAdapter, PreparedDataset]:
    """Instantiate the dataset adapter and prepare the data."""
    adapter_cls = load_dataset(config.dataset)
    if adapter_cls.needs_root and config.root is None:
        raise RunError(adapter_cls.missing_root(config.dataset))
    root = Path(config.root).expanduser() if config.root else None
    adapter = adapter_cls(root=root, cache_dir=cache_root() / "prepared", **config.dataset_options)
    return adapter, adapter.prepare()


def refuse_faulty(name: str, dataset: PreparedDataset) -> None:
    """RunError when the dataset holds a dataset-level fault (:attr:`Scope.DATASET`: its labels
    are unusable as a whole, say): its numbers would mean nothing."""
    faults = [s for s in dataset.skipped if s.scope == Scope.DATASET]
    files = [s for s in dataset.skipped if s.scope == Scope.FILE]
    if faults:
        first = faults[0]
        more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
        lost = f"; {len(files)} unusable file(s), first: {files[0].reason}" if files else ""
        raise RunError(
            f"dataset {name!r} cannot be evaluated: {first.where}: {first.reason}{more}{lost}; "
            "`wsbench datasets check` lists every problem"
        )


def made_otherwise(run_dir: Path, version: str, fingerprint: str | None = None) -> str | None:
    """Why ``run_dir`` was not made by method ``version`` and this :data:`HARNESS_VERSION` on
    data ``fingerprint`` (``None`` when it was, or when the fingerprint is not given and both
    versions match)."""
    if not (run_dir / "manifest.json").exists():
        return None
    record = read_manifest(run_dir)
    made = record.get("method", {}).get("version")
    if made != version:
        return f"it was made by method version {made!r}, the installed one is {version!r}"
    harness = record.get("harness_version", "1")
    if harness != HARNESS_VERSION:
        return f"it was made by harness version {harness!r}, this one is {HARNESS_VERSION!r}"
    data = record.get("dataset", {}).get("fingerprint")
    if fingerprint is not None and data != fingerprint:
        return f"its data fingerprint {data} differs from the dataset's now ({fingerprint})"
    return None


def start_run_dir(
    out: Path, config: RunConfig, resume: bool, version: str, fingerprint: str
) -> Path:
    """The run directory: the newest matching one with ``resume``, else a new one.

    A run made by another method version or on other data is not resumed (its finished
    vertebrae would be mixed with new ones): that is an error.
    """
    method_dir = out / safe_name(config.dataset) / safe_name(config.method)
    ensure_writable(method_dir)
    if resume:
        previous = find_resumable(method_dir, config.digest)
        if previous is None:
            raise RunError(
                f"nothing to resume under {method_dir} for this configuration; "
                "run again without --resume"
            )
        why = made_otherwise(previous, version, fingerprint)
        if why is not None:
            raise RunError(f"cannot resume {previous}: {why}; run again without --resume")
        return previous
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    run_dir = method_dir / f"{stamp}-{config.digest}"
    run_dir.mkdir()
    return run_dir


def default_notify(message: str) -> None:
    """Print a warning of the run to standard error."""
    print(f"warning: {message}", file=sys.stderr)


def time_limit(method_cls: type[Method], timeout_s: float | None) -> float | None:
    """The per-vertebra time limit in seconds: ``timeout_s`` when given (0 = none), else the
    method's :attr:`Method.timeout_s`; ``None`` means no limit."""
    limit = method_cls.timeout_s if timeout_s is None else timeout_s
    if limit < 0:
        raise RunError(f"time limit {limit} s is negative; give seconds, or 0 for no limit")
    return float(limit) or None


def run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    timeout_s: float | None = None,
    retry_failed: bool = True,
    notify: Callable[[str], None] = default_notify,
) -> RunResult:
    """Run ``config`` and write its run directory under ``out``; see the module docstring.

    Each vertebra gets at most ``timeout_s`` seconds (:func:`time_limit`). With ``resume``, the
    vertebrae an earlier attempt finished are kept, except failed and timed-out ones when
    ``retry_failed``; ``notify`` receives warnings (torn records, an unenforced time limit).
    """
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc).isoformat()
    ensure_writable(out)
    method_cls = load_method(config.method)
    limit = time_limit(method_cls, timeout_s)
    with timed(timings, "prepare"):
        _, dataset = prepare_dataset(config)
    refuse_faulty(config.dataset, dataset)
    run_dir = start_run_dir(out, config, resume, method_cls.version, dataset.fingerprint)
    (run_dir / "masks").mkdir(exist_ok=True)
    (run_dir / "cases").mkdir(exist_ok=True)
    vertebrae = dataset.split(Split(config.split))
    if not vertebrae:
        raise RunError(
            f"dataset {config.dataset!r} has no vertebrae in split {config.split!r} "
            f"({len(dataset.vertebrae)} prepared, {len(dataset.skipped)} skipped: "
            "`wsbench datasets check` lists why)"
        )
    manifest = {
        "method": {
            "name": config.method,
            "class": f"{method_cls.__module__}:{method_cls.__name__}",
            "version": method_cls.version,
            "params": config.params,  # all of them, defaults included, once it is built (below)
            "models": {},
        },
        "dataset": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "root": config.root,
            "options": config.dataset_options,
            "lesion_metrics": dataset.lesion_metrics,
            "n_vertebrae": len(dataset.vertebrae),
        },
        "split": config.split,
        "seed": config.seed,
        "config_digest": config.digest,
        "config": asdict(config),
        "packages": package_versions(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "harness_version": HARNESS_VERSION,
        "torch_threads": torch_threads(),
        "timeout_s": limit,
        "started": started,
        "resumed": resume,
        "finished": None,
        "skipped": [asdict(s) for s in dataset.skipped],
        "warnings": [],
    }

    def warn(message: str) -> None:
        manifest["warnings"].append(message)
        notify(message)

    write_json(run_dir / "manifest.json", manifest)
    hints = patient_hints(dataset.vertebrae)

    built: dict[str, Method] = {}

    def prepare() -> dict[str, Any]:
        method = built["method"] = method_cls(**config.params)
        if method.learns():
            seed_everything(config.seed)
            method.fit(dataset.training_set(), workdir(method_cls))
        return {"params": method.params(), "models": method.models()}

    def answer(index: int) -> tuple[Segmentation, np.ndarray]:
        vertebra = vertebrae[index]
        return answer_vertebra(built["method"], vertebra, config.seed,
                               hints[vertebra.key.patient])  # fmt: skip

    records = []
    with TimedCalls(prepare, answer, limit) as calls:
        if calls.unenforced:
            warn(f"the time limit of {limit:g} s is not enforced: {calls.unenforced}")
        with timed(timings, "fit"):
            manifest["method"].update(calls.prepared())
        write_json(run_dir / "manifest.json", manifest)
        with timed(timings, "segment"):
            for index, vertebra in enumerate(vertebrae):
                record = finished_record(run_dir, vertebra.key.id, retry_failed, warn)
                if record is None:
                    outcome = calls(index)
                    record = store_vertebra(run_dir, vertebra, outcome, dataset.lesion_metrics)
                records.append(record)
                if progress is not None:
                    progress(index + 1, len(vertebrae), vertebra.key.id)
    cases = pd.DataFrame([r["case"] for r in records]).sort_values("vertebra")
    write_csv(run_dir / "cases.csv", cases)
    write_csv(run_dir / "lesions.csv", pd.DataFrame([row for r in records for row in r["lesions"]]))
    for key, statuses in (("failed", FAILED_STATUSES), ("refused", (REFUSED,))):
        rows = cases[cases["status"].isin(statuses)]
        manifest[key] = rows[["vertebra", "status", "reason"]].to_dict("records")
    manifest["timings_s"] = timings
    manifest["finished"] = datetime.now(timezone.utc).isoformat()
    write_json(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, cases, dataset.lesion_metrics)
