"""Fuzzing of DICOM headers (Hypothesis, a bounded number of examples): a CT series or a whole
TCIA download with one damaged header field either reads as before or is refused with a message
naming the damaged file; never an unrelated exception."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from test_dicomio import box_spine

from wsbench.contract import PreparedDataset, Scope
from wsbench.data.dicom import CtVolume, DicomError, read_ct_series, scan_series
from wsbench.datasets.phantom.tcia_writer import write_tcia
from wsbench.datasets.tcia import TciaDataset

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
"""Fixed examples (the same in every run), no deadline: file I/O times vary on shared CI. A
prepared download takes about a second, so that test draws fewer examples than the series one."""

CT_FIELDS = (
    "PixelSpacing", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness", "Rows",
    "Columns", "RescaleSlope", "RescaleIntercept", "Modality", "SeriesInstanceUID",
    "FrameOfReferenceUID", "PatientID", "StudyInstanceUID", "BitsAllocated", "PixelRepresentation",
)  # fmt: skip
SEG_FIELDS = (
    "Modality", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID", "Rows", "Columns",
    "ReferencedSeriesSequence", "SegmentLabel",
)  # fmt: skip

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -1.0, 1e-9, 1e9, 0.5, 1.0, 2.0]),
)
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\"))
VALUES = st.one_of(
    st.just(""),
    TEXT.map(lambda t: t[:60]),
    st.lists(NUMBERS, min_size=1, max_size=7).map(lambda v: "\\".join(f"{x:.9g}" for x in v)),
    st.integers(min_value=0, max_value=65535),
)
"""A damaged value: blank, text, a backslash-separated number list or an unsigned short."""


def put(ds: Dataset, name: str, value: str | int) -> None:
    """Overwrite attribute ``name`` with ``value``: integers with the attribute's own VR where it
    is US, anything else as LO text (any bytes a damaged file may hold)."""
    tag = pydicom.datadict.tag_for_keyword(name)
    if isinstance(value, int) and pydicom.datadict.dictionary_VR(tag) == "US":
        ds.add_new(tag, "US", value)
    else:
        ds.add_new(tag, "LO", str(value))


def damage(path: Path, name: str, value: str | int, implicit: bool) -> None:
    """Damage one field of the file (a SEG's first segment or reference for the sequence fields)
    and save it with explicit VR, or implicit VR so the reader applies the dictionary VR."""
    ds = pydicom.dcmread(path)
    if name == "SegmentLabel":
        put(ds.SegmentSequence[0], name, value)
    elif name == "ReferencedSeriesSequence":
        put(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", value)
    else:
        put(ds, name, value)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values it is asked to write
        ds.save_as(path, enforce_file_format=True)


def tiny_series(folder: Path, slices: int = 5) -> list[Path]:
    """A 6 × 4-pixel CT series of ``slices`` slices 2 mm apart, one file per slice."""
    folder.mkdir(parents=True)
    series, frame = generate_uid(), generate_uid()
    files = []
    for k in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Modality, ds.PatientID = "CT", "f1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            generate_uid(entropy_srcs=["fuzz-study"]),
            series,
            frame,
        )
        ds.ImagePositionPatient = [-3.0, -2.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = 4, 6
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (np.arange(24, dtype=np.int16).reshape(4, 6) + 100 * k).tobytes()
        path = folder / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def test_tiny_series_reads(tmp_path: Path):
    ct = read_ct_series(tiny_series(tmp_path / "ct"))
    assert ct.shape == (6, 4, 5) and ct.hu.dtype == np.int16
    np.testing.assert_array_equal(ct.hu[:, :, 2], np.arange(24).reshape(4, 6).T + 200 - 1024)
    np.testing.assert_allclose(ct.affine[:3, 3], [3.0, 2.0, 0.0])


@settings(FUZZ, max_examples=150)
@given(
    field=st.sampled_from(CT_FIELDS),
    value=VALUES,
    every_slice=st.booleans(),
    implicit=st.booleans(),
    data=st.data(),
)
def test_fuzzed_ct_header_reads_or_names_the_file(
    tmp_path_factory: pytest.TempPathFactory, field, value, every_slice, implicit, data
):
    files = tiny_series(tmp_path_factory.mktemp("fuzz") / "ct")
    damaged = files if every_slice else [data.draw(st.sampled_from(files), label="file")]
    for path in damaged:
        damage(path, field, value, implicit)
    try:
        ct = read_ct_series(files)
    except DicomError as exc:
        assert any(str(exc).startswith(f"{path}: ") for path in files), str(exc)
        assert str(exc).rstrip()[-1] not in ":,"
        return
    assert isinstance(ct, CtVolume) and ct.shape[2] == len(files)
    assert np.isfinite(ct.affine).all() and np.isfinite(ct.hu).all()


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-tcia") / "download"
    write_tcia(root, [box_spine("f1")], layout="idc")
    return root


def intact_levels(data: PreparedDataset) -> list[str]:
    return sorted(v.key.level for v in data.vertebrae)


@FUZZ
@given(
    seg=st.booleans(),
    data=st.data(),
    value=VALUES,
    implicit=st.booleans(),
)
def test_fuzzed_download_prepares_or_names_the_file(
    download: Path, tmp_path_factory: pytest.TempPathFactory, seg, data, value, implicit
):
    root = Path(shutil.copytree(download, tmp_path_factory.mktemp("fuzz") / "download"))
    series, _ = scan_series(root)
    modality = "SEG" if seg else "CT"
    files = next(s.files for s in series if s.modality == modality)
    path = data.draw(st.sampled_from(files), label="file")
    field = data.draw(st.sampled_from(SEG_FIELDS if seg else CT_FIELDS), label="field")
    damage(path, field, value, implicit)
    prepared = TciaDataset(root=root, cache_dir=root.parent / "cache").prepare()
    if intact_levels(prepared) == ["L1", "L2"]:
        return
    found = [f"{s.where}: {s.reason}" for s in prepared.skipped]
    assert any(path.name in text or text.startswith(f"{path.parent}: ") for text in found), found
    if not prepared.vertebrae:  # the patient is lost: a file-level record says so
        assert any(s.scope is Scope.FILE for s in prepared.skipped), found
