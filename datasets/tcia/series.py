"""The DICOM series of a download: CT and SEG paired into studies, checked against NBIA's
``metadata.csv``, and each study's optional lesion mask.

CT and SEG series are told apart by their DICOM Modality and paired through the SEG's
ReferencedSeriesSequence (or, without one, its FrameOfReferenceUID); folder names are never read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from wsbench.contract import BLASTIC, Scope, Skipped
from wsbench.data.dicom import CtVolume, SeriesInfo
from wsbench.datasets.tcia.layout import COLLECTION
from wsbench.harness.rundir import file_stem

LESION_SUFFIXES = (".nii.gz", ".nii")
"""File endings of a lesion mask, in the order they are looked for."""


@dataclass
class Study:
    """One patient's CT series and the DICOM-SEG of its vertebrae."""

    patient: str
    session: str
    ct: SeriesInfo
    seg: SeriesInfo

    @property
    def where(self) -> str:
        """Human-readable name for skip records."""
        return f"patient {self.patient}" + (f" series {self.session}" if self.session else "")


def pair_series(
    series: Sequence[SeriesInfo], incomplete: frozenset[str] = frozenset()
) -> tuple[list[Study], list[Skipped]]:
    """Pair each SEG with its CT by referenced series, else by FrameOfReferenceUID + patient.

    CT series in ``incomplete`` (files missing per metadata.csv) are not used. Every series
    left unpaired is a :class:`Skipped` record: scope file, except series of another modality
    than CT or SEG, which the collection does not hold and which are merely not used.
    """
    cts = {s.uid: s for s in series if s.modality == "CT" and s.uid not in incomplete}
    segs = [s for s in series if s.modality == "SEG"]
    skipped = [
        Skipped(
            str(s.files[0] if len(s.files) == 1 else s.files[0].parent),
            f"series {s.uid} of modality {s.modality!r} is not used (the collection holds CT and "
            "SEG only); remove it, or re-download it if it should be one of those",
        )
        for s in series
        if s.modality not in {"CT", "SEG"}
    ]
    paired: dict[str, SeriesInfo] = {}
    for seg in segs:
        where = str(seg.files[0])
        if len(seg.files) != 1:
            skipped.append(
                Skipped(
                    where,
                    f"SEG series {seg.uid} has {len(seg.files)} files; keep the one file of the "
                    "collection's SEG",
                    Scope.FILE,
                )
            )
            continue
        if seg.references:
            found = [cts[r] for r in seg.references if r in cts]
            missing = [r for r in seg.references if r in incomplete]
            if not found and missing:
                skipped.append(
                    Skipped(where, f"its CT series {missing[0]} is incomplete", Scope.FILE)
                )
                continue
            if not found:
                skipped.append(
                    Skipped(
                        where,
                        f"references series {', '.join(seg.references)}, which is not a CT "
                        "series under --root; download that CT or remove the SEG",
                        Scope.FILE,
                    )
                )
                continue
        else:
            found = [
                c
                for c in cts.values()
                if c.frame_of_reference_uid
                and c.frame_of_reference_uid == seg.frame_of_reference_uid
                and c.patient_id == seg.patient_id
            ]
        if len(found) != 1:
            skipped.append(
                Skipped(
                    where,
                    f"names no referenced series and matches {len(found)} CT series by "
                    f"FrameOfReferenceUID {seg.frame_of_reference_uid!r} and PatientID "
                    f"{seg.patient_id!r}; cannot tell which it segments, re-download the SEG",
                    Scope.FILE,
                )
            )
            continue
        ct = found[0]
        problem = None
        if ct.patient_id != seg.patient_id:
            problem = f"PatientID {seg.patient_id!r} differs from its CT's {ct.patient_id!r}"
        elif (
            ct.frame_of_reference_uid
            and seg.frame_of_reference_uid
            and ct.frame_of_reference_uid != seg.frame_of_reference_uid
        ):
            problem = f"FrameOfReferenceUID differs from its CT series {ct.uid}"
        elif ct.uid in paired:
            problem = f"CT series {ct.uid} already has SEG {paired[ct.uid].files[0]}"
        if problem:
            skipped.append(Skipped(where, problem, Scope.FILE))
            continue
        paired[ct.uid] = seg
    for uid, ct in sorted(cts.items()):
        if uid not in paired:
            where = ct.files[0] if len(ct.files) == 1 else ct.files[0].parent
            skipped.append(
                Skipped(str(where), f"CT series {uid}: no DICOM-SEG segments it", Scope.FILE)
            )
    per_patient: dict[str, list[str]] = defaultdict(list)
    for uid in sorted(paired):
        per_patient[cts[uid].patient_id].append(uid)
    studies = []
    for patient, uids in sorted(per_patient.items()):
        for uid in uids:
            session = uid.rsplit(".", 1)[-1] if len(uids) > 1 else ""
            studies.append(Study(patient, session, cts[uid], paired[uid]))
    return studies, skipped


def check_nbia_metadata(root: Path, series: Sequence[SeriesInfo]) -> tuple[set[str], list[Skipped]]:
    """Compare NBIA ``metadata.csv`` files under ``root`` with what is on disk.

    Returns the UIDs of series with fewer files than ``Number of Images`` (they are not used) and
    a :class:`Skipped` record for each such series or series missing altogether.
    """
    found = {s.uid: s for s in series}
    incomplete: set[str] = set()
    skipped: list[Skipped] = []
    for path in (root / "metadata.csv", root / COLLECTION / "metadata.csv"):
        if not path.is_file():
            continue
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        needed = ("Series UID", "Number of Images", "File Location")
        if any(c not in table.columns for c in needed):
            skipped.append(
                Skipped(str(path), f"not an NBIA metadata.csv (needs {needed}); unused", Scope.FILE)
            )
            continue
        for record in table.to_dict(orient="records"):
            uid, location = record["Series UID"].strip(), record["File Location"].strip()
            try:
                expected = int(float(record["Number of Images"]))
            except ValueError:
                skipped.append(
                    Skipped(f"{path} {location}", "unreadable Number of Images", Scope.FILE)
                )
                continue
            have = len(found[uid].files) if uid in found else 0
            if have < expected:
                incomplete.add(uid)
                skipped.append(
                    Skipped(
                        location.replace("\\", "/"),
                        f"{path.name} lists {expected} file(s) of series {uid}, {have} found; "
                        "re-download the series",
                        Scope.FILE,
                    )
                )
    return incomplete, skipped


def lesion_file_name(patient: str, suffix: str = LESION_SUFFIXES[0]) -> str:
    """The file name of a patient's lesion mask: ``<PatientID>.nii.gz`` when the id is a safe
    file name, else its safe form with a short hash (:func:`~wsbench.harness.rundir.file_stem`),
    so that an id holding ``/``, ``\\`` or ``..`` never names a path outside the folder."""
    return f"{file_stem(patient)}{suffix}"


def find_lesion_mask(folder: Path, patient: str) -> Path | None:
    """``<folder>/<lesion_file_name>`` (``.nii.gz``, else ``.nii``) if present."""
    for suffix in LESION_SUFFIXES:
        path = folder / lesion_file_name(patient, suffix)
        if path.is_file():
            return path
    return None


def lesion_on_ct_grid(path: Path, ct: CtVolume) -> nib.Nifti1Image:
    """A lesion-mask NIfTI reoriented onto the CT's voxel axes (flips/permutations only).

    Raises ``ValueError`` naming the file for NaN voxels or values other than 0/1/2; a remaining
    shape or affine difference is reported by :func:`~wsbench.data.preprocess.preprocess_subject`.
    """
    image = nib.load(path)
    if len(image.shape) != 3:
        raise ValueError(f"{path}: lesion mask is not 3D (shape {image.shape})")
    data = np.asanyarray(image.dataobj)
    if np.issubdtype(data.dtype, np.floating) and np.isnan(data).any():
        raise ValueError(f"{path}: lesion mask has {int(np.isnan(data).sum())} NaN voxels")
    values = set(np.unique(data).tolist())
    if not values <= set(range(BLASTIC + 1)):
        raise ValueError(f"{path}: lesion mask values {sorted(values)} are not within 0/1/2")
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.io_orientation(ct.affine)
    reoriented = image.as_reoriented(nib.orientations.ornt_transform(current, target))
    return nib.Nifti1Image(np.asarray(reoriented.dataobj).astype(np.uint8), reoriented.affine)
