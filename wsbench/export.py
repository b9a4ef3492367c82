"""A run's predicted lesion masks written back into each source CT's voxel grid, for viewers.

Every method segments the mid-sagittal slice of a resampled 64³ body crop; the crop's geometry
(recorded by :mod:`wsbench.preprocess`) maps that slice back onto the source plane nearest to
it. All vertebrae of one source CT go into one label volume (0 background, 1 lytic, 2 blastic)
with the source affine, named after the source file (``sub-001_ct.nii.gz`` →
``sub-001_desc-<method>_seg-lesion_msk.nii.gz``), plus a JSON sidecar naming the run and the
vertebrae it holds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsbench.formats import write_nifti_gz
from wsbench.preprocess import mask_to_source
from wsbench.runner import RunConfig, RunError, prepare_dataset, safe_name
from wsbench.types import PreparedVertebra


@dataclass(frozen=True)
class ExportedVolume:
    """One written label volume and the vertebrae it holds."""

    path: Path
    subject: str
    session: str
    vertebrae: tuple[str, ...]


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """The run's manifest (clear error when ``run_dir`` is not a finished run directory)."""
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no manifest.json)")
    manifest = json.loads(path.read_text())
    if "config" not in manifest:
        raise RunError(f"{path} predates exportable runs (no 'config'); run the method again")
    return manifest


def source_vertebrae(manifest: dict[str, Any]) -> dict[str, PreparedVertebra]:
    """The run's dataset, prepared again (cached), by vertebra id; refused if it changed."""
    config = RunConfig(**manifest["config"])
    _, dataset = prepare_dataset(config)
    if dataset.fingerprint != manifest["dataset"]["fingerprint"]:
        raise RunError(
            f"dataset {config.dataset!r} changed since the run (fingerprint "
            f"{dataset.fingerprint[:12]} ≠ {manifest['dataset']['fingerprint'][:12]}); "
            "export needs the source files the run read"
        )
    return {v.key.id: v for v in dataset.vertebrae}


def source_stem(source: str) -> str:
    """``sub-001_ct.nii.gz`` → ``sub-001``; other names lose their extension."""
    name = Path(source).name
    for ending in ("_ct.nii.gz", "_ct.nii", ".nii.gz", ".nii", ".dcm"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def volume_of(vertebrae: list[tuple[PreparedVertebra, np.ndarray]]) -> tuple[np.ndarray, Any]:
    """One source-grid label volume from the slice masks of a source's vertebrae."""
    volume, affine = None, None
    for vertebra, labels in vertebrae:
        placed, source_affine = mask_to_source(labels.astype(np.uint8), vertebra.geometry)
        if volume is None:
            volume, affine = placed, source_affine
        elif not np.allclose(affine, source_affine):
            raise RunError(f"{vertebra.key.id}: source affine differs from its subject's other CT")
        else:
            volume = np.where(placed > 0, placed, volume)
    return volume, affine


def export_nifti(run_dir: Path, out: Path) -> list[ExportedVolume]:
    """Write the run's post-processed label maps into source space as NIfTI under ``out``."""
    manifest = read_manifest(run_dir)
    known = source_vertebrae(manifest)
    method = safe_name(manifest["config"]["method"]).replace("_", "").replace("-", "")
    groups: dict[tuple[str, str, str], list[tuple[PreparedVertebra, np.ndarray]]] = defaultdict(
        list
    )
    for npz in sorted((run_dir / "masks").glob("*.npz")):
        vertebra = known.get(npz.stem)
        if vertebra is None:
            raise RunError(f"{npz} names a vertebra the dataset no longer has")
        if "source_affine" not in vertebra.geometry:
            raise RunError(f"{npz.stem}: the dataset recorded no source geometry to export into")
        source = str(vertebra.geometry.get("source", vertebra.key.subject))
        with np.load(npz) as arrays:
            groups[(vertebra.key.subject, vertebra.key.session, source)].append(
                (vertebra, arrays["labels"])
            )
    if not groups:
        raise RunError(f"{run_dir / 'masks'} holds no predicted masks")
    written = []
    for (subject, session, source), members in sorted(groups.items()):
        volume, affine = volume_of(members)
        stem = f"{source_stem(source)}_desc-{method}_seg-lesion_msk"
        path = out / f"{stem}.nii.gz"
        write_nifti_gz(path, volume, affine)
        ids = tuple(v.key.id for v, _ in members)
        sidecar = {"run": str(run_dir), "method": manifest["method"], "vertebrae": list(ids)}
        sidecar["labels"] = {"0": "background", "1": "lytic", "2": "blastic"}
        (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        written.append(ExportedVolume(path, subject, session, ids))
    return written
