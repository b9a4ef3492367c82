"""The phantom in the TCIA Spine-Mets-CT-SEG layouts (NBIA Data Retriever or IDC): DICOM CT
series, a vertebra DICOM-SEG per subject, ``metadata.csv`` and the clinical spreadsheet.

:func:`write_tcia` writes :class:`~wsbench.data.volumes.SubjectVolumes`; same input → same bytes.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from wsbench.contract import WeakLabel
from wsbench.data.dicom import (
    LPS_TO_RAS,
    WRITER_STUDY_DATE,
    DicomIdentity,
    derived_uid,
    ds_number,
    fill_study_module,
    fix_seg_identity,
    save_dicom,
)
from wsbench.data.nifti import write_nifti_gz
from wsbench.data.volumes import LEVEL_NAMES, LEVEL_NUMBERS, SubjectVolumes
from wsbench.datasets.tcia.layout import (
    CLINICAL_FILE,
    CLINICAL_SHEET,
    COLLECTION,
    IDC_COLLECTION,
    LEVEL_COLUMNS,
    METADATA_COLUMNS,
    PHENOTYPE_COLUMNS,
)

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
"""Timestamp of every member of the written xlsx (zip), for byte-identical output."""


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
    positions = [
        [ds_number(v) for v in lps[:3, :3] @ [0, 0, k] + lps[:3, 3]] for k in range(shape[2])
    ]
    return _Plane(
        orientation=[ds_number(v) for v in (*row, *col)],
        spacing=[ds_number(sizes[1]), ds_number(sizes[0])],
        positions=positions,
        thickness=ds_number(sizes[2]),
    )


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
    ident = DicomIdentity.of(subject.subject)
    out = []
    for k in range(ct.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = derived_uid(subject.subject, "ct", str(k))
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        fill_study_module(ds, ident)
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
    ident = DicomIdentity.of(subject.subject)
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=np.ascontiguousarray(frames),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=ident.seg_series,
        series_number=300,
        sop_instance_uid=derived_uid(subject.subject, "seg"),
        instance_number=1,
        manufacturer="wsbench",
        manufacturer_model_name="wsbench.data.dicom",
        software_versions="1",
        device_serial_number="0",
        series_description="Segmentation",
        content_label="VERTEBRAE",
    )
    return fix_seg_identity(seg, ident, "seg")


def _nbia_date(dicom_date: str) -> str:
    return f"{dicom_date[4:6]}-{dicom_date[6:8]}-{dicom_date[:4]}"


def _series_folders(root: Path, ident: DicomIdentity, layout: str) -> tuple[Path, Path]:
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
        ident = DicomIdentity.of(subject.subject)
        ct_dir, seg_dir = _series_folders(root, ident, layout)
        slices = ct_datasets(subject)
        sizes = 0
        for k, ds in enumerate(slices):
            name = f"1-{k + 1:03d}.dcm" if layout == "nbia" else f"{ds.SOPInstanceUID}.dcm"
            sizes += save_dicom(ds, ct_dir / name)
        seg = vertebra_seg(subject, slices)
        seg_name = "1-1.dcm" if layout == "nbia" else f"{seg.SOPInstanceUID}.dcm"
        seg_size = save_dicom(seg, seg_dir / seg_name)
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
