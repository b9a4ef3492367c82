"""Run one method on one dataset split and write a self-describing run directory.

Layout of ``<out>/<dataset>/<method>/<run-id>/``:
``manifest.json`` (provenance, timings, skipped and failed vertebrae), ``cases.csv`` (one row
per vertebra: ids, category, raw counts, every metric), ``lesions.csv`` (every candidate a
method scored), ``masks/<vertebra>.npz`` (post-processed and raw label maps, score map) and
``cases/<vertebra>.json`` (the per-vertebra record a resumed run reuses).
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsbench import __version__
from wsbench.evaluation import category_of, evaluate_case, vertebra_level_case
from wsbench.modelstore import cache_root, digest
from wsbench.postprocess import postprocess
from wsbench.registry import load_dataset, load_method
from wsbench.types import (
    BLASTIC,
    LYTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Segmentation,
    Split,
    patient_hints,
)

HARNESS_VERSION = "1"
"""Version of what the harness does around a method: the sample it is given (crop, slices,
hint), the post-processing and the scoring. Bump it with any change to those, so that
``wsbench bench`` runs every method again instead of reusing runs made the old way. Manifests
written before it existed count as ``"1"`` (the harness of 2026-11-26, patient-level hints)."""

PACKAGES = ("numpy", "scipy", "scikit-image", "scikit-learn", "torch", "monai", "panoptica")


class RunError(Exception):
    """The run cannot start: bad output folder, nothing to evaluate, unusable resume."""


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


def torch_threads(threads: int | None = None) -> int | None:
    """Set torch's CPU thread count when ``threads`` is given; return the count in use (``None``
    without torch). Results of DDIM-based methods can differ in a few pixels between counts."""
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: give a positive number of CPU threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def vertebra_seed(seed: int, vertebra_id: str) -> int:
    """Per-vertebra seed, independent of order, so a resumed run gives the same numbers."""
    return int(digest([seed, vertebra_id], length=8), 16)


def package_versions() -> dict[str, str]:
    """Versions of wsbench, Python and the scientific packages a result depends on."""
    found = {"wsbench": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_output(*args: str) -> str | None:
    """Output of ``git args`` in the wsbench source tree, or None when it is not a checkout."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_commit() -> str | None:
    """Commit of the wsbench source tree, when it is a git checkout."""
    return (git_output("rev-parse", "HEAD") or "").strip() or None


def git_dirty() -> bool | None:
    """Whether tracked files of the source tree differ from that commit (None: not a checkout)."""
    status = git_output("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and prove it is writable, or raise RunError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".wsbench-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise RunError(
            f"output folder {folder} is not writable ({exc.strerror}); choose another with --out"
        ) from exc


def write_json_atomic(path: Path, record: Mapping[str, Any]) -> None:
    """Write JSON so that a crash never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished run."""
    manifest = run_dir / "manifest.json"
    return manifest.exists() and bool(json.loads(manifest.read_text()).get("finished"))


def find_resumable(method_dir: Path, config: RunConfig) -> Path | None:
    """The newest run directory of ``config`` under ``method_dir``, if any."""
    if not method_dir.is_dir():
        return None
    runs = sorted(p for p in method_dir.iterdir() if p.name.endswith(config.digest))
    return runs[-1] if runs else None


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
    post-processed labels, and its raw label map."""
    sample = vertebra.sample(hint)
    output = method.segment(
        sample.image.copy(),
        sample.body_mask.copy(),
        spacing=sample.spacing,
        phenotype=sample.phenotype,
        key=sample.key,
        stack=sample.stack.copy(),
        stack_body=sample.stack_body.copy(),
    )
    seg = validate_output(method, output, sample.image.shape)
    raw = seg.labels
    if not method.distinguishes_phenotype:
        raw = label_foreground(raw, vertebra.phenotype)
    seg.labels = postprocess(raw, sample.body_mask)
    return seg, raw


def case_record(
    vertebra: PreparedVertebra, seg: Segmentation | None, lesion_metrics: bool, error: str | None
) -> dict[str, Any]:
    """One ``cases.csv`` row: ids, labels, category, status and (when ok) counts and metrics."""
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
        "status": "failed" if error else "ok",
        "reason": error or "",
    }
    if seg is None:
        return record
    if lesion_metrics and vertebra.reference is not None and record["category"]:
        record.update(
            evaluate_case(seg.labels, vertebra.reference, record["category"], vertebra.spacing)
        )
    else:
        record.update(vertebra_level_case(seg.labels, vertebra.spacing))
    return record


def save_masks(path: Path, seg: Segmentation, raw: np.ndarray, vertebra: PreparedVertebra) -> None:
    """Store post-processed and raw labels, scores, candidates, and the input for figures."""
    sample = vertebra.sample()
    arrays = {
        "labels": seg.labels,
        "raw": raw,
        "candidates": seg.candidates,
        "image": sample.image.astype(np.float32),
        "body": sample.body_mask.astype(bool),
        "reference": vertebra.reference,
    }
    if seg.scores is not None:
        arrays["scores"] = np.asarray(seg.scores, dtype=np.float32)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})


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


def process_vertebra(
    method: Method,
    vertebra: PreparedVertebra,
    run_dir: Path,
    config: RunConfig,
    lesion_metrics: bool,
    hint: Phenotype | None,
) -> dict[str, Any]:
    """Segment, evaluate and store one vertebra; a method failure becomes a failed row."""
    seed_everything(vertebra_seed(config.seed, vertebra.key.id))
    seg: Segmentation | None = None
    try:
        seg, raw = segment_vertebra(method, vertebra, hint)
        error = None
    except Exception as exc:  # a method's failure is recorded, the run goes on
        error = f"{type(exc).__name__}: {exc}"
    record = {"case": case_record(vertebra, seg, lesion_metrics, error), "lesions": []}
    if seg is not None:
        save_masks(run_dir / "masks" / f"{vertebra.key.id}.npz", seg, raw, vertebra)
        record["lesions"] = lesion_rows(vertebra, seg)
    write_json_atomic(run_dir / "cases" / f"{vertebra.key.id}.json", record)
    return record


def prepare_dataset(config: RunConfig) -> tuple[DatasetAdapter, PreparedDataset]:
    """Instantiate the dataset adapter and prepare the data."""
    adapter_cls = load_dataset(config.dataset)
    if adapter_cls.needs_root and config.root is None:
        raise RunError(adapter_cls.missing_root(config.dataset))
    root = Path(config.root).expanduser() if config.root else None
    adapter = adapter_cls(root=root, cache_dir=cache_root() / "prepared", **config.dataset_options)
    return adapter, adapter.prepare()


def safe_name(name: str) -> str:
    """A folder name for a method or dataset name (``module:Class`` becomes ``module-Class``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def made_otherwise(run_dir: Path, version: str, fingerprint: str | None = None) -> str | None:
    """Why ``run_dir`` was not made by method ``version`` and this :data:`HARNESS_VERSION` on
    data ``fingerprint`` (``None`` when it was, or when the fingerprint is not given and both
    versions match)."""
    manifest = run_dir / "manifest.json"
    if not manifest.exists():
        return None
    record = json.loads(manifest.read_text())
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
        previous = find_resumable(method_dir, config)
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


def run(
    config: RunConfig,
    out: Path,
    resume: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> RunResult:
    """Run ``config`` and write its run directory under ``out``; see the module docstring."""
    timings: dict[str, float] = {}
    started = datetime.now(timezone.utc).isoformat()
    ensure_writable(out)
    method_cls = load_method(config.method)
    method = method_cls(**config.params)
    with timed(timings, "prepare"):
        _, dataset = prepare_dataset(config)
    run_dir = start_run_dir(out, config, resume, method_cls.version, dataset.fingerprint)
    (run_dir / "masks").mkdir(exist_ok=True)
    (run_dir / "cases").mkdir(exist_ok=True)
    vertebrae = dataset.split(Split(config.split))
    if not vertebrae:
        raise RunError(f"dataset {config.dataset!r} has no vertebrae in split {config.split!r}")
    manifest = {
        "method": {
            "name": config.method,
            "class": f"{method_cls.__module__}:{method_cls.__name__}",
            "version": method_cls.version,
            "params": method.params(),
            "models": method.models(),  # a learning method's are known after fit (below)
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
        "started": started,
        "resumed": resume,
        "finished": None,
        "skipped": [asdict(s) for s in dataset.skipped],
    }
    write_json_atomic(run_dir / "manifest.json", manifest)
    if method.learns:
        seed_everything(config.seed)
        with timed(timings, "fit"):
            method.fit(dataset.training_set(), cache_root() / "work" / method_cls.name)
        manifest["method"]["models"] = method.models()
        write_json_atomic(run_dir / "manifest.json", manifest)
    records, hints = [], patient_hints(dataset.vertebrae)
    with timed(timings, "segment"):
        for index, vertebra in enumerate(vertebrae):
            done = run_dir / "cases" / f"{vertebra.key.id}.json"
            if done.exists():
                records.append(json.loads(done.read_text()))
            else:
                hint = hints[vertebra.key.patient]
                records.append(process_vertebra(method, vertebra, run_dir, config,
                                                dataset.lesion_metrics, hint))  # fmt: skip
            if progress is not None:
                progress(index + 1, len(vertebrae), vertebra.key.id)
    cases = pd.DataFrame([r["case"] for r in records]).sort_values("vertebra")
    cases.to_csv(run_dir / "cases.csv", index=False)
    lesions = pd.DataFrame([row for r in records for row in r["lesions"]])
    lesions.to_csv(run_dir / "lesions.csv", index=False)
    failed = cases[cases["status"] != "ok"]
    manifest["failed"] = failed[["vertebra", "reason"]].to_dict("records")
    manifest["timings_s"] = timings
    manifest["finished"] = datetime.now(timezone.utc).isoformat()
    write_json_atomic(run_dir / "manifest.json", manifest)
    return RunResult(run_dir, cases, dataset.lesion_metrics)
