"""The run directory: one folder per run that holds everything needed to read, resume, publish
and export it without the dataset.

Layout of ``<out>/<dataset>/<method>/<run-id>/``: ``manifest.json`` (provenance, timings, skipped
and failed vertebrae), ``cases.csv`` (one row per vertebra: ids, category, raw counts, every
metric), ``lesions.csv`` (every candidate a method scored), ``masks/<vertebra>.npz``
(post-processed and raw label maps, score map, input slice — a ``(K, H, W)`` slab of each for a
k-slice evaluation; none where the method failed) and
``cases/<vertebra>.json`` (the per-vertebra record a resumed run reuses, with the vertebra's
geometry in its source CT, from which ``wsbench export`` writes masks back without preparing the
dataset again). File names are the vertebra ids, made safe by :func:`file_stem`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsbench.contract import PreparedVertebra, Segmentation, as_slab
from wsbench.files import atomic_path, digest, write_json


class RunError(Exception):
    """The run cannot start: bad output folder, nothing to evaluate, unusable resume."""


def safe_name(name: str) -> str:
    """A folder name for a method or dataset name (``module:Class`` becomes ``module-Class``)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


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


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest; RunError naming the file when ``run_dir`` is not a run directory or
    its manifest cannot be read."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is torn or not JSON ({exc}); run that configuration again") from exc
    if not isinstance(manifest, dict):
        raise RunError(f"{path} is not a run manifest (a JSON object); run it again")
    return manifest


def read_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished run."""
    manifest = run_dir / "manifest.json"
    return manifest.exists() and bool(read_manifest(run_dir).get("finished"))


def find_resumable(method_dir: Path, digest: str) -> Path | None:
    """The newest run directory of the configuration with ``digest`` under ``method_dir``."""
    if not method_dir.is_dir():
        return None
    runs = sorted(p for p in method_dir.iterdir() if p.name.endswith(digest))
    return runs[-1] if runs else None


def file_stem(vertebra_id: str) -> str:
    """The file name (without suffix) of a vertebra's files: the id itself when it is a safe
    name, else its :func:`safe_name` and a short hash of the id, so that an id holding ``/`` or
    ``..`` never reaches outside the run directory and two ids never share a file. Tables keep
    the id verbatim."""
    safe = safe_name(vertebra_id)
    if safe == vertebra_id and not safe.startswith("."):
        return safe
    return f"{safe.lstrip('.')}-{digest(vertebra_id, length=8)}"


def case_path(run_dir: Path, vertebra_id: str) -> Path:
    """Where the per-vertebra record of ``vertebra_id`` is stored."""
    return run_dir / "cases" / f"{file_stem(vertebra_id)}.json"


def mask_path(run_dir: Path, vertebra_id: str) -> Path:
    """Where the masks of ``vertebra_id`` are stored (none for a vertebra the method failed on)."""
    return run_dir / "masks" / f"{file_stem(vertebra_id)}.npz"


def write_case(run_dir: Path, vertebra_id: str, record: dict[str, Any]) -> None:
    """Store one vertebra's record (``case`` row, ``lesions`` rows, ``geometry``) atomically."""
    write_json(case_path(run_dir, vertebra_id), record)


class TornRecord(RunError):
    """A per-vertebra record that cannot be read (a write cut short by a crash or a full disk)."""


def read_case(path: Path) -> dict[str, Any]:
    """One per-vertebra record; :class:`TornRecord` naming the file when it cannot be read."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise TornRecord(f"{path} is torn or not JSON ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("case"), dict):
        raise TornRecord(f"{path} is not a per-vertebra record (no 'case' object)")
    return record


def read_cases(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Every stored per-vertebra record of the run, in file-name order."""
    for path in sorted((run_dir / "cases").glob("*.json")):
        yield read_case(path)


def save_masks(
    path: Path,
    answers: Sequence[tuple[Segmentation, np.ndarray]],
    vertebra: PreparedVertebra,
    offsets: Sequence[int] = (0,),
) -> None:
    """Store post-processed and raw labels, scores, candidates, and the input for figures, of
    the slices at ``offsets`` from the mid-sagittal one (``answers``: one ``(segmentation, raw
    labels)`` per slice): 2D arrays for the mid-sagittal slice alone, ``(K, H, W)`` slabs and
    the ``offsets`` for a k-slice evaluation (scores and candidates only where every slice has
    them)."""
    segs = [seg for seg, _ in answers]
    samples = [vertebra.sample(offset=offset) for offset in offsets]

    def slab(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else as_slab(arrays)  # type: ignore[arg-type]

    arrays = {
        "labels": as_slab([seg.labels for seg in segs]),
        "raw": as_slab([raw for _, raw in answers]),
        "candidates": slab([seg.candidates for seg in segs]),
        "image": as_slab([sample.image for sample in samples]).astype(np.float32),
        "body": as_slab([sample.body_mask for sample in samples]).astype(bool),
        "reference": vertebra.reference_slab(offsets),
        "scores": slab([None if s.scores is None else np.asarray(s.scores, np.float32)
                        for s in segs]),
    }  # fmt: skip
    if len(offsets) > 1:
        arrays["offsets"] = np.asarray(offsets, dtype=np.int64)
    with atomic_path(path) as partial, partial.open("wb") as handle:
        np.savez_compressed(handle, **{k: v for k, v in arrays.items() if v is not None})
