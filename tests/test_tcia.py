"""TCIA Spine-Mets-CT-SEG adapter: layouts, pairing, clinical sheet, bad inputs, real DICOM."""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import REAL_DATA
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid
from scipy import ndimage
from skimage.morphology import remove_small_holes
from test_dicomio import box_spine

from wsbench.contract import Phenotype, PreparedDataset, Scope, Split, WeakLabel
from wsbench.data.dicom import scan_series
from wsbench.data.nifti import write_nifti_gz
from wsbench.data.splits import seeded_split
from wsbench.data.volumes import LEVEL_NUMBERS
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.inhouse.layout import write_inhouse
from wsbench.datasets.phantom.tcia_writer import write_tcia
from wsbench.datasets.tcia import TciaDataset, derived_body_dice
from wsbench.datasets.tcia.clinical import parse_level_list, read_clinical
from wsbench.datasets.tcia.layout import CLINICAL_FILE, CLINICAL_SHEET
from wsbench.harness.params import ParameterError, dataset_options

REAL_PATIENT = "00042"


def prepare(root: Path, cache: Path | None = None, **options) -> PreparedDataset:
    return TciaDataset(root=root, cache_dir=cache, **options).prepare()


def problems(data: PreparedDataset) -> list[str]:
    return [f"{s.where}: {s.reason}" for s in data.skipped]


def labelled(data: PreparedDataset) -> dict[tuple[str, str], tuple]:
    return {(v.key.subject, v.key.level): (v.label, v.phenotype) for v in data.vertebrae}


def series_files(root: Path, modality: str) -> list[Path]:
    series, _ = scan_series(root)
    return next(s for s in series if s.modality == modality).files


def in_slice_order(files: list[Path]) -> list[Path]:
    return sorted(
        files, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
    )


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def write_sheet(path: Path, rows: list[dict[str, object]]) -> None:
    """A clinical spreadsheet as TCIA ships it (two sheets, extra columns), written with pandas."""
    columns = ["Case", "Age (Y)", "Sex", "Primary cancer", "Vertebrae with Lesions",
               "Blastic", "Lytic", "Mixed", "Comments/Fractures"]  # fmt: skip
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame({"Variable": columns}).to_excel(
            writer, sheet_name="Data Dictionary", index=False
        )
        pd.DataFrame(rows, columns=columns).to_excel(writer, sheet_name=CLINICAL_SHEET, index=False)


def to_idc(nbia: Path, idc: Path) -> None:
    """Copy a download into the idc-index layout (folders from the DICOM headers)."""
    for series in scan_series(nbia)[0]:
        for path in series.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            folder = (
                idc / "spine_mets_ct_seg" / series.patient_id / series.study_uid
                / f"{series.modality}_{series.uid}"
            )  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / f"{ds.SOPInstanceUID}.dcm")
    shutil.copy(nbia / CLINICAL_FILE, idc / CLINICAL_FILE)


# --- clinical sheet --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "levels"),
    [("T1, T2 T3, T4", ["T1", "T2", "T3", "T4"]), ("t11-L2", ["T11", "T12", "L1", "L2"]),
     ("T5–7; L1 and L3", ["T5", "T6", "T7", "L1", "L3"]), ("L 4/L5", ["L4", "L5"]),
     ("None", []), ("", []), (float("nan"), []), ("T3, T3", ["T3"])],
)  # fmt: skip
def test_parse_level_list(text, levels):
    assert parse_level_list(text) == levels


@pytest.mark.parametrize("text", ["T3 maybe", "S1", "T14", "L2-T11", "vertebra"])
def test_parse_level_list_refuses(text):
    with pytest.raises(ValueError):
        parse_level_list(text)


def test_clinical_rules(tmp_path: Path):
    path = tmp_path / CLINICAL_FILE
    write_sheet(
        path,
        [
            {"Case": 1, "Vertebrae with Lesions": "T1, T2", "Blastic": "T1", "Lytic": "T1 T3"},
            {"Case": "00002", "Vertebrae with Lesions": "L1 ?"},
            {"Case": 3, "Mixed": "L4"},
            {"Case": 3, "Mixed": "L5"},
        ],
    )
    cases, skipped = read_clinical(path)
    first = cases["1"]
    assert first is not None
    assert first.label("T1") == (WeakLabel.MALIGNANT, Phenotype.MIXED)
    assert first.label("T2") == (WeakLabel.MALIGNANT, None)
    assert first.label("T3") == (WeakLabel.MALIGNANT, Phenotype.LYTIC)
    assert first.label("L1") == (WeakLabel.HEALTHY, None)
    assert cases["2"] is None and cases["3"] is None
    assert [s.where for s in skipped] == [
        f"{CLINICAL_FILE} row 3 (Case 00002)",
        f"{CLINICAL_FILE} row 5 (Case 3)",
    ]
    assert "'?'" in skipped[0].reason and "listed twice" in skipped[1].reason
    write_sheet(tmp_path / "x.xlsx", [])
    with pd.ExcelWriter(tmp_path / "y.xlsx") as writer:
        pd.DataFrame({"Case": [1]}).to_excel(writer, sheet_name=CLINICAL_SHEET, index=False)
    with pytest.raises(ValueError, match=r"y\.xlsx: sheet 'Spine-Mets-CT-SEG' lacks column"):
        read_clinical(tmp_path / "y.xlsx")


# --- constructed volumes through both layouts and both adapters -------------------------------


def subjects(lesions: bool = False):
    labels = {
        "s01": {"L1": (WeakLabel.MALIGNANT, Phenotype.BLASTIC), "L2": (WeakLabel.HEALTHY, None)},
        "s02": {"L1": (WeakLabel.HEALTHY, None), "L2": (WeakLabel.MALIGNANT, Phenotype.MIXED)},
        "s03": {"L1": (WeakLabel.HEALTHY, None), "L2": (WeakLabel.HEALTHY, None)},
    }
    out = [box_spine(name, labels[name]) for name in sorted(labels)]
    if lesions:
        for subject in out:
            subject.lesion = np.zeros(subject.ct.shape, np.uint8)
            subject.lesion[20:26, 40:46, 50:56] = 2
            subject.lesion[20:24, 36:40, 24:28] = 1
    return out


def test_tcia_and_inhouse_layouts_give_the_same_slices(tmp_path: Path):
    source = subjects(lesions=True)
    write_tcia(tmp_path / "tcia", source, lesions_dir=tmp_path / "lesions")
    write_inhouse(tmp_path / "bids", source)
    tcia = prepare(tmp_path / "tcia", tmp_path / "cache", lesions=tmp_path / "lesions")
    inhouse = InHouseDataset(root=tmp_path / "bids", cache_dir=tmp_path / "cache").prepare()
    assert tcia.skipped == [] and inhouse.skipped == []
    assert tcia.lesion_metrics and prepare(tmp_path / "tcia").lesion_metrics is False
    assert len(tcia.vertebrae) == len(inhouse.vertebrae) == 6
    splits = seeded_split(["s01", "s02", "s03"], 0, 0.3)
    for ours, theirs in zip(tcia.vertebrae, inhouse.vertebrae, strict=True):
        assert (ours.key.subject, ours.key.level) == (theirs.key.subject, theirs.key.level)
        assert (ours.label, ours.phenotype) == (theirs.label, theirs.phenotype)
        assert ours.split == theirs.split == splits[ours.key.subject]
        assert ours.spacing == pytest.approx(theirs.spacing)
        np.testing.assert_allclose(ours.slices, theirs.slices, atol=0.01)
        np.testing.assert_array_equal(ours.body, theirs.body)
        np.testing.assert_array_equal(ours.lesions, theirs.lesions)
        assert ours.body[2].any() and ours.geometry["body_source"].startswith("derived")
    assert {Split.TRAIN, Split.TEST} == {v.split for v in tcia.vertebrae}


def test_idc_layout_and_cache(tmp_path: Path):
    write_tcia(tmp_path / "nbia", subjects())
    write_tcia(tmp_path / "idc", subjects(), layout="idc")
    nbia = prepare(tmp_path / "nbia", tmp_path / "cache")
    idc = prepare(tmp_path / "idc", tmp_path / "cache")
    again = prepare(tmp_path / "idc", tmp_path / "cache")
    assert nbia.skipped == idc.skipped == []
    assert (
        labelled(nbia)
        == labelled(idc)
        == {
            ("s01", "L1"): (WeakLabel.MALIGNANT, Phenotype.BLASTIC),
            ("s01", "L2"): (WeakLabel.HEALTHY, None),
            ("s02", "L1"): (WeakLabel.HEALTHY, None),
            ("s02", "L2"): (WeakLabel.MALIGNANT, Phenotype.MIXED),
            ("s03", "L1"): (WeakLabel.HEALTHY, None),
            ("s03", "L2"): (WeakLabel.HEALTHY, None),
        }
    )
    assert nbia.fingerprint == idc.fingerprint == again.fingerprint
    for a, b, c in zip(nbia.vertebrae, idc.vertebrae, again.vertebrae, strict=True):
        np.testing.assert_array_equal(a.slices, b.slices)
        np.testing.assert_array_equal(b.slices, c.slices)
        assert a.geometry["source_series_uid"] == b.geometry["source_series_uid"]
    edit(series_files(tmp_path / "idc", "CT")[0], lambda ds: setattr(ds, "PatientSex", "O"))
    assert prepare(tmp_path / "idc", tmp_path / "cache").fingerprint != idc.fingerprint


# --- bad inputs ------------------------------------------------------------------------------


def one(tmp_path: Path, layout: str = "idc", **kwargs) -> Path:
    root = tmp_path / layout
    write_tcia(root, [box_spine("p1", **kwargs)], layout=layout)
    return root


def test_missing_slice_in_nbia_download(tmp_path: Path):
    root = one(tmp_path, "nbia")
    missing = series_files(root, "CT")[40]
    missing.unlink()
    data = prepare(root)
    assert data.vertebrae == []
    found = problems(data)
    assert any(f"{missing.parent.name}: metadata.csv lists 80 file(s)" in p for p in found)
    assert any("79 found; re-download the series" in p for p in found)
    seg = series_files(root, "SEG")[0]
    ct_uid = pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID
    assert f"{seg}: its CT series {ct_uid} is incomplete" in found
    assert {s.scope for s in data.skipped[:2]} == {Scope.FILE}
    assert (
        found[2]
        == f"{CLINICAL_FILE} row 2 (Case p1): no CT + DICOM-SEG of this patient under --root"
    )


def test_missing_and_corrupt_files_in_idc_download(tmp_path: Path):
    root = one(tmp_path)
    files = in_slice_order(series_files(root, "CT"))
    files[40].unlink()
    data = prepare(root)
    assert data.vertebrae == []
    assert problems(data) == [f"patient p1: {files[41]}: 3 mm from the previous slice "
                              f"{files[39].name} where the series steps 1.5 mm; a slice file is "
                              "missing or the series mixes stacks"]  # fmt: skip

    root = one(tmp_path / "b")
    files = series_files(root, "CT")
    data = files[10].read_bytes()
    files[10].write_bytes(data[: len(data) - 500])
    found = problems(prepare(root))
    assert len(found) == 1 and str(files[10]) in found[0]

    files[10].write_bytes(b"garbage")
    data = prepare(root)
    found = problems(data)
    assert found[0] == f"{files[10]}: not a DICOM file (no DICM preamble); re-download or remove it"
    assert "a slice file is missing" in found[1]
    assert [s.scope for s in data.skipped] == [Scope.FILE, Scope.FILE]


def test_seg_without_level_labels_or_for_another_series(tmp_path: Path):
    root = one(tmp_path)
    seg = series_files(root, "SEG")[0]

    def unlabel(ds):
        for i, item in enumerate(ds.SegmentSequence):
            item.SegmentLabel = f"Segment_{i + 1}"

    edit(seg, unlabel)
    assert problems(prepare(root)) == [
        f"patient p1: {seg}: no segment label names a vertebra level (expected e.g. 'L3 vertebra')"
    ]

    root = one(tmp_path / "b")
    seg = series_files(root, "SEG")[0]
    ct_folder = series_files(root, "CT")[0].parent
    other = generate_uid(entropy_srcs=["another series"])
    edit(seg, lambda ds: setattr(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", other))
    data = prepare(root)
    assert data.vertebrae == []
    assert problems(data) == [
        f"{seg}: references series {other}, which is not a CT series under --root; download that "
        "CT or remove the SEG",
        f"{ct_folder}: CT series {ct_folder.name[3:]}: no DICOM-SEG segments it",
        f"{CLINICAL_FILE} row 2 (Case p1): no CT + DICOM-SEG of this patient under --root",
    ]


def test_grid_mismatches(tmp_path: Path):
    root = one(tmp_path)
    seg = series_files(root, "SEG")[0]

    def shift(ds):
        for frame in ds.PerFrameFunctionalGroupsSequence:
            position = frame.PlanePositionSequence[0]
            position.ImagePositionPatient = [float(v) + 0.4 for v in position.ImagePositionPatient]

    edit(seg, shift)
    found = problems(prepare(root))
    assert len(found) == 1 and f"{seg}: the SEG frames do not lie on the CT grid" in found[0]

    root = one(tmp_path / "b")
    subject = box_spine("p1")
    write_nifti_gz(tmp_path / "lesions/p1.nii.gz", np.zeros((48, 60, 79), np.uint8), subject.affine)
    data = prepare(root, lesions=tmp_path / "lesions")
    assert data.vertebrae == []
    [found] = problems(data)
    assert found.startswith("patient p1: lesion mask")
    assert found.endswith("shape (48, 60, 79) differs from CT shape (48, 60, 80)")

    nan = np.zeros(subject.ct.shape, np.float32)
    nan[3, 4, 5] = np.nan
    write_nifti_gz(tmp_path / "lesions/p1.nii.gz", nan, subject.affine)
    assert problems(prepare(root, lesions=tmp_path / "lesions")) == [
        f"patient p1: {tmp_path / 'lesions/p1.nii.gz'}: lesion mask has 1 NaN voxels"
    ]


def test_clinical_sheet_problems(tmp_path: Path):
    write_tcia(tmp_path / "d", [box_spine("p1"), box_spine("p2")], layout="idc")
    sheet = tmp_path / "d" / CLINICAL_FILE
    write_sheet(
        sheet,
        [
            {"Case": "p1", "Vertebrae with Lesions": "L1, T9", "Blastic": "T9"},
            {"Case": "p3", "Vertebrae with Lesions": "L2"},
        ],
    )
    data = prepare(tmp_path / "d")
    assert labelled(data) == {
        ("p1", "L1"): (WeakLabel.MALIGNANT, None),
        ("p1", "L2"): (WeakLabel.HEALTHY, None),
        ("p2", "L1"): (None, None),
        ("p2", "L2"): (None, None),
    }
    assert problems(data) == [
        f"patient p1 T9: listed in {CLINICAL_FILE} row 2 (Vertebrae with Lesions, Blastic) but "
        "the SEG has no segment for it",
        f"patient p2: no row in {CLINICAL_FILE}; its vertebrae are unlabeled",
        f"{CLINICAL_FILE} row 3 (Case p3): no CT + DICOM-SEG of this patient under --root",
    ]
    write_sheet(sheet, [{"Case": "p1", "Lytic": "L1 (partly)"}, {"Case": "p2"}])
    data = prepare(tmp_path / "d")
    assert labelled(data)[("p1", "L1")] == (None, None)
    assert labelled(data)[("p2", "L1")] == (WeakLabel.HEALTHY, None)
    assert problems(data) == [
        f"{CLINICAL_FILE} row 2 (Case p1): column 'Lytic' text 'L1 (partly)': cannot read "
        "'(PARTLY)' as a level; the case's vertebrae are left unlabeled"
    ]
    sheet.unlink()
    with pytest.raises(FileNotFoundError, match=f"no {CLINICAL_FILE} under"):
        prepare(tmp_path / "d")


def test_empty_body_is_recorded(tmp_path: Path):
    subject = box_spine("p1")
    plate = np.zeros_like(subject.vert)
    plate[10:38, 45, 10:30] = LEVEL_NUMBERS["L1"]  # a 1 mm coronal plate: no body in front
    subject.vert = np.where(subject.vert == LEVEL_NUMBERS["L2"], subject.vert, plate)
    write_tcia(tmp_path, [subject], layout="idc")
    data = prepare(tmp_path)
    assert [v.key.level for v in data.vertebrae] == ["L2"]
    found = problems(data)
    assert len(found) == 1 and found[0].startswith("patient p1 L1: empty vertebral-body mask")


def test_options_are_declared_and_typed(tmp_path: Path):
    assert list(TciaDataset.option_parameters()) == [
        "clinical", "lesions", "seed", "test_fraction", "edge"
    ]  # fmt: skip
    typed = ["seed=3", "test_fraction=0.5", "lesions=/m", "edge=exclude"]
    assert dataset_options(TciaDataset, typed) == {
        "seed": 3,
        "test_fraction": 0.5,
        "lesions": "/m",
        "edge": "exclude",
    }
    accepted = "Accepted: clinical, lesions, seed, test_fraction, edge"
    for item, message in [
        ("sed=3", f"dataset 'tcia' has no option 'sed'. Did you mean 'seed'? {accepted}"),
        ("params=fast", f"dataset 'tcia' has no option 'params'. {accepted}"),
        ("test_fraction=a third", "option test_fraction: 'a third' is not float"),
        ("edge=cut", "option edge: 'cut' is not one of keep, exclude"),
    ]:
        with pytest.raises(ParameterError) as caught:
            dataset_options(TciaDataset, [item])
        assert str(caught.value) == message
    write_tcia(tmp_path / "d", subjects(), layout="idc")
    with pytest.raises(ValueError, match=r"test_fraction 1\.5 must lie between 0 and 1"):
        prepare(tmp_path / "d", test_fraction=1.5)
    data = prepare(tmp_path / "d", seed=7, test_fraction=0.5)
    assert {v.key.subject: v.split for v in data.vertebrae} == seeded_split(
        ["s01", "s02", "s03"], 7, 0.5
    )


def test_edge_option_keeps_or_excludes_vertebrae_at_the_scan_edge(tmp_path: Path):
    write_tcia(tmp_path, [box_spine("p1", shape=(48, 60, 56))], layout="idc")  # ends in L1
    kept = prepare(tmp_path, tmp_path / "cache")
    assert kept.skipped == []
    assert {v.key.level: v.geometry["touches_scan_border"] for v in kept.vertebrae} == {
        "L1": True,
        "L2": False,
    }
    excluded = prepare(tmp_path, tmp_path / "cache", edge="exclude")
    assert [v.key.level for v in excluded.vertebrae] == ["L2"]
    assert problems(excluded) == [
        "patient p1 L1: its mask touches the scan's edge (the vertebra may be cut off); excluded "
        "by -o edge=exclude"
    ]
    assert excluded.fingerprint != kept.fingerprint


# --- the real DICOM series in a TCIA download built here ---------------------------------------


@pytest.fixture(scope="module")
def real_download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CT series with TCIA identifiers, a highdicom SEG and a pandas clinical sheet.

    The SEG has "Spinal canal" (segment 1, no level) and "L1 vertebra" (segment 2: bone > 100 HU
    around the spine between the endplates, small marrow holes filled, canal left open). The
    sheet lists L1 as blastic and lytic (→ mixed) and T11, which has no segment.
    """
    folder = REAL_DATA / "totalseg" / "example_ct_dicom"
    if not folder.is_dir():
        pytest.skip(f"real CT samples not found at {REAL_DATA}")
    root = tmp_path_factory.mktemp("real-tcia")
    study = generate_uid(entropy_srcs=["test", "study"])
    series = generate_uid(entropy_srcs=["test", "series"])
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    datasets.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    study_dir = root / "Spine-Mets-CT-SEG" / REAL_PATIENT / f"01-01-2000-NA-Spine-{study[-5:]}"
    for i, ds in enumerate(datasets):
        ds.PatientID, ds.PatientName = REAL_PATIENT, "Anonymous^Patient"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, 2
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["test", "ct", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyID = "1"
        out = study_dir / f"2.000000-CT Body-{series[-5:]}" / f"1-{i + 1:02d}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)

    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in datasets])  # fmt: skip
    spine = np.zeros(hu.shape, bool)
    spine[1:15, 312:420, 190:330] = True  # behind the (contrast-filled) aorta, between endplates
    bone, _ = ndimage.label((hu > 100) & spine)
    bone = bone == np.argmax(np.bincount(bone.ravel())[1:]) + 1
    bone = np.stack([remove_small_holes(plane, max_size=150) for plane in bone])
    canal = np.zeros(hu.shape, bool)
    canal[1:15, 355:370, 250:265] = True
    frames = np.where(bone, 2, np.where(canal, 1, 0)).astype(np.uint8)

    def description(number: int, label: str, kind) -> hd.seg.SegmentDescription:
        return hd.seg.SegmentDescription(
            number, label, codes.SCT.AnatomicalStructure, kind,
            hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )  # fmt: skip

    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type="BINARY",
        segment_descriptions=[
            description(1, "Spinal canal", codes.SCT.Spine),
            description(2, "L1 vertebra", codes.SCT.L1Vertebra),
        ],
        series_instance_uid=generate_uid(entropy_srcs=["test", "seg"]),
        series_number=300,
        sop_instance_uid=generate_uid(entropy_srcs=["test", "seg", "1"]),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg_dir = study_dir / f"300.000000-Segmentation-{seg.SeriesInstanceUID[-5:]}"
    seg_dir.mkdir()
    seg.save_as(seg_dir / "1-1.dcm")
    write_sheet(
        root / CLINICAL_FILE,
        [{"Case": int(REAL_PATIENT), "Primary cancer": "Prostate",
          "Vertebrae with Lesions": "L1, T11", "Blastic": "L1 T11", "Lytic": "L1"}],
    )  # fmt: skip
    return root


def test_real_dicom_download(real_download: Path, tmp_path: Path):
    data = prepare(real_download, tmp_path / "cache")
    assert labelled(data) == {(REAL_PATIENT, "L1"): (WeakLabel.MALIGNANT, Phenotype.MIXED)}
    seg_file = series_files(real_download, "SEG")[0]
    assert problems(data) == [
        f"{seg_file} segment 1: label 'Spinal canal' names no vertebra level",
        f"patient {REAL_PATIENT} T11: listed in {CLINICAL_FILE} row 2 (Vertebrae with Lesions, "
        "Blastic) but the SEG has no segment for it",
    ]
    assert not data.lesion_metrics
    l1 = next(v for v in data.vertebrae if v.key.level == "L1")
    assert l1.slices.shape == l1.body.shape == (5, 64, 64)
    assert l1.spacing[1] == pytest.approx(0.8)
    assert l1.geometry["body_source"].startswith("derived")
    assert (
        l1.geometry["source_series_uid"]
        == pydicom.dcmread(series_files(real_download, "CT")[0]).SeriesInstanceUID
    )
    body_hu = l1.slices[2][l1.body[2]]
    assert 100 < float(np.median(body_hu)) < 700  # cancellous bone, not soft tissue or cortex
    assert l1.split == seeded_split([REAL_PATIENT], 0, 0.3)[REAL_PATIENT]


def test_real_dicom_download_idc_layout(real_download: Path, tmp_path: Path):
    to_idc(real_download, tmp_path / "idc")
    nbia = prepare(real_download, tmp_path / "cache")
    idc = prepare(tmp_path / "idc", tmp_path / "cache")
    assert labelled(idc) == labelled(nbia) and len(idc.skipped) == len(nbia.skipped)
    for a, b in zip(nbia.vertebrae, idc.vertebrae, strict=True):
        np.testing.assert_array_equal(a.slices, b.slices)
        np.testing.assert_array_equal(a.body, b.body)


def test_derived_body_against_the_true_corpus(real_data: Path):
    tptbox = real_data / "tptbox"
    vert = nib.load(tptbox / "sub-ct_seg-vert_label-22_msk.nii.gz")
    subreg = nib.load(tptbox / "sub-ct_seg-subreg_label-22_msk.nii.gz")
    dice = derived_body_dice(vert, subreg)
    assert sorted(dice) == ["L2", "L3", "L4"]
    assert min(dice.values()) > 0.9  # L3, the one complete vertebra, is the lowest
    assert dice["L3"] == min(dice.values())
