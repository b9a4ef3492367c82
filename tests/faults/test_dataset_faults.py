"""Faults of in-house data (BIDS folder and Hide-and-Seek manifest), each built from small
constructed NIfTI and CSV files: the message names the file or row at fault, and nothing valid
is lost."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nibabel.affines import apply_affine
from test_inhouse import subject
from test_preprocess import PSR_0P8, PSR_SHAPE, anatomy
from typer.testing import CliRunner

from wsbench.cli.main import app
from wsbench.contract import PreparedDataset, Split, WeakLabel
from wsbench.data.nifti import write_nifti_gz
from wsbench.data.volumes import SubjectVolumes, VertebraLabel
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.inhouse.layout import write_inhouse

MALIGNANT_L3 = [VertebraLabel("L3", WeakLabel.MALIGNANT)]


def prepare(root: Path, **options) -> PreparedDataset:
    return InHouseDataset(root=root, cache_dir=root.parent / "cache", **options).prepare()


def records(data: PreparedDataset) -> list[tuple[str, str, str]]:
    """(scope, where with paths reduced to file names, reason) of every skipped record."""
    return [(s.scope.value, Path(s.where).name, s.reason) for s in data.skipped]


def kept(data: PreparedDataset) -> dict[str, tuple[Split, WeakLabel | None]]:
    return {v.key.subject: (v.split, v.label) for v in data.vertebrae}


def check(*args: str, debug: bool = True) -> tuple[int, str]:
    """``wsbench [--debug] datasets check`` (by default with any traceback shown): exit code and
    output."""
    wide = {"COLUMNS": "400"}  # long reasons on one line
    flags = ["--debug"] if debug else []
    result = CliRunner().invoke(app, [*flags, "datasets", "check", *args], env=wide)
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


def write_labels(root: Path, text: str) -> None:
    (root / "labels.csv").write_text(text)


# --- splits -------------------------------------------------------------------------------------


def test_removing_any_subject_keeps_every_other_split(tmp_path: Path):
    names = [f"{i:03d}" for i in range(6)]
    write_inhouse(tmp_path / "all", [subject(n, split=None) for n in names])
    everyone = kept(prepare(tmp_path / "all"))
    assert {split for split, _ in everyone.values()} == {Split.TRAIN, Split.TEST}
    for gone in names:
        root = tmp_path / f"without-{gone}"
        write_inhouse(root, [subject(n, split=None) for n in names if n != gone])
        assert kept(prepare(root)) == {n: s for n, s in everyone.items() if n != gone}


def test_empty_split_cell_is_an_error_not_a_reassignment(tmp_path: Path):
    write_inhouse(tmp_path / "bids", [subject("001"), subject("002")])
    write_labels(
        tmp_path / "bids",
        "subject,vertebra,label,phenotype,split\n001,L3,malignant,mixed,test\n002,L3,healthy,,\n",
    )
    data = prepare(tmp_path / "bids")
    assert records(data) == [
        (
            "vertebra",
            "labels.csv row 3",
            "the split cell is empty while other rows give one; fill it with train or test",
        ),
        ("file", "sub-002", "labels.csv gives splits but none for this subject; add its rows "
         "with a split"),
    ]  # fmt: skip
    assert kept(data) == {"001": (Split.TEST, WeakLabel.MALIGNANT)}


# --- labels table ---------------------------------------------------------------------------------


def test_zero_byte_labels_table_names_the_file(tmp_path: Path):
    write_inhouse(tmp_path / "bids", [subject("001")])
    write_labels(tmp_path / "bids", "")
    table = tmp_path / "bids" / "labels.csv"
    message = f"{table} is empty; it needs columns subject, vertebra, label (see docs/datasets.md)"
    with pytest.raises(ValueError) as caught:
        prepare(tmp_path / "bids")
    assert str(caught.value) == message
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 1 and "labels.csv is empty; it needs columns subject, vertebra, label" in output


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("subject,vertebra,label\n", " (it has no data rows)"),
        (
            "subject,vertebra,label\n001,L3,perhaps\n,L3,1\n",
            ": labels.csv row 2: label 'perhaps' is neither healthy/malignant nor 0/1; "
            "labels.csv row 3: the subject cell is empty; fill it",
        ),
    ],
)
def test_table_without_a_valid_row_stops_the_preparation(tmp_path: Path, text: str, detail: str):
    write_inhouse(tmp_path / "bids", [subject("001")])
    write_labels(tmp_path / "bids", text)
    table = tmp_path / "bids" / "labels.csv"
    with pytest.raises(ValueError) as caught:
        prepare(tmp_path / "bids")
    assert (
        str(caught.value)
        == f"{table} has no usable row{detail}; fix the table (see docs/datasets.md)"
    )
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 1 and "has no usable row" in output


def test_contradicting_duplicates_reject_both_rows_and_exact_repeats_count_once(tmp_path: Path):
    write_inhouse(tmp_path / "bids", [subject("001", split=None), subject("002", split=None)])
    write_labels(
        tmp_path / "bids",
        "subject,vertebra,label,phenotype\n"
        "001,L3,malignant,lytic\n001,L3,healthy,\n002,L3,malignant,lytic\n002,22,malignant,lytic\n",
    )
    data = prepare(tmp_path / "bids")
    reason = (
        "sub-001 L3 is also in row(s) {} with a different label, phenotype or split; all are "
        "rejected: keep the right row only"
    )
    assert records(data) == [
        ("vertebra", "labels.csv row 2", reason.format(3)),
        ("vertebra", "labels.csv row 3", reason.format(2)),
    ]
    labels = {v.key.subject: v.label for v in data.vertebrae}
    assert labels == {"001": None, "002": WeakLabel.MALIGNANT}


# --- volumes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_ct_voxels_skip_the_subject(tmp_path: Path, value: float):
    write_inhouse(tmp_path / "bids", [subject("001"), subject("002")])
    ct = anatomy(PSR_0P8, PSR_SHAPE)["ct"].astype(np.float32)
    ct[1, 1, 1:4] = value
    nib.save(nib.Nifti1Image(ct, PSR_0P8), tmp_path / "bids/rawdata/sub-002/sub-002_ct.nii.gz")
    data = prepare(tmp_path / "bids")
    assert records(data) == [
        (
            "file",
            "sub-002",
            "CT sub-002_ct.nii.gz has 3 non-finite voxels (NaN or infinite); fix or re-export "
            "the scan",
        )
    ]
    assert kept(data) == {"001": (Split.TEST, WeakLabel.MALIGNANT)}


def test_lesion_outside_its_vertebra_is_reported_and_its_malignant_vertebra_excluded(
    tmp_path: Path,
):
    write_inhouse(tmp_path / "bids", [subject("001"), subject("002")])
    outside = np.zeros(PSR_SHAPE, np.uint8)
    outside[0:5, 0:5, 0:5] = 1  # a corner of the scan, far from L3
    write_nifti_gz(
        tmp_path / "bids/derivatives/sub-002/sub-002_seg-lesion_msk.nii.gz", outside, PSR_0P8
    )
    data = prepare(tmp_path / "bids")
    assert records(data) == [
        (
            "vertebra",
            "sub-002",
            "125 lesion voxels of sub-002_seg-lesion_msk.nii.gz lie outside every vertebra mask "
            "(not scored); check that the lesion mask belongs to this CT",
        ),
        (
            "vertebra",
            "sub-002 L3",
            "malignant, but its vertebra mask holds no voxel of sub-002_seg-lesion_msk.nii.gz (a "
            "shifted or misassigned lesion mask?): its reference is unusable; fix the lesion mask",
        ),
    ]
    assert kept(data) == {"001": (Split.TEST, WeakLabel.MALIGNANT)}
    assert data.vertebrae[0].lesions is not None and data.vertebrae[0].lesions.any()


def posterior_elements(affine: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The L3 of :func:`anatomy` without its body: ring and spinous process, the canal open in
    front (its front wall was the body's back)."""
    x, y, _ = apply_affine(affine, np.indices(shape).reshape(3, -1).T).T
    posterior = np.isin(anatomy(affine, shape)["subreg"], (41, 42)).reshape(-1)
    open_front = (np.abs(x) < 6) & (y >= -12) & (y < 0)
    return np.where(posterior & ~open_front, 22, 0).astype(np.uint8).reshape(shape)


def test_posterior_only_mask_is_skipped_while_a_whole_vertebra_gets_a_derived_body(tmp_path):
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    whole = SubjectVolumes("001", arrays["ct"], PSR_0P8, arrays["vert"], MALIGNANT_L3)
    posterior = posterior_elements(PSR_0P8, PSR_SHAPE)
    arch = SubjectVolumes("002", arrays["ct"], PSR_0P8, posterior, MALIGNANT_L3)
    write_inhouse(tmp_path / "bids", [whole, arch])
    data = prepare(tmp_path / "bids")
    assert records(data) == [
        (
            "vertebra",
            "sub-002 L3",
            "the vertebra mask holds no vertebral body (posterior elements only), so none can be "
            "derived; supply a subregion mask (seg-subreg, body = 49 ∪ 50)",
        )
    ]
    (vertebra,) = data.vertebrae
    assert vertebra.key.subject == "001" and vertebra.body[2].any()
    assert vertebra.geometry["body_source"].startswith("derived")


def test_vertebra_at_the_scan_edge_is_flagged_and_kept_or_excluded(tmp_path: Path):
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    cut = {k: v[:, :40] for k, v in arrays.items()}  # the scan ends mid-body (superior axis)
    partial = SubjectVolumes(
        "002", cut["ct"], PSR_0P8, cut["vert"], MALIGNANT_L3, subreg=cut["subreg"],
        lesion=cut["lesion"], split=Split.TEST,
    )  # fmt: skip
    write_inhouse(tmp_path / "bids", [subject("001"), partial])
    data = prepare(tmp_path / "bids")
    assert data.skipped == []
    edges = {v.key.subject: v.geometry["touches_scan_border"] for v in data.vertebrae}
    assert edges == {"001": False, "002": True}
    excluded = prepare(tmp_path / "bids", edge="exclude")
    assert records(excluded) == [
        (
            "vertebra",
            "sub-002 L3",
            "its mask touches the scan's edge (the vertebra may be cut off); excluded by "
            "-o edge=exclude",
        )
    ]
    assert kept(excluded) == {"001": (Split.TEST, WeakLabel.MALIGNANT)}
    assert excluded.fingerprint != data.fingerprint
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 0 and "touching the scan's edge 1" in output
    code, output = check("-d", "inhouse", "-r", str(tmp_path / "bids"), "-o", "edge=exclude")
    assert code == 0 and "skipped: 0 dataset, 0 file, 1 vertebra" in output


@pytest.mark.parametrize("damage", ["half", "header", "flipped"])
def test_truncated_or_corrupt_nifti_names_the_file(tmp_path: Path, damage: str):
    write_inhouse(tmp_path / "bids", [subject("001"), subject("002")])
    path = tmp_path / "bids/rawdata/sub-002/sub-002_ct.nii.gz"
    data = path.read_bytes()
    if damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        path.write_bytes(data[:40])
    else:
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]))
    prepared = prepare(tmp_path / "bids")
    [(scope, where, reason)] = records(prepared)
    assert (scope, where) == ("file", "sub-002")
    assert reason.startswith(f"{path} cannot be read (")
    assert reason.endswith("the file is truncated or corrupt: re-export or re-download it")
    assert kept(prepared) == {"001": (Split.TEST, WeakLabel.MALIGNANT)}
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 1 and "Aborted" not in output and "Traceback" not in output
    assert "0 dataset, 1 file, 0 vertebra" in output
    assert f"file sub-002 {path} cannot be read (" in output
    assert "the file is truncated or corrupt: re-export or re-download it" in output


def test_check_exit_status_follows_the_scope(tmp_path: Path):
    write_inhouse(tmp_path / "bids", [subject("001")])
    write_labels(tmp_path / "bids", "subject,vertebra,label\n001,L3,1\n001,L4,perhaps\n")
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 0 and "skipped: 0 dataset, 0 file, 1 vertebra" in output
    orphan = tmp_path / "bids/derivatives/sub-009/sub-009_seg-vert_msk.nii.gz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(
        (tmp_path / "bids/derivatives/sub-001/sub-001_seg-vert_msk.nii.gz").read_bytes()
    )
    code, output = check("--dataset", "inhouse", "--root", str(tmp_path / "bids"))
    assert code == 1 and "skipped: 0 dataset, 1 file, 1 vertebra" in output
    assert "mask without a CT" in output


# --- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "option", "message"),
    [
        ("inhouse", "sed=3", "dataset 'inhouse' has no option 'sed'. Did you mean 'seed'?"),
        ("inhouse", "seed=x", "option seed: 'x' is not int"),
        ("inhouse", "edge=cut", "option edge: 'cut' is not one of keep, exclude"),
        ("inhouse", "manifest_hu=a,1", "option manifest_hu: 'a' is not float"),
        (
            "inhouse",
            "params=x",
            "dataset 'inhouse' has no option 'params'. Accepted: seed, test_fraction, labels, "
            "edge, manifest_axes, manifest_hu",
        ),
        ("phantom", "subject=3", "dataset 'phantom' has no option 'subject'. Did you mean"),
        ("phantom", "subjects=many", "option subjects: 'many' is not int"),
    ],
)
def test_dataset_options_are_checked_against_the_declared_ones(
    tmp_path: Path, dataset: str, option: str, message: str
):
    root = ["--root", str(tmp_path)] if dataset == "inhouse" else []
    code, output = check("--dataset", dataset, *root, "-o", option, debug=False)
    assert code == 1 and f"error: {message}" in output and "Traceback" not in output


def test_typed_options_reach_the_adapter(tmp_path: Path):
    write_inhouse(tmp_path / "bids", [subject(f"{i:03d}", split=None) for i in range(4)])
    labels = tmp_path / "elsewhere.csv"
    labels.write_text("subject,vertebra,label\n000,L3,0\n")
    code, output = check(
        "-d", "inhouse", "-r", str(tmp_path / "bids"), "-o", f"labels={labels}",
        "-o", "test_fraction=1", "-o", "seed=7",
    )  # fmt: skip
    assert code == 0 and "test: 4 subjects / 4 vertebrae" in output and "healthy 1" in output


# --- Hide-and-Seek manifest ---------------------------------------------------------------------


def crop_files(folder: Path, name: str, value: float = 0.5) -> tuple[str, str]:
    """A 64³ normalised crop and its body mask, written as ``<name>.nii.gz`` and
    ``<name>_seg.nii.gz``."""
    image = np.full((64, 64, 64), value, np.float32)
    seg = np.zeros((64, 64, 64), np.uint8)
    seg[20:44, 20:44, 20:44] = 1
    affine = np.diag([0.8, 0.675, 0.8, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti_gz(folder / f"{name}.nii.gz", image, affine)
    write_nifti_gz(folder / f"{name}_seg.nii.gz", seg, affine)
    return f"{name}.nii.gz", f"{name}_seg.nii.gz"


def test_manifest_faults_are_rows_naming_the_file(tmp_path: Path):
    rows = []
    for name, split in (("good", "test"), ("blank", ""), ("hot", "train"), ("torn", "train")):
        image, seg = crop_files(tmp_path, name, np.inf if name == "hot" else 0.5)
        rows.append(
            {"image": image, "seg_msk": seg, "label": 1, "patient_id": name, "split": split}
        )
    torn = tmp_path / "torn.nii.gz"
    torn.write_bytes(torn.read_bytes()[:200])
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    data = InHouseDataset(root=manifest).prepare()
    [(_, w1, r1), (_, w2, r2), (_, w3, r3)] = records(data)
    assert (w1, r1) == (
        "manifest.csv row 3",
        "the split cell is empty while other rows give one; fill it with train or test",
    )
    assert (w2, r2) == (
        "manifest.csv row 4",
        "hot.nii.gz has 262144 non-finite voxels (NaN or infinite); fix or re-export the crop",
    )
    assert w3 == "manifest.csv row 5" and r3.startswith(f"{torn} cannot be read (")
    assert "truncated or corrupt" in r3
    assert [(v.key.subject, v.split) for v in data.vertebrae] == [("good", Split.TEST)]


def test_empty_manifest_names_the_file(tmp_path: Path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("")
    with pytest.raises(
        ValueError, match=r"manifest\.csv is empty; it needs columns image, seg_msk"
    ):
        InHouseDataset(root=manifest).prepare()
    manifest.write_text("image,seg_msk,label\n")
    with pytest.raises(
        ValueError, match=r"manifest\.csv has no usable row \(it has no data rows\)"
    ):
        InHouseDataset(root=manifest).prepare()
