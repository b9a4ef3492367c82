"""Run one method on one dataset split and write its run directory
(:mod:`wsbench.harness.rundir`)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsbench.contract import (
    BLASTIC,
    LYTIC,
    SLICE_STEP,
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
    as_slab,
    central_slices_needed,
    patient_hints,
    slice_offsets,
)
from wsbench.data.preprocess import PreprocessParams
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
from wsbench.harness.worker import OK, Outcome, TimedCalls
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
    slices: int = 1
    """Sagittal slices evaluated per vertebra: 1 (the paper's mid-sagittal slice) or an odd K,
    the centre and pairs ``slice_step`` apart either side (:func:`slice_offsets`)."""
    slice_step: int = SLICE_STEP

    @property
    def offsets(self) -> list[int]:
        """The evaluated slices' offsets from the mid-sagittal slice."""
        return slice_offsets(self.slices, self.slice_step)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the manifest's ``config``); the slice fields only for a k-slice
        evaluation, so that a single-slice run is recorded and identified as always."""
        record = asdict(self)
        if self.slices == 1:
            del record["slices"], record["slice_step"]
        return record

    @property
    def digest(self) -> str:
        """Short hash of the config, the suffix of its run ids."""
        return digest(self.as_dict(), length=8)


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
    method: Method, vertebra: PreparedVertebra, hint: Phenotype | None, offset: int = 0
) -> tuple[Segmentation, np.ndarray]:
    """The method's validated answer on the slice ``offset`` slices from the mid-sagittal one,
    given the patient-level phenotype ``hint``, with post-processed labels, and its raw label
    map. The method gets copies of the arrays, so nothing it does to them reaches the
    evaluation."""
    sample = vertebra.sample(hint, offset).copy()
    output = method.segment(sample)
    seg = validate_output(method, output, sample.image.shape)
    raw = seg.labels
    if not method.distinguishes_phenotype:
        raw = label_foreground(raw, vertebra.phenotype)
    seg.labels = postprocess(raw, sample.body_mask)
    return seg, raw


def slab_spacing(vertebra: PreparedVertebra, offsets: list[int]) -> tuple[float, ...]:
    """Voxel size in mm of the evaluated slices: the slice's pixel size, with the distance
    between evaluated slices first for a slab."""
    if len(offsets) == 1:
        return vertebra.spacing
    return (vertebra.slice_spacing * (offsets[1] - offsets[0]), *vertebra.spacing)


def scores_of(
    vertebra: PreparedVertebra, labels: np.ndarray, lesion_metrics: bool, offsets: list[int]
) -> dict[str, Any]:
    """Counts and metrics of the post-processed ``labels`` of the slices at ``offsets``: lesion
    metrics against the reference where it is known and the vertebra has a category, else the
    vertebra-level counts."""
    category = category_of(vertebra.label, vertebra.phenotype)
    spacing = slab_spacing(vertebra, offsets)
    reference = vertebra.reference_slab(offsets)
    if lesion_metrics and reference is not None and category:
        return evaluate_case(labels, reference, category, spacing)
    return vertebra_level_case(labels, spacing)


def case_record(
    vertebra: PreparedVertebra,
    labels: np.ndarray,
    lesion_metrics: bool,
    status: str,
    reason: str,
    offsets: list[int] | None = None,
) -> dict[str, Any]:
    """One ``cases.csv`` row: ids, labels, category, status with its reason, and the counts and
    metrics of the post-processed ``labels`` of the slices at ``offsets`` (default: the
    mid-sagittal one). A k-slice row adds the centre slice's own figures, computed from the same
    answers, as ``centre_<column>``."""
    offsets = offsets or [0]
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
    record.update(scores_of(vertebra, labels, lesion_metrics, offsets))
    if len(offsets) > 1:
        centre = labels[offsets.index(0)]
        found = scores_of(vertebra, centre, lesion_metrics, [0])
        record.update({f"centre_{name}": value for name, value in found.items()})
    return record


def lesion_rows(
    vertebra: PreparedVertebra, seg: Segmentation, offset: int | None = None
) -> list[dict[str, Any]]:
    """Per-candidate rows (label, size, score, kept, extras) of one vertebra's slice; a k-slice
    evaluation gives the slice's ``offset``, recorded in a ``slice`` column.

    With a candidate map and a reference, ``overlaps_reference`` says whether the candidate
    touches a reference lesion of its own label (blastic/lytic) in its slice — its
    true-positive status.
    """
    reference = vertebra.reference_slab([offset or 0])
    where = {} if offset is None else {"slice": offset}
    rows = []
    for index, lesion in enumerate(seg.lesions):
        row = {"vertebra": vertebra.key.id, **where, "candidate": index, **asdict(lesion)}
        row.update(row.pop("extra"))
        if seg.candidates is not None and reference is not None:
            pixels = np.asarray(seg.candidates) == index + 1
            row["overlaps_reference"] = bool((reference[pixels] == lesion.label).any())
        rows.append(row)
    return rows


def answer_vertebra(
    method: Method, vertebra: PreparedVertebra, seed: int, hint: Phenotype | None, offset: int = 0
) -> tuple[Segmentation, np.ndarray]:
    """:func:`segment_vertebra` on the slice at ``offset`` with its seed set first: the
    per-vertebra seed (:func:`vertebra_seed`) for the mid-sagittal slice, so that its answer is
    the single-slice run's, and one of the vertebra id and the offset for the others."""
    name = vertebra.key.id if offset == 0 else f"{vertebra.key.id}{offset:+d}"
    seed_everything(vertebra_seed(seed, name))
    return segment_vertebra(method, vertebra, hint, offset)


Answers = list[tuple[Segmentation, np.ndarray]]
"""One vertebra's answers, one per evaluated slice, in slab order."""


def answer_slices(
    calls: Callable[[tuple[int, int]], Outcome[tuple[Segmentation, np.ndarray]]],
    index: int,
    vertebra: PreparedVertebra,
    offsets: list[int],
) -> Outcome[Answers]:
    """The answers on the slices at ``offsets`` of ``vertebra`` (number ``index``), each its own
    timed call; the first slice that fails or times out ends the vertebra with that outcome (its
    reason naming the slice in a k-slice evaluation). A slice beside the mid-sagittal one that
    holds no vertebral body (a narrow vertebra's outer slices) is not given to the method: its
    answer is empty, as post-processing would make any answer there."""
    answers = []
    for offset in offsets:
        if offset != 0 and not vertebra.body[vertebra.mid + offset].any():
            empty = np.zeros(vertebra.slices.shape[1:], np.uint8)
            answers.append((Segmentation(labels=empty), empty))
            continue
        outcome = calls((index, offset))
        if outcome.answer is None:
            where = f"slice {offset:+d}: " if len(offsets) > 1 else ""
            return Outcome(outcome.status, reason=where + outcome.reason)
        answers.append(outcome.answer)
    return Outcome(OK, answers)


def refusal_of(segs: list[Segmentation], offsets: list[int]) -> str:
    """Why the method refused (``""`` when it did not): its reason, with the slices it refused
    in a k-slice evaluation."""
    refused = [(offset, seg.refusal) for offset, seg in zip(offsets, segs, strict=True)
               if seg.refusal]  # fmt: skip
    if not refused:
        return ""
    if len(offsets) == 1:
        return f"refused: {refused[0][1]}"
    where = ", ".join(f"{offset:+d}" for offset, _ in refused)
    return f"refused on slice(s) {where}: {refused[0][1]}"


def slab_geometry(vertebra: PreparedVertebra, offsets: list[int]) -> dict[str, Any]:
    """The vertebra's geometry as its record stores it; a k-slice evaluation adds the crop
    slice indices of its slices (``evaluated_slices``), where
    :func:`~wsbench.data.preprocess.mask_to_source` puts them back."""
    geometry = dict(vertebra.geometry)
    if len(offsets) > 1 and "slice_indices" in geometry:
        indices = geometry["slice_indices"]
        geometry["evaluated_slices"] = [indices[vertebra.mid + offset] for offset in offsets]
    return geometry


def store_vertebra(
    run_dir: Path,
    vertebra: PreparedVertebra,
    outcome: Outcome[Answers],
    lesion_metrics: bool,
    offsets: list[int] | None = None,
) -> dict[str, Any]:
    """Evaluate and store one vertebra's outcome on the slices at ``offsets`` (default: the
    mid-sagittal one); a failure or timeout is scored as an empty answer and stores no masks."""
    offsets = offsets or [0]
    geometry = slab_geometry(vertebra, offsets)
    if outcome.answer is None:
        empty = np.zeros(vertebra.slices.shape[1:], np.uint8)
        labels = as_slab([empty] * len(offsets))
        case = case_record(vertebra, labels, lesion_metrics, outcome.status, outcome.reason,
                           offsets)  # fmt: skip
        record = {"case": case, "lesions": [], "geometry": geometry}
    else:
        segs = [seg for seg, _ in outcome.answer]
        reason = refusal_of(segs, offsets)
        status = REFUSED if reason else "ok"
        labels = as_slab([seg.labels for seg in segs])
        case = case_record(vertebra, labels, lesion_metrics, status, reason, offsets)
        save_masks(mask_path(run_dir, vertebra.key.id), outcome.answer, vertebra, offsets)
        slab = len(offsets) > 1
        lesions = [row for offset, seg in zip(offsets, segs, strict=True)
                   for row in lesion_rows(vertebra, seg, offset if slab else None)]  # fmt: skip
        record = {"case": case, "lesions": lesions, "geometry": geometry}
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


def slab_options(adapter_cls: type[DatasetAdapter], config: RunConfig) -> dict[str, Any]:
    """The adapter options that prepare the central slices a k-slice evaluation needs
    (:func:`central_slices_needed`): its preprocessing ``params`` with that ``n_slices``; none
    for the single slice, which is prepared as always."""
    if config.slices == 1:
        return {}
    needed = central_slices_needed(config.slices, config.slice_step)
    if "params" not in adapter_cls.library_options:
        raise RunError(
            f"dataset {config.dataset!r} cannot prepare the {needed} central slices that "
            f"--slices {config.slices} --slice-step {config.slice_step} needs (its adapter takes "
            "no preprocessing params); run it with --slices 1"
        )
    given = config.dataset_options.get("params") or PreprocessParams()
    try:
        return {"params": replace(given, n_slices=needed)}
    except ValueError as exc:
        raise RunError(
            f"--slices {config.slices} --slice-step {config.slice_step} spans {needed} central "
            f"slices: {exc}"
        ) from None


def prepare_dataset(config: RunConfig) -> tuple[DatasetAdapter, PreparedDataset]:
    """Instantiate the dataset adapter and prepare the data (with the central slices a k-slice
    evaluation needs: :func:`slab_options`)."""
    adapter_cls = load_dataset(config.dataset)
    if adapter_cls.needs_root and config.root is None:
        raise RunError(adapter_cls.missing_root(config.dataset))
    root = Path(config.root).expanduser() if config.root else None
    options = {**config.dataset_options, **slab_options(adapter_cls, config)}
    adapter = adapter_cls(root=root, cache_dir=cache_root() / "prepared", **options)
    return adapter, adapter.prepare()


def check_slab(config: RunConfig, vertebrae: list[PreparedVertebra]) -> None:
    """RunError naming the first vertebra without the central slices a k-slice evaluation
    needs."""
    if config.slices == 1:
        return
    needed = central_slices_needed(config.slices, config.slice_step)
    for vertebra in vertebrae:
        if vertebra.slices.shape[0] < needed:
            raise RunError(
                f"dataset {config.dataset!r} delivered {vertebra.slices.shape[0]} central slices "
                f"for {vertebra.key.id}, --slices {config.slices} --slice-step "
                f"{config.slice_step} needs {needed}; its adapter ignores the n_slices of its "
                "preprocessing params: fix the adapter or run with --slices 1"
            )


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


def transfer_models(
    trained_on: Mapping[str, Mapping[str, str]], dataset: PreparedDataset
) -> dict[str, dict[str, str]]:
    """The models (by role, with the data they were trained on) that were not trained on
    ``dataset``: non-empty exactly for a transfer run."""
    return {
        role: dict(origin)
        for role, origin in trained_on.items()
        if origin["fingerprint"] != dataset.fingerprint
    }


def transfer_line(transfer: Mapping[str, Mapping[str, str]], dataset: str) -> str:
    """One line saying a run is a transfer run and where its models come from."""
    where = "; ".join(f"{role} trained on {o['dataset']}" for role, o in transfer.items())
    return f"transfer run: models not trained on {dataset!r} ({where})"


@dataclass
class OpenRun:
    """A started run: its directory, data, manifest (written) and the vertebrae it segments."""

    config: RunConfig
    run_dir: Path
    method_cls: type[Method]
    dataset: PreparedDataset
    vertebrae: list[PreparedVertebra]
    offsets: list[int]
    limit: float | None
    manifest: dict[str, Any]
    timings: dict[str, float]
    notify: Callable[[str], None]

    def warn(self, message: str) -> None:
        """Record ``message`` in the manifest's warnings and pass it to ``notify``."""
        self.manifest["warnings"].append(message)
        self.notify(message)


def open_run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    timeout_s: float | None = None,
    notify: Callable[[str], None] = default_notify,
    prepared: PreparedDataset | None = None,
) -> OpenRun:
    """Prepare the data of ``config`` (unless the caller ``prepared`` it), start (or, with
    ``resume``, reopen) its run directory under ``out`` and write the manifest of a run that has
    not yet fitted its method."""
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc).isoformat()
    try:
        offsets = config.offsets
    except ValueError as exc:
        raise RunError(str(exc)) from None
    ensure_writable(out)
    method_cls = load_method(config.method)
    limit = time_limit(method_cls, timeout_s)
    with timed(timings, "prepare"):
        dataset = prepared if prepared is not None else prepare_dataset(config)[1]
    refuse_faulty(config.dataset, dataset)
    check_slab(config, dataset.vertebrae)
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
            "trained_on": {},
        },
        "transfer": {},
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
        "config": config.as_dict(),
        "slices": config.slices,
        "slice_step": config.slice_step,
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
    write_json(run_dir / "manifest.json", manifest)
    return OpenRun(config, run_dir, method_cls, dataset, vertebrae, offsets, limit, manifest,
                   timings, notify)  # fmt: skip


def method_calls(
    config: RunConfig, method_cls: type[Method], dataset: PreparedDataset, limit: float | None
) -> TimedCalls[tuple[Segmentation, np.ndarray]]:
    """The method of ``config`` in a :class:`TimedCalls`: its ``prepare`` builds the method and
    fits it (seeded with the run's seed), its calls answer ``(index in the split, slice
    offset)`` with :func:`answer_vertebra`, each within ``limit`` seconds."""
    vertebrae = dataset.split(Split(config.split))
    hints = patient_hints(dataset.vertebrae)
    built: dict[str, Method] = {}

    def prepare() -> dict[str, Any]:
        method = built["method"] = method_cls(**config.params)
        if method.learns():
            seed_everything(config.seed)
            method.fit(dataset.training_set(), workdir(method_cls))
        origins = {role: asdict(origin) for role, origin in method.trained_on().items()}
        return {"params": method.params(), "models": method.models(), "trained_on": origins}

    def answer(call: tuple[int, int]) -> tuple[Segmentation, np.ndarray]:
        index, offset = call
        vertebra = vertebrae[index]
        return answer_vertebra(built["method"], vertebra, config.seed,
                               hints[vertebra.key.patient], offset)  # fmt: skip

    return TimedCalls(prepare, answer, limit)


def record_prepared(opened: OpenRun, prepared: dict[str, Any]) -> None:
    """Write what fitting the method gave (params, models, the data they were trained on, a
    transfer) into the run's manifest."""
    manifest = opened.manifest
    manifest["method"].update(prepared)
    manifest["transfer"] = transfer_models(manifest["method"]["trained_on"], opened.dataset)
    if manifest["transfer"]:
        opened.notify(transfer_line(manifest["transfer"], opened.dataset.name))
    write_json(opened.run_dir / "manifest.json", manifest)


def close_run(opened: OpenRun, records: list[dict[str, Any]]) -> RunResult:
    """Write ``cases.csv``, ``lesions.csv`` and the finished manifest from the vertebrae's
    ``records`` (in split order)."""
    run_dir, manifest = opened.run_dir, opened.manifest
    cases = pd.DataFrame([r["case"] for r in records]).sort_values("vertebra")
    write_csv(run_dir / "cases.csv", cases)
    write_csv(run_dir / "lesions.csv", pd.DataFrame([row for r in records for row in r["lesions"]]))
    for key, statuses in (("failed", FAILED_STATUSES), ("refused", (REFUSED,))):
        rows = cases[cases["status"].isin(statuses)]
        manifest[key] = rows[["vertebra", "status", "reason"]].to_dict("records")
    manifest["timings_s"] = opened.timings
    manifest["finished"] = datetime.now(timezone.utc).isoformat()
    write_json(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, cases, opened.dataset.lesion_metrics)


def run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    timeout_s: float | None = None,
    retry_failed: bool = True,
    notify: Callable[[str], None] = default_notify,
    prepared: PreparedDataset | None = None,
) -> RunResult:
    """Run ``config`` and write its run directory under ``out``; see the module docstring.

    Each vertebra (each of its slices, in a k-slice evaluation: ``config.slices``) gets at most
    ``timeout_s`` seconds (:func:`time_limit`). With ``resume``, the
    vertebrae an earlier attempt finished are kept, except failed and timed-out ones when
    ``retry_failed``; ``notify`` receives warnings (torn records, an unenforced time limit).
    A bench gives the data it ``prepared`` once for all its methods.
    """
    opened = open_run(config, out, resume, timeout_s, notify, prepared)
    run_dir, vertebrae, offsets = opened.run_dir, opened.vertebrae, opened.offsets
    records = []
    with method_calls(config, opened.method_cls, opened.dataset, opened.limit) as calls:
        if calls.unenforced:
            opened.warn(f"the time limit of {opened.limit:g} s is not enforced: {calls.unenforced}")
        with timed(opened.timings, "fit"):
            fitted = calls.prepared()
        record_prepared(opened, fitted)
        with timed(opened.timings, "segment"):
            for index, vertebra in enumerate(vertebrae):
                record = finished_record(run_dir, vertebra.key.id, retry_failed, opened.warn)
                if record is None:
                    outcome = answer_slices(calls, index, vertebra, offsets)
                    record = store_vertebra(run_dir, vertebra, outcome,
                                            opened.dataset.lesion_metrics, offsets)  # fmt: skip
                records.append(record)
                if progress is not None:
                    progress(index + 1, len(vertebrae), vertebra.key.id)
    return close_run(opened, records)
