"""DICOM I/O: CT series, DICOM-SEG vertebra masks, and predictions written as DICOM-SEG.

Arrays follow the nibabel convention used everywhere in wsbench: a CT volume is indexed
``[column, row, slice]`` of the DICOM frames and its ``affine`` maps voxel indices to RAS
millimetres. DICOM itself is LPS; :data:`LPS_TO_RAS` converts between the two.

* :func:`read_ct_series` reads a CT series: slices sorted by their position along the slice
  normal, RescaleSlope/Intercept applied (HU), and every problem (unreadable file, missing or
  inconsistent slice, gap in the slice positions) raised as :class:`DicomError` naming the file.
* :func:`read_seg_levels` decodes a DICOM-SEG with highdicom onto a CT grid, mapping segments to
  vertebra levels by their SegmentLabel (``"L3 vertebra"``), never by segment number.
* :func:`scan_series` lists the series under a folder from their headers.
* :func:`write_prediction_seg` stores a predicted lesion label map as a DICOM-SEG on its CT series;
  :func:`derived_uid`, :class:`DicomIdentity`, :func:`fill_study_module`, :func:`fix_seg_identity`
  and :func:`save_dicom` make written files deterministic (same input, same bytes).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from wsbench.contract import BLASTIC, LYTIC, Scope, Skipped
from wsbench.data.volumes import LEVEL_NUMBERS

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) → nibabel world coordinates (RAS); its own inverse."""

SLICE_GAP_TOLERANCE = 0.1
"""Largest relative deviation of a slice step from the median step before a slice counts as
missing."""

GEOMETRY_TOLERANCE_MM = 1e-3
"""Tolerance (mm, direction cosines) when comparing DICOM geometries."""

WRITER_STUDY_DATE = "20000101"
"""Study and content date of every DICOM file wsbench writes (fixed, so that the same input
gives the same bytes; TCIA data are de-identified with shifted dates too)."""

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


def _present(ds: Dataset, name: str) -> bool:
    """True when ``ds`` has attribute ``name`` with a value."""
    return name in ds and ds[name].value not in (None, "")


def _required(ds: Dataset, path: Path, *names: str) -> None:
    missing = [n for n in names if not _present(ds, n)]
    if missing:
        raise DicomError(
            f"{path}: missing DICOM attribute(s) {', '.join(missing)}; re-download the file"
        )


def _numbers(ds: Dataset, path: Path, name: str, count: int) -> np.ndarray:
    """The ``count`` finite numbers of attribute ``name``; :class:`DicomError` naming the file
    when the value is anything else."""
    value = ds[name].value
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        numbers = np.array([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        numbers = np.array([])
    if numbers.shape != (count,) or not np.isfinite(numbers).all():
        shown = str(value)[:80]
        raise DicomError(
            f"{path}: {name} {shown!r} is not {count} finite number(s); the header is damaged, "
            "re-download the file"
        )
    return numbers


def _orientation(ds: Dataset, path: Path) -> np.ndarray:
    """ImageOrientationPatient as six direction cosines: two orthogonal unit vectors."""
    cosines = _numbers(ds, path, "ImageOrientationPatient", 6)
    row, col = cosines[:3], cosines[3:]
    lengths = np.array([np.linalg.norm(row), np.linalg.norm(col)])
    if (np.abs(lengths - 1) > GEOMETRY_TOLERANCE_MM).any() or abs(row @ col) > (
        GEOMETRY_TOLERANCE_MM
    ):
        raise DicomError(
            f"{path}: ImageOrientationPatient {cosines.tolist()} is not two orthogonal unit "
            "vectors; the header is damaged, re-download the file"
        )
    return cosines


def _pixel_spacing(ds: Dataset, path: Path) -> np.ndarray:
    """PixelSpacing (row, column) in mm, both positive."""
    spacing = _numbers(ds, path, "PixelSpacing", 2)
    if (spacing <= 0).any():
        raise DicomError(
            f"{path}: PixelSpacing {spacing.tolist()} is not positive; the header is damaged, "
            "re-download the file"
        )
    return spacing


def _rescale(ds: Dataset, path: Path) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (1 and 0 where absent); a zero slope is refused."""
    slope = _numbers(ds, path, "RescaleSlope", 1)[0] if _present(ds, "RescaleSlope") else 1.0
    intercept = (
        _numbers(ds, path, "RescaleIntercept", 1)[0] if _present(ds, "RescaleIntercept") else 0.0
    )
    if slope == 0:
        raise DicomError(
            f"{path}: RescaleSlope is 0 (every voxel would be {intercept:g} HU); the header is "
            "damaged, re-download the file"
        )
    return float(slope), float(intercept)


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (LPS) of frames with ImageOrientationPatient ``orientation``."""
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


# Not highdicom.get_volume_from_series: it gives the same HU and affine on well-formed series,
# but refuses series read here (an empty SOPClassUID as in the real test sample, no
# FrameOfReferenceUID, PixelSpacing differing by 1e-7) and drops an in-plane drift of the
# slice positions from the affine.
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
    orientation, spacing = _orientation(first, first_path), _pixel_spacing(first, first_path)
    for ds, path in zip(datasets[1:], paths[1:], strict=True):
        for name in ("SeriesInstanceUID", "Rows", "Columns"):
            if ds.get(name) != first.get(name):
                raise DicomError(
                    f"{path}: {name} {ds.get(name)} differs from {first.get(name)} in "
                    f"{first_path}; a series folder must hold one CT series"
                )
        for name, value, expected in (
            ("ImageOrientationPatient", _orientation(ds, path), orientation),
            ("PixelSpacing", _pixel_spacing(ds, path), spacing),
        ):
            if not np.allclose(value, expected, atol=GEOMETRY_TOLERANCE_MM):
                raise DicomError(f"{path}: {name} differs from {first_path}")
    normal = slice_normal(orientation)
    position = np.array(
        [_numbers(ds, p, "ImagePositionPatient", 3) for ds, p in zip(datasets, paths, strict=True)]
    )
    order = np.argsort(position @ normal, kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [paths[i] for i in order]
    position = position[order]
    _check_positions(position, normal, paths)

    columns = []
    exact = True
    for ds, path in zip(datasets, paths, strict=True):
        slope, intercept = _rescale(ds, path)
        try:
            stored = ds.pixel_array
        except Exception as exc:  # decoder errors vary by transfer syntax and plugin
            raise DicomError(
                f"{path}: cannot decode the pixel data ({ds.file_meta.TransferSyntaxUID.name}): "
                f"{exc}; re-download the file"
            ) from None
        if stored.shape != (int(first.Rows), int(first.Columns)):
            raise DicomError(f"{path}: pixel data shape {stored.shape} is not Rows × Columns")
        exact &= slope.is_integer() and intercept.is_integer()
        column = stored.T.astype(np.float64) * slope + intercept
        if not np.isfinite(column.astype(np.float32)).all():
            raise DicomError(
                f"{path}: RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give values "
                "beyond float32; the header is damaged, re-download the file"
            )
        columns.append(column)
        del ds.PixelData
    hu = np.stack(columns, axis=-1)
    info = np.iinfo(np.int16)
    if exact and hu.min() >= info.min and hu.max() <= info.max:
        hu = hu.astype(np.int16)
    else:
        hu = hu.astype(np.float32)
    return CtVolume(
        hu=hu,
        affine=_affine_from_slices(orientation, spacing, position),
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
    irregular = [
        i for i, step in enumerate(along) if abs(step - median) > SLICE_GAP_TOLERANCE * median
    ]
    if irregular:
        i, *others = irregular
        names = list(dict.fromkeys(paths[j + k].name for j in others for k in (0, 1)))
        also = f"; steps are also irregular at {', '.join(names)}" if names else ""
        raise DicomError(
            f"{paths[i + 1]}: {along[i]:.3g} mm from the previous slice {paths[i].name} where the "
            f"series steps {median:.3g} mm; a slice file is missing or the series mixes stacks"
            f"{also}"
        )
    off_axis = np.linalg.norm(steps - along[:, None] * normal, axis=1)
    if off_axis.max() > max(GEOMETRY_TOLERANCE_MM, 0.01 * median):
        worst = int(np.argmax(off_axis))
        raise DicomError(
            f"{paths[worst + 1]}: slice shifted {off_axis[worst]:.3g} mm in plane from "
            f"{paths[worst].name} (gantry tilt or mixed stacks); resample the series first"
        )


def _affine_from_slices(
    orientation: np.ndarray, spacing: np.ndarray, position: np.ndarray
) -> np.ndarray:
    """RAS affine of the ``[column, row, slice]`` grid of slices at sorted ``position``."""
    row_spacing, column_spacing = spacing
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
    """SeriesInstanceUIDs a SEG's ReferencedSeriesSequence names (blank ones left out)."""
    found = (str(item.get("SeriesInstanceUID", "")).strip() for item in ds.get(
        "ReferencedSeriesSequence", []))  # fmt: skip
    return [uid for uid in found if uid]


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
    except Exception as exc:  # highdicom raises several types for damaged frame headers
        raise DicomError(
            f"{path}: the SEG frames do not lie on the CT grid of series {ct.series_uid} ({exc}); "
            "re-download the SEG or pair it with its own CT"
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


def _header(path: Path) -> SeriesInfo:
    """The :class:`SeriesInfo` of one file (``files`` = that file); :class:`DicomError` naming it
    when its header is damaged or lacks SeriesInstanceUID or Modality."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(SCAN_TAGS))
        info = SeriesInfo(
            uid=str(ds.get("SeriesInstanceUID", "")).strip(),
            modality=str(ds.get("Modality", "")).strip(),
            patient_id=str(ds.get("PatientID", "")),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")).strip(),
            references=tuple(seg_references(ds)),
            description=str(ds.get("SeriesDescription", "")),
            files=[path],
        )
    except Exception as exc:  # pydicom raises many types for a damaged header
        raise DicomError(f"{path}: unreadable DICOM header ({exc}); re-download the file") from None
    if not info.uid or not info.modality:
        blank = [
            n for n, v in (("SeriesInstanceUID", info.uid), ("Modality", info.modality)) if not v
        ]
        raise DicomError(
            f"{path}: {' and '.join(blank)} missing or blank (a damaged or cut-short file?), so "
            "its series is unknown; re-download the file"
        )
    return info


def scan_series(root: Path) -> tuple[list[SeriesInfo], list[Skipped]]:
    """Group the DICOM files under ``root`` by SeriesInstanceUID, reading headers only.

    A ``.dcm`` file that is not DICOM, a file with a damaged header or without
    SeriesInstanceUID or Modality, and a file whose Modality or PatientID differs from most files
    of its series are reported as :class:`Skipped` (scope file) and left out. Suffix-less files
    that are not DICOM (a README) are not data and are passed over.
    """
    groups: dict[str, list[SeriesInfo]] = defaultdict(list)
    skipped: list[Skipped] = []
    for path in sorted(p for p in Path(root).rglob("*") if _dicom_candidate(p)):
        if not pydicom.misc.is_dicom(path):
            if path.suffix.lower() == ".dcm":
                skipped.append(
                    Skipped(
                        str(path),
                        "not a DICOM file (no DICM preamble); re-download or remove it",
                        Scope.FILE,
                    )
                )
            continue
        try:
            info = _header(path)
        except DicomError as exc:
            skipped.append(Skipped(str(path), str(exc).removeprefix(f"{path}: "), Scope.FILE))
            continue
        groups[info.uid].append(info)
    series = []
    for uid, members in sorted(groups.items()):
        kinds = Counter((m.modality, m.patient_id) for m in members)
        (modality, patient), _ = kinds.most_common(1)[0]
        for odd in members:
            if (odd.modality, odd.patient_id) != (modality, patient):
                skipped.append(
                    Skipped(
                        str(odd.files[0]),
                        f"Modality {odd.modality!r} and PatientID {odd.patient_id!r} differ from "
                        f"the other files' {modality!r} and {patient!r} in series {uid}; left "
                        "out, re-download the file",
                        Scope.FILE,
                    )
                )
        members = [m for m in members if (m.modality, m.patient_id) == (modality, patient)]
        head = members[0]
        references = sorted({r for m in members for r in m.references})
        series.append(
            replace(head, references=tuple(references), files=[m.files[0] for m in members])
        )
    return series, skipped


# --- writing -------------------------------------------------------------------------------------


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` only (same parts → same UID)."""
    return generate_uid(entropy_srcs=["wsbench", *parts])


def ds_number(value: float) -> str:
    return format_number_as_ds(float(value))


@dataclass(frozen=True)
class DicomIdentity:
    """UIDs and names of one subject's written study."""

    patient: str
    study: str
    ct_series: str
    seg_series: str
    frame: str

    @classmethod
    def of(cls, subject: str) -> DicomIdentity:
        return cls(
            subject,
            derived_uid(subject, "study"),
            derived_uid(subject, "ct-series"),
            derived_uid(subject, "seg-series"),
            derived_uid(subject, "frame-of-reference"),
        )


def fill_study_module(ds: Dataset, ident: DicomIdentity) -> None:
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


def fix_seg_identity(
    seg: hd.seg.Segmentation, ident: DicomIdentity, role: str
) -> hd.seg.Segmentation:
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
        new = derived_uid(ident.patient, role, "dimension-organization", str(i))
        old = item.DimensionOrganizationUID
        item.DimensionOrganizationUID = new
        for index in seg.get("DimensionIndexSequence", []):
            if index.get("DimensionOrganizationUID") == old:
                index.DimensionOrganizationUID = new
    return seg


def save_dicom(ds: Dataset, path: Path) -> int:
    """Write a DICOM file (with preamble and file meta); returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


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
    :func:`wsbench.data.preprocess.mask_to_source` with the crop geometry). Segment 1 is
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
    ident = DicomIdentity.of(ct.patient_id or ct.series_uid)
    seg = hd.seg.Segmentation(
        source_images=ct.headers,
        pixel_array=np.ascontiguousarray(labels.astype(np.uint8).transpose(2, 1, 0)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=derived_uid(ct.series_uid, method, version, "prediction-series"),
        series_number=900,
        sop_instance_uid=derived_uid(ct.series_uid, method, version, "prediction"),
        instance_number=1,
        manufacturer="wsbench",
        manufacturer_model_name=method,
        software_versions=version,
        device_serial_number="0",
        series_description=f"{method} lesions",
        content_label="LESIONS",
        omit_empty_frames=bool(values - {0}),
    )
    seg = fix_seg_identity(seg, ident, f"prediction-{method}")
    save_dicom(seg, Path(path))
    return Path(path)
