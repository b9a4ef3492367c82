"""Writers of the file layouts wsbench reads (the in-house BIDS-like layout).

Files are byte-for-byte deterministic: the same subjects always give the same bytes (NIfTI
headers built from the data alone, gzip with ``mtime = 0`` and no file name, CSV with ``\\n``).
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from wsbench.volumes import SubjectVolumes

LABEL_COLUMNS = ("subject", "session", "vertebra", "label", "phenotype", "split")
"""Columns of ``labels.csv`` in the in-house layout."""

GZIP_LEVEL = 6


def bids_stem(subject: str, session: str = "") -> str:
    """File-name stem ``sub-<S>[_ses-<E>]``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def bids_folder(root: Path, tree: str, subject: str, session: str = "") -> Path:
    """``<root>/<tree>/sub-<S>[/ses-<E>]`` (``tree`` is ``rawdata`` or ``derivatives``)."""
    folder = Path(root) / tree / f"sub-{subject}"
    return folder / f"ses-{session}" if session else folder


def write_nifti_gz(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write a ``.nii.gz`` deterministically (gzip mtime 0, no stored name; units mm)."""
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    image.header.set_xyzt_units("mm")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=buffer, compresslevel=GZIP_LEVEL, mtime=0
    ) as gz:
        gz.write(image.to_bytes())
    path.write_bytes(buffer.getvalue())


def _check_subject(subject: SubjectVolumes) -> None:
    """Raise ``ValueError`` naming the subject when its arrays are not on one grid."""
    shape = subject.ct.shape
    if subject.ct.ndim != 3:
        raise ValueError(f"subject {subject.subject}: CT must be 3D, got shape {shape}")
    for name in ("vert", "subreg", "lesion"):
        data = getattr(subject, name)
        if data is None:
            continue
        if data.shape != shape:
            raise ValueError(
                f"subject {subject.subject}: {name} shape {data.shape} differs from CT {shape}"
            )
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"subject {subject.subject}: {name} labels must lie in 0..255")
    if np.asarray(subject.affine).shape != (4, 4):
        raise ValueError(f"subject {subject.subject}: affine must be 4×4")


def write_inhouse(root: Path, subjects: Sequence[SubjectVolumes]) -> None:
    """Write subjects in the in-house BIDS layout under ``root`` (``labels.csv`` included).

    Per subject (``sub-<S>``, with ``ses-<E>`` when ``session`` is set):
    ``rawdata/.../sub-<S>_ct.nii.gz`` (int16 HU), ``derivatives/.../sub-<S>_seg-vert_msk.nii.gz``,
    ``..._seg-subreg_msk.nii.gz`` when ``subreg`` is given and ``..._seg-lesion_msk.nii.gz`` when
    ``lesion`` is given (uint8). ``labels.csv`` has one row per vertebra with a known label (columns
    :data:`LABEL_COLUMNS`; vertebrae labelled ``None`` are left out, i.e. unlabeled); ``split`` is
    empty where a subject has none. Same input → byte-identical files.
    """
    root = Path(root)
    rows = []
    for subject in subjects:
        _check_subject(subject)
        stem = bids_stem(subject.subject, subject.session)
        raw = bids_folder(root, "rawdata", subject.subject, subject.session)
        der = bids_folder(root, "derivatives", subject.subject, subject.session)
        write_nifti_gz(raw / f"{stem}_ct.nii.gz", np.asarray(subject.ct, np.int16), subject.affine)
        masks = {"vert": subject.vert, "subreg": subject.subreg, "lesion": subject.lesion}
        for seg, data in masks.items():
            if data is not None:
                path = der / f"{stem}_seg-{seg}_msk.nii.gz"
                write_nifti_gz(path, np.asarray(data, np.uint8), subject.affine)
        for vertebra in subject.vertebrae:
            if vertebra.label is None:
                continue
            rows.append(
                {
                    "subject": subject.subject,
                    "session": subject.session,
                    "vertebra": vertebra.level,
                    "label": vertebra.label.value,
                    "phenotype": "" if vertebra.phenotype is None else vertebra.phenotype.value,
                    "split": "" if subject.split is None else subject.split.value,
                }
            )
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
