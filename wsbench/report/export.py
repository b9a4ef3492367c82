"""A run's predicted lesion masks written back into each source CT's voxel grid, for viewers.

Every method segments the mid-sagittal slice of a resampled 64³ body crop; the crop's geometry
(recorded by :mod:`wsbench.data.preprocess` and stored with each vertebra's record in the run
directory) maps that slice back onto the source plane nearest to it, so the dataset is not
prepared again. All vertebrae of one source CT go into one label volume (0 background, 1 lytic,
2 blastic) with the source affine: NIfTI named after the source file (``sub-001_ct.nii.gz`` →
``sub-001_desc-<method>_seg-lesion_msk.nii.gz``) or, for DICOM datasets, a DICOM-SEG that
references the CT series; each with a JSON sidecar naming the run and the vertebrae it holds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from wsbench.data.dicom import CtVolume, read_ct_series, scan_series, write_prediction_seg
from wsbench.data.nifti import bids_stem, write_nifti_gz
from wsbench.data.preprocess import mask_to_source
from wsbench.harness.rundir import RunError, mask_path, read_cases, read_manifest, safe_name

ExportFormat = Literal["nifti", "dicom-seg"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


@dataclass(frozen=True)
class RunVertebra:
    """One vertebra of a run as the run directory records it."""

    id: str
    subject: str
    session: str
    geometry: dict[str, Any]


Group = list[tuple[RunVertebra, np.ndarray]]
"""The vertebrae of one source CT with their post-processed slice label maps."""


@dataclass(frozen=True)
class ExportedVolume:
    """One written label volume and the vertebrae it holds."""

    path: Path
    subject: str
    session: str
    vertebrae: tuple[str, ...]


def stem_of(source: str, members: Group) -> str:
    """Output name stem: the NIfTI source's name (``sub-001_ct.nii.gz`` → ``sub-001``), or
    ``sub-<patient>[_ses-<session>]`` for a DICOM series."""
    name = Path(source).name
    for ending in ("_ct.nii.gz", "_ct.nii", ".nii.gz", ".nii"):
        if name.endswith(ending):
            return name[: -len(ending)]
    first = members[0][0]
    return bids_stem(first.subject, first.session)


def volume_of(vertebrae: Group) -> tuple[np.ndarray, Any]:
    """One source-grid label volume from the slice masks of a source's vertebrae."""
    volume, affine = None, None
    for vertebra, labels in vertebrae:
        placed, source_affine = mask_to_source(labels.astype(np.uint8), vertebra.geometry)
        if volume is None:
            volume, affine = placed, source_affine
        elif not np.allclose(affine, source_affine):
            raise RunError(f"{vertebra.id}: source affine differs from its subject's other CT")
        else:
            volume = np.where(placed > 0, placed, volume)
    return volume, affine


def run_vertebrae(run_dir: Path) -> dict[str, RunVertebra]:
    """The run's vertebrae by id, from the per-vertebra records in the run directory."""
    found = {}
    for record in read_cases(run_dir):
        case = record["case"]
        subject, session = str(case["subject"]), str(case.get("session") or "")
        found[case["vertebra"]] = RunVertebra(case["vertebra"], subject, session,
                                              record.get("geometry") or {})  # fmt: skip
    return found


def groups_of(run_dir: Path) -> dict[str, Group]:
    """The run's masks grouped by source CT (the ``source`` of each crop's geometry)."""
    groups: dict[str, Group] = defaultdict(list)
    for vertebra_id, vertebra in sorted(run_vertebrae(run_dir).items()):
        npz = mask_path(run_dir, vertebra_id)
        if not npz.exists():  # the method failed on it: nothing to export
            continue
        if "source_affine" not in vertebra.geometry:
            raise RunError(
                f"{vertebra_id}: the run recorded no source geometry to export into (runs made "
                "before runs stored it, or a dataset without source volumes); run it again"
            )
        with np.load(npz) as arrays:
            groups[str(vertebra.geometry["source"])].append((vertebra, arrays["labels"]))
    if not groups:
        raise RunError(f"{run_dir / 'masks'} holds no predicted masks")
    return dict(sorted(groups.items()))


def source_ct(source: str, members: Group) -> CtVolume:
    """The DICOM CT series a DICOM-sourced group was cut from."""
    uid = members[0][0].geometry.get("source_series_uid")
    if uid is None:
        raise RunError(
            f"{source} is not a DICOM series: DICOM-SEG export needs a DICOM dataset such as "
            "tcia; use --format nifti"
        )
    series, _ = scan_series(Path(source))
    match = [s for s in series if s.uid == uid and s.modality == "CT"]
    if not match:
        raise RunError(f"CT series {uid} is no longer under {source}")
    return read_ct_series(match[0].files)


def export_run(run_dir: Path, out: Path, fmt: ExportFormat = "nifti") -> list[ExportedVolume]:
    """Write the run's post-processed label maps into source space under ``out``.

    ``nifti``: one ``.nii.gz`` (and a JSON sidecar) per source CT. ``dicom-seg``: one DICOM-SEG
    per source CT series that references it, for DICOM datasets.
    """
    if fmt not in EXPORT_FORMATS:
        raise RunError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    manifest = read_manifest(run_dir)
    method = manifest["method"]
    tag = "".join(c for c in safe_name(method["name"]) if c.isalnum())
    written = []
    for source, members in groups_of(run_dir).items():
        volume, affine = volume_of(members)
        stem = f"{stem_of(source, members)}_desc-{tag}_seg-lesion"
        if fmt == "nifti":
            path = out / f"{stem}_msk.nii.gz"
            write_nifti_gz(path, volume, affine)
        else:
            ct = source_ct(source, members)
            if not np.allclose(ct.affine, affine, atol=1e-3):
                raise RunError(f"{source}: the CT grid differs from the one the run read")
            out.mkdir(parents=True, exist_ok=True)
            path = write_prediction_seg(
                out / f"{stem}.dcm", volume, ct, method=method["name"], version=method["version"]
            )
        ids = tuple(v.id for v, _ in members)
        sidecar = {"run": str(run_dir), "method": method, "vertebrae": list(ids)}
        sidecar["labels"] = {"0": "background", "1": "lytic", "2": "blastic"}
        sidecar_path = path.parent / (path.name.removesuffix(".gz").rsplit(".", 1)[0] + ".json")
        sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")
        vertebra = members[0][0]
        written.append(ExportedVolume(path, vertebra.subject, vertebra.session, ids))
    return written
