"""DICOM I/O: CT series, DICOM-SEG vertebra masks and the TCIA Spine-Mets-CT-SEG layouts.

Arrays follow the nibabel convention used everywhere in wsbench: a CT volume is indexed
``[column, row, slice]`` of the DICOM frames and its ``affine`` maps voxel indices to RAS
millimetres. DICOM itself is LPS; :data:`LPS_TO_RAS` converts between the two.

* :func:`read_ct_series` reads a CT series with pydicom: slices sorted by their position along the
  slice normal, RescaleSlope/Intercept applied (HU), and every problem (unreadable file, missing or
  inconsistent slice, gap in the slice positions) raised as :class:`DicomError` naming the file.
* :func:`read_seg_levels` decodes a DICOM-SEG with highdicom onto a CT grid, mapping segments to
  vertebra levels by their SegmentLabel (``"L3 vertebra"``), never by segment number.
* :func:`write_tcia` writes :class:`~wsbench.volumes.SubjectVolumes` in the Spine-Mets-CT-SEG
  layouts (NBIA Data Retriever or IDC) with the clinical spreadsheet; same input → same bytes.
* :func:`write_prediction_seg` stores a predicted lesion label map as a DICOM-SEG on its CT series.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from wsbench.formats import write_nifti_gz
from wsbench.types import BLASTIC, LYTIC, Phenotype, Skipped, WeakLabel
from wsbench.volumes import LEVEL_NAMES, LEVEL_NUMBERS, SubjectVolumes

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) → nibabel world coordinates (RAS); its own inverse."""

COLLECTION = "Spine-Mets-CT-SEG"
"""TCIA collection name (NBIA folder name and clinical sheet name)."""

IDC_COLLECTION = "spine_mets_ct_seg"
"""IDC collection id (top folder of an idc-index download)."""

CLINICAL_FILE = f"{COLLECTION}_Clinical.xlsx"
CLINICAL_SHEET = COLLECTION
LEVEL_COLUMNS = ("Vertebrae with Lesions", "Blastic", "Lytic", "Mixed")
"""Free-text level-list columns of the clinical sheet."""

PHENOTYPE_COLUMNS = {
    "Blastic": Phenotype.BLASTIC,
    "Lytic": Phenotype.LYTIC,
    "Mixed": Phenotype.MIXED,
}

METADATA_COLUMNS = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
    "File Location", "Download Timestamp",
)  # fmt: skip
"""Columns of the NBIA Data Retriever's ``metadata.csv``."""

SLICE_GAP_TOLERANCE = 0.1
"""Largest relative deviation of a slice step from the median step before a slice counts as
missing."""

GEOMETRY_TOLERANCE_MM = 1e-3
"""Tolerance (mm, direction cosines) when comparing DICOM geometries."""

WRITER_STUDY_DATE = "20000101"
"""Study date written by :func:`write_tcia` (TCIA data are de-identified with shifted dates)."""

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""Timestamp of every member of the written xlsx (zip), for byte-identical output."""

SEGMENT_LEVEL = re.compile(r"\s*(?:vertebra\s+)?([CTL])\s*(\d{1,2})(?:\s+vertebra)?\s*", re.I)
"""A SegmentLabel naming a vertebra: ``"L3 vertebra"`` (TCIA), ``"L3"`` or ``"vertebra L3"``."""

LESION_SEGMENTS = {LYTIC: "lytic lesion", BLASTIC: "blastic lesion"}
"""Segment labels of :func:`write_prediction_seg`, by lesion label value."""


class DicomError(ValueError):
    """A DICOM input problem; the message names the file at fault and what to do."""


# --- reading -------------------------------------------------------------------------------------


@dataclass
class CtVolume:
    """A CT series as a volume: HU ``[column, row, slice]``, RAS affine and its DICOM identity.

    ``headers`` are the slices' datasets without pixel data, in slice order (they are the source
    images of SEGs written on this series); ``files`` the matching paths.
    """

    hu: np.ndarray
    affine: np.ndarray
    files: list[Path]
    headers: list[Dataset]
    series_uid: str
    study_uid: str
    patient_id: str
    frame_of_reference_uid: str

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape (columns, rows, slices)."""
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    def image(self) -> nib.Nifti1Image:
        """The CT as an in-memory NIfTI image (HU, RAS affine)."""
        return nib.Nifti1Image(self.hu, self.affine)

    def geometry(self) -> hd.VolumeGeometry:
        """The grid as a highdicom geometry: the same voxels with axes (slice, row, column), LPS."""
        lps = LPS_TO_RAS @ self.affine
        return hd.VolumeGeometry(
            affine=lps[:, [2, 1, 0, 3]],
            spatial_shape=self.shape[::-1],
            coordinate_system="PATIENT",
            frame_of_reference_uid=self.frame_of_reference_uid or None,
        )


def _read(path: Path, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` raising :class:`DicomError` that names the file."""
    try:
        return pydicom.dcmread(path, **kwargs)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc}); re-download it") from None


def _required(ds: Dataset, path: Path, *names: str) -> None:
    missing = [n for n in names if n not in ds or ds[n].value in (None, "")]
    if missing:
        raise DicomError(f"{path}: missing DICOM attribute(s) {', '.join(missing)}")


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (LPS) of frames with ImageOrientationPatient ``orientation``."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def read_ct_series(files: Sequence[Path]) -> CtVolume:
    """Read one CT series (one file per slice) into HU on a RAS grid.

    Slices are sorted by ImagePositionPatient projected on the slice normal (ascending, so the
    grid is right-handed in LPS); HU = stored value · RescaleSlope + RescaleIntercept (int16 when
    that is exact, else float32). Raises :class:`DicomError` naming the file for an unreadable
    file, a non-CT file, a missing attribute, slices of different series, orientation, spacing or
    size, two slices at one position, or a gap in the positions (a missing slice).
    """
    paths = [Path(f) for f in files]
    if len(paths) < 2:
        where = paths[0] if paths else "(no files)"
        raise DicomError(f"{where}: a CT series needs at least two slice files")
    datasets = []
    for path in paths:
        ds = _read(path)
        _required(
            ds, path, "Modality", "ImagePositionPatient",
            "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData",
        )  # fmt: skip
        if ds.Modality != "CT":
            raise DicomError(f"{path}: Modality is {ds.Modality}, not CT")
        datasets.append(ds)
    first, first_path = datasets[0], paths[0]
    for ds, path in zip(datasets[1:], paths[1:], strict=True):
        for name in ("SeriesInstanceUID", "Rows", "Columns"):
            if ds.get(name) != first.get(name):
                raise DicomError(
                    f"{path}: {name} {ds.get(name)} differs from {first.get(name)} in "
                    f"{first_path}; a series folder must hold one CT series"
                )
        for name in ("ImageOrientationPatient", "PixelSpacing"):
            if not np.allclose(
                [float(v) for v in ds[name].value],
                [float(v) for v in first[name].value],
                atol=GEOMETRY_TOLERANCE_MM,
            ):
                raise DicomError(f"{path}: {name} differs from {first_path}")
    normal = slice_normal([float(v) for v in first.ImageOrientationPatient])
    position = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order = np.argsort(position @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    position = position[order]
    _check_positions(position, normal, paths)

    columns = []
    exact = True
    for ds, path in zip(datasets, paths, strict=True):
        try:
            stored = ds.pixel_array
        except Exception as exc:  # decoder errors vary by transfer syntax and plugin
            raise DicomError(
                f"{path}: cannot decode the pixel data ({ds.file_meta.TransferSyntaxUID.name}): "
                f"{exc}"
            ) from None
        if stored.shape != (int(first.Rows), int(first.Columns)):
            raise DicomError(f"{path}: pixel data shape {stored.shape} is not Rows × Columns")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        exact &= slope.is_integer() and intercept.is_integer()
        columns.append(stored.T.astype(np.float64) * slope + intercept)
        del ds.PixelData
    hu = np.stack(columns, axis=-1)
    info = np.iinfo(np.int16)
    if exact and hu.min() >= info.min and hu.max() <= info.max:
        hu = hu.astype(np.int16)
    else:
        hu = hu.astype(np.float32)
    return CtVolume(
        hu=hu,
        affine=_affine_from_slices(datasets, position),
        files=paths,
        headers=datasets,
        series_uid=str(first.get("SeriesInstanceUID", "")),
        study_uid=str(first.get("StudyInstanceUID", "")),
        patient_id=str(first.get("PatientID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
    )


def _check_positions(position: np.ndarray, normal: np.ndarray, paths: Sequence[Path]) -> None:
    """Raise :class:`DicomError` for coincident slices, in-plane shifts or a gap (missing slice)."""
    steps = np.diff(position, axis=0)
    along = steps @ normal
    for i, step in enumerate(along):
        if abs(step) < GEOMETRY_TOLERANCE_MM:
            raise DicomError(
                f"{paths[i + 1]}: same slice position as {paths[i]}; remove the duplicate slice"
            )
    median = float(np.median(along))
    for i, step in enumerate(along):
        if abs(step - median) > SLICE_GAP_TOLERANCE * median:
            raise DicomError(
                f"{paths[i + 1]}: {step:.3g} mm from the previous slice {paths[i].name} where the "
                f"series steps {median:.3g} mm; a slice file is missing or the series mixes stacks"
            )
    off_axis = np.linalg.norm(steps - along[:, None] * normal, axis=1)
    if off_axis.max() > max(GEOMETRY_TOLERANCE_MM, 0.01 * median):
        worst = int(np.argmax(off_axis))
        raise DicomError(
            f"{paths[worst + 1]}: slice shifted {off_axis[worst]:.3g} mm in plane from "
            f"{paths[worst].name} (gantry tilt or mixed stacks); resample the series first"
        )


def _affine_from_slices(datasets: Sequence[Dataset], position: np.ndarray) -> np.ndarray:
    """RAS affine of the ``[column, row, slice]`` grid of sorted slices."""
    first = datasets[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * column_spacing
    lps[:3, 1] = orientation[3:] * row_spacing
    lps[:3, 2] = (position[-1] - position[0]) / (len(position) - 1)
    lps[:3, 3] = position[0]
    return LPS_TO_RAS @ lps


def segment_level(label: str) -> str | None:
    """Vertebra level named by a SegmentLabel (``"T1 vertebra"`` → ``"T1"``), else ``None``."""
    match = SEGMENT_LEVEL.fullmatch(str(label))
    if match is None:
        return None
    level = f"{match.group(1).upper()}{int(match.group(2))}"
    return level if level in LEVEL_NUMBERS else None


def seg_references(ds: Dataset) -> list[str]:
    """SeriesInstanceUIDs a SEG's ReferencedSeriesSequence names."""
    return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]


def read_seg_levels(path: Path, ct: CtVolume) -> tuple[np.ndarray, list[Skipped]]:
    """Decode a DICOM-SEG of vertebrae onto the CT grid, in VerSe label numbers.

    Each segment's level comes from its SegmentLabel (:func:`segment_level`); segments whose
    label names no level, or whose level another segment already has, are reported as
    :class:`Skipped` and left out. Where segments overlap the more caudal level wins. Raises
    :class:`DicomError` (naming ``path``) when the file is not a readable SEG, references another
    series, has another frame of reference, lies on a grid that is not a part of the CT grid, or
    has no segment with a level label. Returns ``(vert [column, row, slice] uint8, problems)``.
    """
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom raises several types for non-SEG or damaged input
        raise DicomError(f"{path}: not a readable DICOM-SEG ({exc})") from None
    references = seg_references(seg)
    if references and ct.series_uid not in references:
        raise DicomError(
            f"{path}: references series {', '.join(references)}, not the CT series "
            f"{ct.series_uid}; pair it with its own CT"
        )
    frame = str(seg.get("FrameOfReferenceUID", ""))
    if frame and ct.frame_of_reference_uid and frame != ct.frame_of_reference_uid:
        raise DicomError(
            f"{path}: FrameOfReferenceUID {frame} differs from the CT's {ct.frame_of_reference_uid}"
        )
    problems: list[Skipped] = []
    numbers: dict[str, int] = {}
    for item in seg.SegmentSequence:
        number, label = int(item.SegmentNumber), str(item.get("SegmentLabel", ""))
        level = segment_level(label)
        if level is None:
            problems.append(
                Skipped(f"{path} segment {number}", f"label {label!r} names no vertebra level")
            )
        elif level in numbers:
            problems.append(
                Skipped(
                    f"{path} segment {number}",
                    f"label {label!r}: level {level} is already segment {numbers[level]}",
                )
            )
        else:
            numbers[level] = number
    if not numbers:
        raise DicomError(
            f"{path}: no segment label names a vertebra level (expected e.g. 'L3 vertebra')"
        )
    levels = sorted(numbers, key=lambda lv: LEVEL_NUMBERS[lv])
    try:
        volume = seg.get_volume(
            segment_numbers=[numbers[lv] for lv in levels],
            combine_segments=True,
            relabel=True,
            skip_overlap_checks=True,
            dtype=np.uint8,
        )
        matched = volume.match_geometry(ct.geometry(), tol=GEOMETRY_TOLERANCE_MM)
    except (RuntimeError, ValueError) as exc:
        raise DicomError(
            f"{path}: the SEG frames do not lie on the CT grid of series {ct.series_uid} ({exc})"
        ) from None
    lookup = np.array([0] + [LEVEL_NUMBERS[lv] for lv in levels], dtype=np.uint8)
    vert = lookup[np.asarray(matched.array)].transpose(2, 1, 0)
    return np.ascontiguousarray(vert), problems


# --- scanning a download folder ------------------------------------------------------------------

SCAN_TAGS = (
    "Modality", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "FrameOfReferenceUID",
    "ReferencedSeriesSequence", "SeriesDescription", "SeriesNumber",
)  # fmt: skip


@dataclass
class SeriesInfo:
    """One DICOM series found on disk (from headers only)."""

    uid: str
    modality: str
    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    references: tuple[str, ...]
    description: str
    files: list[Path]


def _dicom_candidate(path: Path) -> bool:
    """Files worth opening: ``*.dcm`` or without a suffix (as some exports write them)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in {"", ".dcm"}


def scan_series(root: Path) -> tuple[list[SeriesInfo], list[Skipped]]:
    """Group the DICOM files under ``root`` by SeriesInstanceUID, reading headers only.

    A ``.dcm`` file that is not DICOM, a file without SeriesInstanceUID or Modality, and a series
    whose files disagree on Modality or PatientID are reported as :class:`Skipped`. Suffix-less
    files that are not DICOM (a README) are not data and are passed over.
    """
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    skipped: list[Skipped] = []
    for path in sorted(p for p in Path(root).rglob("*") if _dicom_candidate(p)):
        if not pydicom.misc.is_dicom(path):
            if path.suffix.lower() == ".dcm":
                skipped.append(Skipped(str(path), "not a DICOM file (no DICM preamble)"))
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(SCAN_TAGS))
        except Exception as exc:  # a damaged header
            skipped.append(Skipped(str(path), f"unreadable DICOM header: {exc}"))
            continue
        uid, modality = str(ds.get("SeriesInstanceUID", "")), str(ds.get("Modality", ""))
        if not uid or not modality:
            skipped.append(Skipped(str(path), "no SeriesInstanceUID or Modality"))
            continue
        groups[uid].append((path, ds))
    series = []
    for uid, members in sorted(groups.items()):
        modalities = {str(ds.Modality) for _, ds in members}
        patients = {str(ds.get("PatientID", "")) for _, ds in members}
        if len(modalities) > 1 or len(patients) > 1:
            skipped.append(
                Skipped(
                    str(members[0][0].parent),
                    f"series {uid} mixes modalities {sorted(modalities)} or patients "
                    f"{sorted(patients)}",
                )
            )
            continue
        head = members[0][1]
        references = sorted({r for _, ds in members for r in seg_references(ds)})
        series.append(
            SeriesInfo(
                uid=uid,
                modality=modalities.pop(),
                patient_id=patients.pop(),
                study_uid=str(head.get("StudyInstanceUID", "")),
                frame_of_reference_uid=str(head.get("FrameOfReferenceUID", "")),
                references=tuple(references),
                description=str(head.get("SeriesDescription", "")),
                files=[p for p, _ in members],
            )
        )
    return series, skipped


# --- writing -------------------------------------------------------------------------------------


def _uid(*parts: str) -> str:
    """A UID derived from ``parts`` only (same parts → same UID)."""
    return generate_uid(entropy_srcs=["wsbench", *parts])


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


@dataclass(frozen=True)
class _Plane:
    """DICOM image-plane attributes of a ``[column, row, slice]`` grid."""

    orientation: list[str]
    spacing: list[str]
    positions: list[list[str]]
    thickness: str


def _plane(affine: np.ndarray, shape: Sequence[int], subject: str) -> _Plane:
    """Image-plane attributes for a RAS affine; raise ``ValueError`` for sheared grids."""
    lps = LPS_TO_RAS @ np.asarray(affine, float)
    sizes = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / sizes[0], lps[:3, 1] / sizes[1]
    normal = np.cross(row, col)
    if abs(row @ col) > 1e-6 or abs(abs(normal @ lps[:3, 2] / sizes[2]) - 1) > 1e-6:
        raise ValueError(f"subject {subject}: the affine is sheared; DICOM needs orthogonal axes")
    positions = [[_ds(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]] for k in range(shape[2])]
    return _Plane(
        orientation=[_ds(v) for v in (*row, *col)],
        spacing=[_ds(sizes[1]), _ds(sizes[0])],
        positions=positions,
        thickness=_ds(sizes[2]),
    )


@dataclass(frozen=True)
class _Identity:
    """UIDs and names of one subject's written study."""

    patient: str
    study: str
    ct_series: str
    seg_series: str
    frame: str

    @classmethod
    def of(cls, subject: str) -> _Identity:
        return cls(
            subject,
            _uid(subject, "study"),
            _uid(subject, "ct-series"),
            _uid(subject, "seg-series"),
            _uid(subject, "frame-of-reference"),
        )


def _study_module(ds: Dataset, ident: _Identity) -> None:
    ds.PatientID = ident.patient
    ds.PatientName = f"{ident.patient}^"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = ident.study
    ds.StudyDate = WRITER_STUDY_DATE
    ds.StudyTime = "000000"
    ds.StudyID = "1"
    ds.StudyDescription = "Spine CT"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""


def ct_datasets(subject: SubjectVolumes) -> list[Dataset]:
    """The CT slices of a subject as DICOM datasets (int16 HU, one per ``ct[:, :, k]``)."""
    ct = np.asarray(subject.ct)
    if ct.ndim != 3:
        raise ValueError(f"subject {subject.subject}: CT must be 3D, got shape {ct.shape}")
    if np.issubdtype(ct.dtype, np.floating) and not np.isfinite(ct).all():
        raise ValueError(f"subject {subject.subject}: CT has NaN or infinite voxels")
    info = np.iinfo(np.int16)
    if ct.min() < info.min or ct.max() > info.max:
        raise ValueError(f"subject {subject.subject}: CT values do not fit int16 HU")
    hu = np.round(ct).astype(np.int16)
    plane = _plane(subject.affine, ct.shape, subject.subject)
    ident = _Identity.of(subject.subject)
    out = []
    for k in range(ct.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid(subject.subject, "ct", str(k))
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        _study_module(ds, ident)
        ds.Modality = "CT"
        ds.Manufacturer = "wsbench"
        ds.SeriesInstanceUID = ident.ct_series
        ds.SeriesNumber = 1
        ds.SeriesDescription = "CT"
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = ident.frame
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = plane.positions[k]
        ds.ImageOrientationPatient = plane.orientation
        ds.PixelSpacing = plane.spacing
        ds.SliceThickness = plane.thickness
        ds.SpacingBetweenSlices = plane.thickness
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(ct.shape[1]), int(ct.shape[0])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "0", "HU"
        ds.KVP = ""
        ds.PixelData = np.ascontiguousarray(hu[:, :, k].T).tobytes()
        out.append(ds)
    return out


def _vertebra_code(level: str) -> Any:
    """SNOMED CT code of a level's vertebra (generic 'Vertebra' where pydicom has none)."""
    try:
        return getattr(codes.SCT, f"{level}Vertebra")
    except AttributeError:
        return codes.SCT.Vertebra


def _finalise(seg: hd.seg.Segmentation, ident: _Identity, role: str) -> hd.seg.Segmentation:
    """Replace highdicom's time stamps and random UIDs with values derived from ``ident``."""
    seg.ContentDate, seg.ContentTime = WRITER_STUDY_DATE, "000000"
    for name in ("SeriesDate", "InstanceCreationDate"):
        if name in seg:
            setattr(seg, name, WRITER_STUDY_DATE)
    for name in ("SeriesTime", "InstanceCreationTime"):
        if name in seg:
            setattr(seg, name, "000000")
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{WRITER_STUDY_DATE}000000"
    for i, item in enumerate(seg.get("DimensionOrganizationSequence", [])):
        new = _uid(ident.patient, role, "dimension-organization", str(i))
        old = item.DimensionOrganizationUID
        item.DimensionOrganizationUID = new
        for index in seg.get("DimensionIndexSequence", []):
            if index.get("DimensionOrganizationUID") == old:
                index.DimensionOrganizationUID = new
    return seg


def vertebra_seg(subject: SubjectVolumes, sources: Sequence[Dataset]) -> hd.seg.Segmentation:
    """A DICOM-SEG with one segment per vertebra of ``subject.vert`` ("<level> vertebra").

    Segments are numbered 1… in cranio-caudal order of the levels present, so the same level
    has different numbers in different subjects (as in the TCIA collection).
    """
    vert = np.asarray(subject.vert)
    if vert.shape != np.asarray(subject.ct).shape:
        raise ValueError(
            f"subject {subject.subject}: vert shape {vert.shape} differs from CT {subject.ct.shape}"
        )
    present = [int(n) for n in np.unique(vert) if n]
    unknown = [n for n in present if n not in LEVEL_NAMES]
    if unknown:
        raise ValueError(f"subject {subject.subject}: vert labels {unknown} are not VerSe levels")
    if not present:
        raise ValueError(f"subject {subject.subject}: the vertebra mask is empty")
    levels = sorted((LEVEL_NAMES[n] for n in present), key=lambda lv: LEVEL_NUMBERS[lv])
    lookup = np.zeros(max(LEVEL_NAMES) + 1, dtype=np.uint8)
    for number, level in enumerate(levels, start=1):
        lookup[LEVEL_NUMBERS[level]] = number
    frames = lookup[vert].transpose(2, 1, 0)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{level} vertebra",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=_vertebra_code(level),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, level in enumerate(levels, start=1)
    ]
    ident = _Identity.of(subject.subject)
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.ascontiguousarray(frames),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=ident.seg_series,
        series_number=300,
        sop_instance_uid=_uid(subject.subject, "seg"),
        instance_number=1,
        manufacturer="wsbench",
        manufacturer_model_name="wsbench.dicomio",
        software_versions="1",
        device_serial_number="0",
        series_description="Segmentation",
        content_label="VERTEBRAE",
    )
    return _finalise(seg, ident, "seg")


def _save(ds: Dataset, path: Path) -> int:
    """Write a DICOM file (with preamble and file meta); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def _nbia_date(dicom_date: str) -> str:
    return f"{dicom_date[4:6]}-{dicom_date[6:8]}-{dicom_date[:4]}"


def _series_folders(root: Path, ident: _Identity, layout: str) -> tuple[Path, Path]:
    """(CT folder, SEG folder) of a subject in the NBIA or IDC layout."""
    if layout == "nbia":
        study = (
            root / COLLECTION / ident.patient
            / f"{_nbia_date(WRITER_STUDY_DATE)}-NA-Spine CT-{ident.study[-5:]}"
        )  # fmt: skip
        return (
            study / f"1.000000-CT-{ident.ct_series[-5:]}",
            study / f"300.000000-Segmentation-{ident.seg_series[-5:]}",
        )
    if layout == "idc":
        study = root / IDC_COLLECTION / ident.patient / ident.study
        return study / f"CT_{ident.ct_series}", study / f"SEG_{ident.seg_series}"
    raise ValueError(f"layout {layout!r} is neither 'nbia' nor 'idc'")


def level_text(levels: Sequence[str]) -> str:
    """A clinical-sheet level list in cranio-caudal order (``"T1, T2, L3"``)."""
    return ", ".join(sorted(levels, key=lambda lv: LEVEL_NUMBERS[lv]))


def clinical_row(subject: SubjectVolumes) -> dict[str, str] | None:
    """The clinical-sheet row of a subject; ``None`` when no vertebra has a known label.

    Malignant levels go to ``Vertebrae with Lesions`` and, with a phenotype, to that column; a
    known-healthy level is listed nowhere (the sheet's meaning of healthy). A subject mixing
    known and unknown labels cannot be expressed and raises ``ValueError``.
    """
    known = [v for v in subject.vertebrae if v.label is not None]
    if not known:
        return None
    if len(known) != len(subject.vertebrae):
        raise ValueError(
            f"subject {subject.subject}: the clinical sheet cannot mark some vertebrae unlabeled "
            "(a segmented level it does not list is healthy); label all or none"
        )
    malignant = [v for v in known if v.label == WeakLabel.MALIGNANT]
    row = {"Case": subject.subject, "Primary cancer": ""}
    row["Vertebrae with Lesions"] = level_text([v.level for v in malignant])
    for column, phenotype in PHENOTYPE_COLUMNS.items():
        row[column] = level_text([v.level for v in malignant if v.phenotype == phenotype])
    return row


def write_clinical_xlsx(path: Path, rows: Sequence[Mapping[str, str]]) -> None:
    """Write the clinical spreadsheet (sheet :data:`CLINICAL_SHEET`) with fixed zip timestamps."""
    columns = ["Case", "Primary cancer", *LEVEL_COLUMNS]
    table = pd.DataFrame(list(rows), columns=columns)
    buffer = io.BytesIO()
    with pd.ExcelWriter(buffer, engine="openpyxl") as writer:
        table.to_excel(writer, sheet_name=CLINICAL_SHEET, index=False)
    _write_stable_zip(path, buffer.getvalue())


def _write_stable_zip(path: Path, data: bytes) -> None:
    """Re-pack an OOXML zip with fixed member times and document dates."""
    out = io.BytesIO()
    stamp = re.compile(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)")
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "docProps/core.xml":
                content = stamp.sub(rb"\g<1>2000-01-01T00:00:00Z\g<2>", content)
            info = zipfile.ZipInfo(item.filename, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, content)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue())


def write_tcia(
    root: Path,
    subjects: Sequence[SubjectVolumes],
    *,
    layout: str = "nbia",
    lesions_dir: Path | None = None,
) -> None:
    """Write subjects as a Spine-Mets-CT-SEG download under ``root``.

    Per subject (PatientID = ``subject.subject``): a CT series (int16 HU, one file per
    ``ct[:, :, k]``) and a DICOM-SEG with one segment per vertebra of ``vert`` labelled
    ``"<level> vertebra"``. ``layout="nbia"`` gives the NBIA Data Retriever tree
    ``Spine-Mets-CT-SEG/<PatientID>/<date>-NA-<study>-<uid5>/<n>.000000-<series>-<uid5>/1-<k>.dcm``
    plus ``metadata.csv``; ``layout="idc"`` the idc-index tree
    ``spine_mets_ct_seg/<PatientID>/<StudyUID>/<Modality>_<SeriesUID>/<SOPInstanceUID>.dcm``.
    ``Spine-Mets-CT-SEG_Clinical.xlsx`` (sheet ``Spine-Mets-CT-SEG``) lists the malignant levels
    per case (see :func:`clinical_row`). UIDs derive from the subject id, so the same input gives
    the same bytes. ``subreg`` is not written (the collection has whole-vertebra masks only);
    ``lesion`` maps are written as ``<lesions_dir>/<PatientID>.nii.gz`` on the CT grid when
    ``lesions_dir`` is given.
    """
    root = Path(root)
    metadata, clinical = [], []
    for subject in subjects:
        ident = _Identity.of(subject.subject)
        ct_dir, seg_dir = _series_folders(root, ident, layout)
        slices = ct_datasets(subject)
        sizes = 0
        for k, ds in enumerate(slices):
            name = f"1-{k + 1:03d}.dcm" if layout == "nbia" else f"{ds.SOPInstanceUID}.dcm"
            sizes += _save(ds, ct_dir / name)
        seg = vertebra_seg(subject, slices)
        seg_name = "1-1.dcm" if layout == "nbia" else f"{seg.SOPInstanceUID}.dcm"
        seg_size = _save(seg, seg_dir / seg_name)
        metadata.append(_metadata_row(root, ct_dir, slices[0], len(slices), sizes))
        metadata.append(_metadata_row(root, seg_dir, seg, 1, seg_size))
        row = clinical_row(subject)
        if row is not None:
            clinical.append(row)
        if lesions_dir is not None and subject.lesion is not None:
            lesion = np.asarray(subject.lesion, np.uint8)
            write_nifti_gz(Path(lesions_dir) / f"{subject.subject}.nii.gz", lesion, subject.affine)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "nbia":
        pd.DataFrame(metadata, columns=list(METADATA_COLUMNS)).to_csv(
            root / "metadata.csv", index=False, lineterminator="\n"
        )
    write_clinical_xlsx(root / CLINICAL_FILE, clinical)


def _metadata_row(root: Path, folder: Path, ds: Dataset, count: int, size: int) -> dict[str, Any]:
    """One ``metadata.csv`` row of the NBIA Data Retriever."""
    sop_class = pydicom.uid.UID(ds.SOPClassUID)
    return {
        "Series UID": ds.SeriesInstanceUID,
        "Collection": COLLECTION,
        "3rd Party Analysis": "NO",
        "Data Description URI": "https://doi.org/10.7937/kh36-ds04",
        "Subject ID": ds.PatientID,
        "Study UID": ds.StudyInstanceUID,
        "Study Description": ds.get("StudyDescription", ""),
        "Study Date": _nbia_date(WRITER_STUDY_DATE),
        "Series Description": ds.get("SeriesDescription", ""),
        "Manufacturer": ds.get("Manufacturer", ""),
        "Modality": ds.Modality,
        "SOP Class Name": sop_class.name,
        "SOP Class UID": str(sop_class),
        "Number of Images": count,
        "File Size": size,
        "File Location": "./" + folder.relative_to(root).as_posix(),
        "Download Timestamp": "",
    }


# --- predictions as DICOM-SEG --------------------------------------------------------------------


def write_prediction_seg(
    path: Path,
    labels: np.ndarray,
    ct: CtVolume,
    *,
    method: str = "wsbench",
    version: str = "1",
) -> Path:
    """Write a predicted lesion label map (0/1/2 on the CT grid) as a DICOM-SEG on ``ct``.

    ``labels`` is ``[column, row, slice]`` like ``ct.hu`` (e.g. from
    :func:`wsbench.preprocess.mask_to_source` with the crop geometry). Segment 1 is
    ``"lytic lesion"``, segment 2 ``"blastic lesion"``; the SEG references the CT series and
    its frame of reference so viewers overlay it. Returns ``path``.
    """
    labels = np.asarray(labels)
    if labels.shape != ct.shape:
        raise ValueError(f"label map shape {labels.shape} is not the CT grid {ct.shape}")
    values = set(np.unique(labels).tolist())
    if not values <= {0, LYTIC, BLASTIC}:
        raise ValueError(f"label map values {sorted(values)} are not within 0/1/2")
    algorithm = hd.AlgorithmIdentificationSequence(
        name=method, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.BonyMetastasis,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value, label in LESION_SEGMENTS.items()
    ]
    ident = _Identity.of(ct.patient_id or ct.series_uid)
    seg = hd.seg.Segmentation(
        source_images=ct.headers,
        pixel_array=np.ascontiguousarray(labels.astype(np.uint8).transpose(2, 1, 0)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid(ct.series_uid, method, version, "prediction-series"),
        series_number=900,
        sop_instance_uid=_uid(ct.series_uid, method, version, "prediction"),
        instance_number=1,
        manufacturer="wsbench",
        manufacturer_model_name=method,
        software_versions=version,
        device_serial_number="0",
        series_description=f"{method} lesions",
        content_label="LESIONS",
        omit_empty_frames=bool(values - {0}),
    )
    seg = _finalise(seg, ident, f"prediction-{method}")
    _save(seg, Path(path))
    return Path(path)
