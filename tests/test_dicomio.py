"""DICOM CT reading, DICOM-SEG decoding by label, the TCIA writers and prediction SEGs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from wsbench.contract import Phenotype, WeakLabel
from wsbench.data.dicom import (
    DicomError,
    read_ct_series,
    read_seg_levels,
    scan_series,
    segment_level,
    write_prediction_seg,
)
from wsbench.data.volumes import LEVEL_NUMBERS, SubjectVolumes, VertebraLabel
from wsbench.datasets.phantom.tcia_writer import write_tcia
from wsbench.datasets.tcia.layout import CLINICAL_FILE, CLINICAL_SHEET

BOX_AFFINE = np.array(
    [[1.0, 0, 0, -24.0], [0, 1.0, 0, -30.0], [0, 0, 1.5, -60.0], [0, 0, 0, 1]], dtype=float
)
"""RAS grid of 1 × 1 × 1.5 mm; with :data:`BOX_SHAPE` it spans x∈[-24,24), y∈[-30,30),
z∈[-60,60)."""
BOX_SHAPE = (48, 60, 80)


def box_spine(
    name: str,
    labels: dict[str, tuple[WeakLabel | None, Phenotype | None]] | None = None,
    affine: np.ndarray = BOX_AFFINE,
    shape: tuple[int, int, int] = BOX_SHAPE,
) -> SubjectVolumes:
    """Two stacked box vertebrae L1 (upper) and L2 with a posterior ring around a canal.

    World mm (RAS): bodies x∈[-12,12), y∈[2,22), z∈[±2, ±24) (L1 above, L2 below z = 0);
    ring x∈[-9,9), y∈[-12,2) minus the canal x∈[-5,5), y∈[-9,-1). CT: 20 HU soft tissue,
    260 HU body, 520 HU ring, + 0.3·y for a gradient.
    """
    x, y, z = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T).T
    vert = np.zeros(x.size, np.uint8)
    ct = np.full(x.size, 20.0)
    for level, (z0, z1) in {"L1": (2, 24), "L2": (-24, -2)}.items():
        slab = (z >= z0) & (z < z1)
        body = slab & (np.abs(x) < 12) & (y >= 2) & (y < 22)
        ring = slab & (np.abs(x) < 9) & (y >= -12) & (y < 2)
        ring &= ~((np.abs(x) < 5) & (y >= -9) & (y < -1))
        vert[body | ring] = LEVEL_NUMBERS[level]
        ct[body], ct[ring] = 260.0, 520.0
    ct += 0.3 * y
    labels = labels or {
        "L1": (WeakLabel.MALIGNANT, Phenotype.LYTIC),
        "L2": (WeakLabel.HEALTHY, None),
    }
    vertebrae = [VertebraLabel(level, *labels[level]) for level in ("L1", "L2")]
    return SubjectVolumes(
        name, np.round(ct).astype(np.int16).reshape(shape), affine, vert.reshape(shape), vertebrae
    )


def canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine in RAS+ axis order (to compare grids that differ by flips only)."""
    image = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    return np.asarray(image.dataobj), image.affine


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def written(root: Path) -> tuple[list[Path], Path]:
    """(CT files, SEG file) of the single subject written under ``root``."""
    series, skipped = scan_series(root)
    assert skipped == []
    ct = next(s for s in series if s.modality == "CT")
    seg = next(s for s in series if s.modality == "SEG")
    return ct.files, seg.files[0]


def test_write_tcia_nbia_layout_round_trip_and_determinism(tmp_path: Path):
    subject = box_spine("00007")
    write_tcia(tmp_path / "a", [subject])
    write_tcia(tmp_path / "b", [subject])
    files = tree_digest(tmp_path / "a")
    assert files == tree_digest(tmp_path / "b")
    assert {Path(f).parts[0] for f in files} == {"Spine-Mets-CT-SEG", "metadata.csv", CLINICAL_FILE}
    dicoms = sorted(f for f in files if f.endswith(".dcm"))
    assert len(dicoms) == BOX_SHAPE[2] + 1
    assert all(Path(f).parts[1] == "00007" and len(Path(f).parts) == 5 for f in dicoms)

    ct_files, seg_file = written(tmp_path / "a")
    ct = read_ct_series(ct_files)
    assert ct.hu.dtype == np.int16 and ct.patient_id == "00007"
    np.testing.assert_array_equal(ct.hu, subject.ct)
    np.testing.assert_allclose(ct.affine, BOX_AFFINE, atol=1e-9)
    vert, problems = read_seg_levels(seg_file, ct)
    assert problems == []
    np.testing.assert_array_equal(vert, subject.vert)

    metadata = pd.read_csv(tmp_path / "a/metadata.csv", dtype=str)
    assert sorted(metadata["Modality"]) == ["CT", "SEG"]
    for location in metadata["File Location"]:
        assert (tmp_path / "a" / location).is_dir()
    sheet = pd.read_excel(tmp_path / "a" / CLINICAL_FILE, sheet_name=CLINICAL_SHEET, dtype=str)
    assert sheet.fillna("").to_dict(orient="records") == [
        {
            "Case": "00007",
            "Primary cancer": "",
            "Vertebrae with Lesions": "L1",
            "Blastic": "",
            "Lytic": "L1",
            "Mixed": "",
        }
    ]


def test_write_tcia_idc_layout_on_a_left_handed_grid(tmp_path: Path):
    psr = np.array([[0, 0, 1.0, -24.0], [-1.0, 0, 0, 30.0], [0, 1.5, 0, -60.0], [0, 0, 0, 1]])
    subject = box_spine("00008", affine=psr, shape=(60, 80, 48))
    write_tcia(tmp_path, [subject], layout="idc")
    ct_files, seg_file = written(tmp_path)
    parts = ct_files[0].relative_to(tmp_path).parts
    assert parts[:2] == ("spine_mets_ct_seg", "00008") and parts[3].startswith("CT_")
    assert not (tmp_path / "metadata.csv").exists()
    ct = read_ct_series(ct_files)
    vert, _ = read_seg_levels(seg_file, ct)
    for ours, theirs in ((ct.hu, subject.ct), (vert, subject.vert)):
        a, a_affine = canonical(ours, ct.affine)
        b, b_affine = canonical(theirs, psr)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a_affine, b_affine, atol=1e-9)


def test_write_tcia_refuses_what_it_cannot_store(tmp_path: Path):
    bad = box_spine("1")
    bad.ct = bad.ct.astype(np.float32)
    bad.ct[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="subject 1: CT has NaN"):
        write_tcia(tmp_path, [bad])
    half = box_spine("2", labels={"L1": (WeakLabel.MALIGNANT, None), "L2": (None, None)})
    with pytest.raises(ValueError, match="subject 2: the clinical sheet cannot mark"):
        write_tcia(tmp_path, [half])


@pytest.mark.parametrize(
    ("label", "level"),
    [("L3 vertebra", "L3"), ("t12 Vertebra", "T12"), ("C7", "C7"), ("vertebra L1", "L1"),
     ("Segment_1", None), ("L9 vertebra", None), ("sacrum", None)],
)  # fmt: skip
def test_segment_level(label: str, level: str | None):
    assert segment_level(label) == level


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_seg_segments_map_by_label_not_number(tmp_path: Path):
    subject = box_spine("00009")
    write_tcia(tmp_path, [subject])
    ct_files, seg_file = written(tmp_path)

    def swap(ds):  # L1 is segment 1, L2 segment 2: swap their labels
        ds.SegmentSequence[0].SegmentLabel = "L2 vertebra"
        ds.SegmentSequence[1].SegmentLabel = "L1 vertebra"

    _edit(seg_file, swap)
    ct = read_ct_series(ct_files)
    vert, _ = read_seg_levels(seg_file, ct)
    l1, l2 = LEVEL_NUMBERS["L1"], LEVEL_NUMBERS["L2"]
    np.testing.assert_array_equal(vert == l2, subject.vert == l1)
    np.testing.assert_array_equal(vert == l1, subject.vert == l2)


def test_seg_problems(tmp_path: Path):
    write_tcia(tmp_path, [box_spine("00010")])
    ct_files, seg_file = written(tmp_path)
    ct = read_ct_series(ct_files)

    _edit(seg_file, lambda ds: setattr(ds.SegmentSequence[1], "SegmentLabel", "Segment_2"))
    vert, problems = read_seg_levels(seg_file, ct)
    assert set(np.unique(vert)) == {0, LEVEL_NUMBERS["L1"]}
    assert [(p.where, p.reason) for p in problems] == [
        (f"{seg_file} segment 2", "label 'Segment_2' names no vertebra level")
    ]
    _edit(seg_file, lambda ds: setattr(ds.SegmentSequence[0], "SegmentLabel", "bone"))
    with pytest.raises(DicomError, match="no segment label names a vertebra level"):
        read_seg_levels(seg_file, ct)

    write_tcia(tmp_path / "other", [box_spine("00011")])
    other_files, other_seg = written(tmp_path / "other")
    with pytest.raises(DicomError, match=f"{other_seg}: references series .* not the CT series"):
        read_seg_levels(other_seg, ct)

    def shift(ds):  # move every frame 0.4 mm: not on the CT grid any more
        for frame in ds.PerFrameFunctionalGroupsSequence:
            position = frame.PlanePositionSequence[0]
            position.ImagePositionPatient = [float(v) + 0.4 for v in position.ImagePositionPatient]

    _edit(other_seg, shift)
    with pytest.raises(DicomError, match="do not lie on the CT grid"):
        read_seg_levels(other_seg, read_ct_series(other_files))


def test_ct_series_problems_name_the_file(tmp_path: Path):
    write_tcia(tmp_path, [box_spine("00012")])
    files, _ = written(tmp_path)
    with pytest.raises(DicomError, match=f"{files[11]}: .* a slice file is missing"):
        read_ct_series(files[:10] + files[11:])
    with pytest.raises(DicomError, match="same slice position"):
        read_ct_series([*files, files[3]])
    files[5].write_bytes(b"not dicom at all")
    with pytest.raises(DicomError, match=f"{files[5]}: not a readable DICOM file"):
        read_ct_series(files)
    data = files[7].read_bytes()
    files[7].write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError, match=str(files[7])):
        read_ct_series(files[6:9])
    _edit(files[20], lambda ds: setattr(ds, "PixelSpacing", [2.0, 2.0]))
    with pytest.raises(DicomError, match=f"{files[20]}: PixelSpacing differs"):
        read_ct_series(files[19:22])
    with pytest.raises(DicomError, match="at least two"):
        read_ct_series(files[30:31])


def test_prediction_seg_round_trip(tmp_path: Path):
    subject = box_spine("00013")
    write_tcia(tmp_path / "src", [subject])
    ct_files, _ = written(tmp_path / "src")
    ct = read_ct_series(ct_files)
    labels = np.zeros(ct.shape, np.uint8)
    labels[20:26, 40:46, 50:55] = 1
    labels[20:24, 35:38, 30:33] = 2
    path = write_prediction_seg(tmp_path / "pred.dcm", labels, ct, method="otsu", version="2")
    seg = hd.seg.segread(path)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "lytic lesion"),
        (2, "blastic lesion"),
    ]
    assert [r.SeriesInstanceUID for r in seg.ReferencedSeriesSequence] == [ct.series_uid]
    assert seg.FrameOfReferenceUID == ct.frame_of_reference_uid
    volume = seg.get_volume(combine_segments=True).match_geometry(ct.geometry())
    np.testing.assert_array_equal(np.asarray(volume.array).transpose(2, 1, 0), labels)
    first = path.read_bytes()
    write_prediction_seg(tmp_path / "pred.dcm", labels, ct, method="otsu", version="2")
    assert path.read_bytes() == first

    empty = write_prediction_seg(tmp_path / "empty.dcm", np.zeros_like(labels), ct)
    volume = hd.seg.segread(empty).get_volume(combine_segments=True)
    assert not np.asarray(volume.array).any()
    with pytest.raises(ValueError, match="not within 0/1/2"):
        write_prediction_seg(tmp_path / "bad.dcm", labels * 2, ct)
    with pytest.raises(ValueError, match="is not the CT grid"):
        write_prediction_seg(tmp_path / "bad.dcm", labels[:-1], ct)


def test_real_dicom_series_reads_as_hu(real_data: Path):
    folder = real_data / "totalseg" / "example_ct_dicom"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ct = read_ct_series(files[::-1])
    headers = [pydicom.dcmread(p) for p in files]
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    k, first = int(np.argmin(z)), headers[int(np.argmin(z))]
    assert ct.shape == (first.Columns, first.Rows, len(files))
    assert ct.affine[2, 2] == pytest.approx(2.0)  # slices 2 mm apart (3 mm thick)
    expected = first.pixel_array.T * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_array_equal(ct.hu[:, :, 0], expected)
    assert ct.files[0] == files[k]
    x, y, z0 = (float(v) for v in first.ImagePositionPatient)
    np.testing.assert_allclose(ct.affine[:3, 3], [-x, -y, z0])
    spacing = float(first.PixelSpacing[0])
    np.testing.assert_allclose(np.diag(ct.affine)[:2], [-spacing, -spacing])
