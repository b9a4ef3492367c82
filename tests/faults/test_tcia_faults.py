"""Faults in a TCIA download: each is built from a constructed four-patient download, and each
test asserts the message names the file at fault, the record's scope, and that every vertebra of
the other patients is still delivered unchanged.

Covered elsewhere (tests/test_tcia.py, tests/test_dicomio.py): a CT series with a missing slice
(``test_missing_slice_in_nbia_download``, ``test_missing_and_corrupt_files_in_idc_download``,
``test_ct_series_problems_name_the_file``), a garbage ``.dcm`` file within a series
(``test_missing_and_corrupt_files_in_idc_download``), a SEG referencing a series not under the
root (``test_seg_without_level_labels_or_for_another_series``), a SEG off the CT grid
(``test_grid_mismatches``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_dicomio import box_spine
from test_tcia import edit, in_slice_order, write_sheet

from wsbench.contract import PreparedDataset, Scope, Skipped, Split, WeakLabel
from wsbench.data.dicom import scan_series
from wsbench.data.nifti import write_nifti_gz
from wsbench.datasets.phantom.tcia_writer import write_tcia
from wsbench.datasets.tcia import NAMED_PROBLEMS, TciaDataset
from wsbench.datasets.tcia.layout import CLINICAL_FILE
from wsbench.datasets.tcia.series import lesion_file_name

PATIENTS = ("p1", "p2", "p3", "p4")
"""Subjects of the constructed download; with seed 0 and test fraction 0.3, p1 is a training
patient and p2–p4 are test patients."""


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four patients in the IDC layout (two vertebrae each, L1 malignant lytic, L2 healthy)."""
    root = tmp_path_factory.mktemp("tcia") / "download"
    write_tcia(root, [box_spine(name) for name in PATIENTS], layout="idc")
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: untouched patients are read once."""
    return tmp_path_factory.mktemp("tcia-cache")


@pytest.fixture(scope="module")
def intact(download: Path, cache: Path) -> PreparedDataset:
    data = TciaDataset(root=download, cache_dir=cache).prepare()
    assert data.skipped == [] and len(data.vertebrae) == 2 * len(PATIENTS)
    return data


@pytest.fixture
def copy(download: Path, tmp_path: Path) -> Path:
    """A copy of the download to damage."""
    return Path(shutil.copytree(download, tmp_path / "download"))


def patient_files(root: Path, patient: str, modality: str) -> list[Path]:
    """The files of one patient's CT (in slice order) or SEG."""
    series, _ = scan_series(root)
    files = next(s.files for s in series if s.patient_id == patient and s.modality == modality)
    return in_slice_order(files) if modality == "CT" else files


def keeps_the_others(data: PreparedDataset, intact: PreparedDataset, lost: str) -> None:
    """Every vertebra of every patient but ``lost`` is delivered as in ``intact``."""
    kept = {v.key: v for v in data.vertebrae}
    for before in intact.vertebrae:
        if before.key.subject == lost:
            continue
        after = kept[before.key]
        assert (after.split, after.label, after.phenotype) == (
            before.split,
            before.label,
            before.phenotype,
        )
        np.testing.assert_array_equal(after.slices, before.slices)
        np.testing.assert_array_equal(after.body, before.body)


def records(data: PreparedDataset) -> list[tuple[str, str, Scope]]:
    return [(s.where, s.reason, s.scope) for s in data.skipped]


def unpaired_row(patient: str) -> tuple[str, str, Scope]:
    """The record of a sheet row whose patient has no usable CT + SEG."""
    row = PATIENTS.index(patient) + 2
    where = f"{CLINICAL_FILE} row {row} (Case {patient})"
    return (where, "no CT + DICOM-SEG of this patient under --root", Scope.VERTEBRA)


def prepare(root: Path, cache: Path, **options) -> PreparedDataset:
    return TciaDataset(root=root, cache_dir=cache, **options).prepare()


def test_truncated_ct_file(copy: Path, cache: Path, intact: PreparedDataset):
    files = patient_files(copy, "p2", "CT")
    cut = files[40]
    cut.write_bytes(cut.read_bytes()[:-3000])  # the pixel data is cut short
    data = prepare(copy, cache)
    [(where, reason, scope)] = records(data)
    assert (where, scope) == ("patient p2", Scope.FILE)
    assert reason.startswith(f"{cut}: ") and reason.endswith("re-download the file")
    assert not [v for v in data.vertebrae if v.key.subject == "p2"]
    keeps_the_others(data, intact, "p2")


def test_truncated_header(copy: Path, cache: Path, intact: PreparedDataset):
    files = patient_files(copy, "p3", "CT")
    cut = files[40]
    cut.write_bytes(cut.read_bytes()[:300])  # preamble and part of the file meta only
    data = prepare(copy, cache)
    first, gap = data.skipped
    assert (first.where, first.scope) == (str(cut), Scope.FILE)
    assert first.reason == (
        "SeriesInstanceUID and Modality missing or blank (a damaged or cut-short file?), so its "
        "series is unknown; re-download the file"
    )
    assert (gap.where, gap.scope) == ("patient p3", Scope.FILE)
    assert gap.reason.startswith(f"{files[41]}: 3 mm from the previous slice {files[39].name}")
    keeps_the_others(data, intact, "p3")


def test_files_that_are_not_dicom(copy: Path, cache: Path, intact: PreparedDataset):
    folder = patient_files(copy, "p1", "CT")[0].parent
    (folder / "README").write_text("downloaded with idc-index\n")
    (folder / "notes.txt").write_text("not data\n")
    (copy / "thumbs.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    data = prepare(copy, cache)
    assert records(data) == [
        (
            str(copy / "thumbs.dcm"),
            "not a DICOM file (no DICM preamble); re-download or remove it",
            Scope.FILE,
        )
    ]
    keeps_the_others(data, intact, "")


def test_seg_referencing_another_patients_series(copy: Path, cache: Path, intact: PreparedDataset):
    [seg] = patient_files(copy, "p2", "SEG")
    ct = patient_files(copy, "p2", "CT")[0]
    p1_series = pydicom.dcmread(patient_files(copy, "p1", "CT")[0]).SeriesInstanceUID
    p2_series = pydicom.dcmread(ct).SeriesInstanceUID
    edit(seg, lambda ds: setattr(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", p1_series))
    data = prepare(copy, cache)
    assert records(data) == [
        (str(seg), "PatientID 'p2' differs from its CT's 'p1'", Scope.FILE),
        (str(ct.parent), f"CT series {p2_series}: no DICOM-SEG segments it", Scope.FILE),
        unpaired_row("p2"),
    ]
    keeps_the_others(data, intact, "p2")


def test_seg_with_a_blank_series_uid(copy: Path, cache: Path, intact: PreparedDataset):
    [seg] = patient_files(copy, "p4", "SEG")
    ct = patient_files(copy, "p4", "CT")[0]
    p4_series = pydicom.dcmread(ct).SeriesInstanceUID
    edit(seg, lambda ds: setattr(ds, "SeriesInstanceUID", ""))
    data = prepare(copy, cache)
    assert records(data) == [
        (
            str(seg),
            "SeriesInstanceUID missing or blank (a damaged or cut-short file?), so its series is "
            "unknown; re-download the file",
            Scope.FILE,
        ),
        (str(ct.parent), f"CT series {p4_series}: no DICOM-SEG segments it", Scope.FILE),
        unpaired_row("p4"),
    ]
    keeps_the_others(data, intact, "p4")


def test_seg_with_a_blank_referenced_uid_pairs_by_frame_of_reference(
    copy: Path, cache: Path, intact: PreparedDataset
):
    [seg] = patient_files(copy, "p2", "SEG")
    edit(seg, lambda ds: setattr(ds.ReferencedSeriesSequence[0], "SeriesInstanceUID", ""))
    data = prepare(copy, cache)
    assert data.skipped == []
    keeps_the_others(data, intact, "")

    def blank(ds):
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = ""
        ds.FrameOfReferenceUID = ""

    edit(seg, blank)
    data = prepare(copy, cache)
    ct = patient_files(copy, "p2", "CT")[0]
    p2_series = pydicom.dcmread(ct).SeriesInstanceUID
    assert records(data) == [
        (
            str(seg),
            "names no referenced series and matches 0 CT series by FrameOfReferenceUID '' and "
            "PatientID 'p2'; cannot tell which it segments, re-download the SEG",
            Scope.FILE,
        ),
        (str(ct.parent), f"CT series {p2_series}: no DICOM-SEG segments it", Scope.FILE),
        unpaired_row("p2"),
    ]
    keeps_the_others(data, intact, "p2")


def test_ct_file_of_another_patient_within_a_series(
    copy: Path, cache: Path, intact: PreparedDataset
):
    files = patient_files(copy, "p3", "CT")
    edit(files[7], lambda ds: setattr(ds, "PatientID", "p9"))
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    data = prepare(copy, cache)
    assert records(data)[:2] == [
        (
            str(files[7]),
            f"Modality 'CT' and PatientID 'p9' differ from the other files' 'CT' and 'p3' in "
            f"series {uid}; left out, re-download the file",
            Scope.FILE,
        ),
        (
            "patient p3",
            f"{files[8]}: 3 mm from the previous slice {files[6].name} where the series steps "
            "1.5 mm; a slice file is missing or the series mixes stacks",
            Scope.FILE,
        ),
    ]
    keeps_the_others(data, intact, "p3")


def test_no_ct_series_names_the_files(tmp_path: Path):
    write_tcia(tmp_path, [box_spine("p1")], layout="idc")
    files = sorted(p for p in tmp_path.rglob("*.dcm"))
    for path in files:
        edit(path, lambda ds: setattr(ds, "SeriesInstanceUID", ""))
    with pytest.raises(FileNotFoundError) as caught:
        prepare(tmp_path, tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(
        f"no CT series (DICOM Modality CT) under {tmp_path} (series found: none); "
        f"{len(files)} file(s) unusable: {files[0]}: SeriesInstanceUID missing or blank (a "
        "damaged or cut-short file?), so its series is unknown; re-download the file; "
    )
    assert all(str(p) in message for p in files[:NAMED_PROBLEMS])
    assert str(files[NAMED_PROBLEMS]) not in message
    assert message.endswith(
        f"; and {len(files) - NAMED_PROBLEMS} more. Point --root at the Spine-Mets-CT-SEG "
        "download, or re-download it"
    )


def test_split_of_a_patient_never_depends_on_the_others(
    download: Path, cache: Path, intact: PreparedDataset, tmp_path: Path
):
    splits = {v.key.subject: v.split for v in intact.vertebrae}
    assert splits == {"p1": Split.TRAIN, "p2": Split.TEST, "p3": Split.TEST, "p4": Split.TEST}
    for dropped in PATIENTS:
        root = Path(shutil.copytree(download, tmp_path / f"without-{dropped}"))
        shutil.rmtree(root / "spine_mets_ct_seg" / dropped)
        data = prepare(root, cache)
        assert {v.key.subject: v.split for v in data.vertebrae} == {
            p: s for p, s in splits.items() if p != dropped
        }
        keeps_the_others(data, intact, dropped)
    root = Path(shutil.copytree(download, tmp_path / "p1-corrupt"))
    patient_files(root, "p1", "CT")[40].write_bytes(b"\0" * 128 + b"DICM" + bytes(64))
    data = prepare(root, cache)
    assert {v.key.subject for v in data.vertebrae} == {"p2", "p3", "p4"}
    keeps_the_others(data, intact, "p1")


def test_header_only_clinical_sheet_is_a_dataset_fault(
    copy: Path, cache: Path, intact: PreparedDataset
):
    write_sheet(copy / CLINICAL_FILE, [])
    data = prepare(copy, cache)
    first = data.skipped[0]
    assert first == Skipped(
        str(copy / CLINICAL_FILE),
        "sheet 'Spine-Mets-CT-SEG' lists no case, so no vertebra has a label; use the "
        "collection's spreadsheet (https://doi.org/10.7937/kh36-ds04)",
        Scope.DATASET,
    )
    assert [s.where for s in data.skipped[1:]] == [f"patient {p}" for p in PATIENTS]
    assert {v.label for v in data.vertebrae} == {None}
    assert len(data.vertebrae) == len(intact.vertebrae)


@pytest.mark.parametrize("patient", ["a/b", "../x", ".."])
def test_unsafe_patient_id_never_names_a_path(patient: str, tmp_path: Path):
    subject = box_spine(patient)
    root = tmp_path / "root" / "download"
    write_tcia(root, [subject], layout="idc")
    lesions = tmp_path / "root" / "lesions"
    mask = np.zeros(subject.ct.shape, np.uint8)
    mask[20:26, 40:46, 50:56] = 2
    write_nifti_gz(lesions / lesion_file_name(patient), mask, subject.affine)
    decoy = np.zeros((4, 4, 4), np.uint8)  # where a raw id would lead: a mask that does not fit
    for raw in (lesions / f"{patient}.nii.gz", lesions / f"{patient}.nii"):
        if raw.resolve() != (lesions / lesion_file_name(patient)).resolve():
            write_nifti_gz(raw, decoy, np.eye(4))
    cache = tmp_path / "cache"
    data = prepare(root, cache, lesions=lesions)
    assert data.skipped == []
    l1 = next(v for v in data.vertebrae if v.key.level == "L1")
    assert l1.key.subject == patient and l1.label == WeakLabel.MALIGNANT
    assert l1.lesions is not None and l1.lesions.max() == 2
    assert [p.parent for p in cache.rglob("*") if p.is_file()] == [cache / "tcia"]

    (lesions / lesion_file_name(patient)).unlink()
    data = prepare(root, cache, lesions=lesions)
    assert records(data) == [
        (
            f"patient {patient}",
            f"no lesion mask {lesion_file_name(patient)} in {lesions}; no lesion reference for "
            "its vertebrae",
            Scope.FILE,
        )
    ]
