"""In-house BIDS writer and adapter, the Hide-and-Seek manifest path and `datasets check`."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import typer
from test_preprocess import PSR_0P8, PSR_SHAPE, anatomy
from typer.testing import CliRunner

from wsbench.contract import Phenotype, Scope, Split, WeakLabel
from wsbench.data.preprocess import mask_to_source, preprocess_volumes
from wsbench.data.splits import seeded_split
from wsbench.data.volumes import SubjectVolumes, VertebraLabel
from wsbench.datasets.inhouse import HIDESEEK_HU, InHouseDataset
from wsbench.datasets.inhouse.layout import parse_bids_name, write_inhouse


def subject(
    name: str, split: Split | None = Split.TEST, session: str = "", lesions: bool = True
) -> SubjectVolumes:
    """The constructed L3 of test_preprocess as a malignant (mixed) subject."""
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    vertebrae = [VertebraLabel("L3", WeakLabel.MALIGNANT, Phenotype.MIXED)]
    lesion = arrays["lesion"] if lesions else None
    return SubjectVolumes(
        name, arrays["ct"], PSR_0P8, arrays["vert"], vertebrae,
        subreg=arrays["subreg"], lesion=lesion, split=split, session=session,
    )  # fmt: skip


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_write_inhouse_layout_and_determinism(tmp_path: Path):
    subjects = [subject("001"), subject("002", split=None, session="base", lesions=False)]
    write_inhouse(tmp_path / "a", subjects)
    write_inhouse(tmp_path / "b", subjects)
    files = tree_digest(tmp_path / "a")
    assert sorted(files) == [
        "derivatives/sub-001/sub-001_seg-lesion_msk.nii.gz",
        "derivatives/sub-001/sub-001_seg-subreg_msk.nii.gz",
        "derivatives/sub-001/sub-001_seg-vert_msk.nii.gz",
        "derivatives/sub-002/ses-base/sub-002_ses-base_seg-subreg_msk.nii.gz",
        "derivatives/sub-002/ses-base/sub-002_ses-base_seg-vert_msk.nii.gz",
        "labels.csv",
        "rawdata/sub-001/sub-001_ct.nii.gz",
        "rawdata/sub-002/ses-base/sub-002_ses-base_ct.nii.gz",
    ]
    assert files == tree_digest(tmp_path / "b")
    raw = (tmp_path / "a/rawdata/sub-001/sub-001_ct.nii.gz").read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert (tmp_path / "a/labels.csv").read_text() == (
        "subject,session,vertebra,label,phenotype,split\n"
        "001,,L3,malignant,mixed,test\n"
        "002,base,L3,malignant,mixed,\n"
    )
    ct = nib.load(tmp_path / "a/rawdata/sub-001/sub-001_ct.nii.gz")
    assert ct.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(ct.dataobj), subjects[0].ct)
    np.testing.assert_allclose(ct.affine, PSR_0P8)
    assert gzip.decompress(raw)[344:348] == b"n+1\0"  # a single-file NIfTI-1 inside


def test_round_trip_reproduces_preprocessing(tmp_path: Path):
    source = subject("001")
    write_inhouse(tmp_path, [source, subject("002", split=Split.TRAIN)])
    data = InHouseDataset(root=tmp_path).prepare()
    assert data.skipped == [] and data.lesion_metrics
    assert [(v.key.subject, v.key.level, v.split) for v in data.vertebrae] == [
        ("001", "L3", Split.TEST),
        ("002", "L3", Split.TRAIN),
    ]
    vertebra = data.vertebrae[0]
    assert (vertebra.label, vertebra.phenotype) == (WeakLabel.MALIGNANT, Phenotype.MIXED)
    direct = preprocess_volumes(source).crops[0]
    # the NIfTI header stores the affine as float32: sub-µm shifts, ≤ 0.01 HU differences
    np.testing.assert_allclose(vertebra.slices, direct.slices, atol=0.01)
    np.testing.assert_array_equal(vertebra.body, direct.body)
    np.testing.assert_array_equal(vertebra.lesions, direct.lesions)
    assert vertebra.spacing == pytest.approx((0.8, 0.8))
    assert set(np.unique(vertebra.reference)) == {0, 1, 2}
    assert vertebra.training_view().slices is vertebra.slices


def test_cache_hit_and_fingerprint(tmp_path: Path):
    root = tmp_path / "bids"
    write_inhouse(root, [subject("001")])
    cache = tmp_path / "cache"
    first = InHouseDataset(root=root, cache_dir=cache).prepare()
    assert len(list((cache / "inhouse").glob("*.npz"))) == 1
    second = InHouseDataset(root=root, cache_dir=cache).prepare()
    assert first.fingerprint == second.fingerprint
    a, b = first.vertebrae[0], second.vertebrae[0]
    for name in ("slices", "body", "lesions"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.geometry == b.geometry
    (root / "labels.csv").write_text(
        "subject,vertebra,label,phenotype,split\n001,L3,healthy,,test\n"
    )
    relabelled = InHouseDataset(root=root, cache_dir=cache).prepare()
    assert relabelled.fingerprint != first.fingerprint
    assert relabelled.vertebrae[0].label == WeakLabel.HEALTHY


def test_seeded_split_by_subject(tmp_path: Path):
    subjects = [subject(f"{i:03d}", split=None) for i in range(6)]
    write_inhouse(tmp_path, subjects)
    data = InHouseDataset(root=tmp_path, seed=3, test_fraction=0.5).prepare()
    splits = {v.key.subject: v.split for v in data.vertebrae}
    assert splits == seeded_split([f"{i:03d}" for i in range(6)], 3, 0.5)
    assert {s: split.value for s, split in splits.items()} == {
        "000": "train", "001": "train", "002": "test", "003": "train", "004": "test",
        "005": "train",
    }  # fmt: skip
    again = InHouseDataset(root=tmp_path, seed=3, test_fraction=0.5).prepare()
    assert {v.key.subject: v.split for v in again.vertebrae} == splits


def test_bids_names_with_extra_entities():
    parsed = parse_bids_name(Path("sub-07_ses-2_sequ-202_seg-vert_msk.nii.gz"))
    assert (parsed.subject, parsed.session, parsed.entity("seg"), parsed.suffix) == (
        "07",
        "2",
        "vert",
        "msk",
    )
    assert parse_bids_name(Path("notes.nii.gz")) is None
    assert parse_bids_name(Path("sub-1_ct.txt")) is None


def test_bad_inputs_are_reported(tmp_path: Path):
    write_inhouse(tmp_path, [subject(f"00{i}") for i in (1, 2, 3, 6, 7)])
    # 002: lesion mask on another grid; 003: CT with NaN voxels; 006: lesion mask with NaN;
    # 007: lesion mask with a label 5
    lesion = tmp_path / "derivatives/sub-002/sub-002_seg-lesion_msk.nii.gz"
    shifted = PSR_0P8.copy()
    shifted[2, 3] += 5
    nib.save(nib.Nifti1Image(np.zeros(PSR_SHAPE, np.uint8), shifted), lesion)
    ct = anatomy(PSR_0P8, PSR_SHAPE)["ct"].astype(np.float32)
    ct[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(ct, PSR_0P8), tmp_path / "rawdata/sub-003/sub-003_ct.nii.gz")
    for name, value in (("006", np.nan), ("007", 5)):
        mask = anatomy(PSR_0P8, PSR_SHAPE)["lesion"].astype(np.float32)
        mask[2, 2, 2] = value
        path = tmp_path / f"derivatives/sub-{name}/sub-{name}_seg-lesion_msk.nii.gz"
        nib.save(nib.Nifti1Image(mask, PSR_0P8), path)
    # a mask without CT, a subject without vertebra mask, bad table rows
    orphan = tmp_path / "derivatives/sub-009/sub-009_seg-vert_msk.nii.gz"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(lesion.read_bytes())
    (tmp_path / "rawdata/sub-004").mkdir()
    nib.save(nib.Nifti1Image(ct, PSR_0P8), tmp_path / "rawdata/sub-004/sub-004_ct.nii.gz")
    (tmp_path / "labels.csv").write_text(
        "subject,vertebra,label,phenotype\n"
        "001,L3,malignant,lytic\n001,T12,healthy,\n001,L4,perhaps,\n001,X1,healthy,\n"
        "001,L1,healthy,striped\n005,L3,healthy,\n"
    )
    data = InHouseDataset(root=tmp_path).prepare()
    assert [v.key.subject for v in data.vertebrae] == ["001"]
    found = [(Path(s.where).name, s.reason) for s in data.skipped]
    expected_fragments = {
        "sub-009_seg-vert_msk.nii.gz": "mask without a CT",
        "sub-004_ct.nii.gz": "no seg-vert mask",
        "labels.csv row 4": "label 'perhaps'",
        "labels.csv row 5": "vertebra 'X1'",
        "labels.csv row 6": "phenotype 'striped'",
        "labels.csv sub-005 L3": "in the labels table but no usable",
        "sub-001 T12": "in labels.csv but no voxels",
        "sub-002": "lesion mask sub-002_seg-lesion_msk.nii.gz affine differs",
        "sub-003": "CT sub-003_ct.nii.gz has 1 non-finite voxels (NaN or infinite)",
        "sub-006": "lesion mask sub-006_seg-lesion_msk.nii.gz has 1 NaN or infinite voxels",
        "sub-007": "lesion mask sub-007_seg-lesion_msk.nii.gz values [0, 1, 2, 5] are not within",
    }
    for where, fragment in expected_fragments.items():
        assert any(w == where and fragment in r for w, r in found), (where, fragment, found)
    assert len(data.skipped) == len(expected_fragments)
    lost = {Path(s.where).name for s in data.skipped if s.scope is Scope.FILE}
    assert lost == {"sub-002", "sub-003", "sub-004_ct.nii.gz", "sub-006", "sub-007"} | {
        "sub-009_seg-vert_msk.nii.gz"
    }


def test_missing_table_is_one_clear_error(tmp_path: Path):
    write_inhouse(tmp_path, [subject("001")])
    (tmp_path / "labels.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels\.csv"):
        InHouseDataset(root=tmp_path).prepare()
    (tmp_path / "labels.csv").write_text("subject,level,label\n001,L3,1\n")
    with pytest.raises(ValueError, match=r"labels\.csv: missing column"):
        InHouseDataset(root=tmp_path).prepare()


def test_labels_xlsx_and_numeric_vertebrae(tmp_path: Path):
    write_inhouse(tmp_path, [subject("001")])
    (tmp_path / "labels.csv").unlink()
    table = pd.DataFrame({"subject": ["001"], "vertebra": ["22"], "label": ["0"]})
    table.to_excel(tmp_path / "labels.xlsx", index=False)
    data = InHouseDataset(root=tmp_path).prepare()
    assert [(v.key.level, v.label) for v in data.vertebrae] == [("L3", WeakLabel.HEALTHY)]


@pytest.mark.slow
def test_real_tptbox_in_bids_layout(real_data: Path, tmp_path: Path):
    source = real_data / "tptbox"
    derivatives = "derivatives/sub-ct/sub-ct_sequ-202"
    names = {
        "rawdata/sub-ct/sub-ct_sequ-202_ct.nii.gz": "sub-ct_label-22_ct.nii.gz",
        f"{derivatives}_seg-vert_msk.nii.gz": "sub-ct_seg-vert_label-22_msk.nii.gz",
        f"{derivatives}_seg-subreg_msk.nii.gz": "sub-ct_seg-subreg_label-22_msk.nii.gz",
    }
    for target, name in names.items():
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target).symlink_to(source / name)
    (tmp_path / "labels.csv").write_text(
        "subject,vertebra,label,phenotype,split\nct,L3,malignant,blastic,test\nct,21,healthy,,test\n"
    )
    data = InHouseDataset(root=tmp_path).prepare()
    assert data.skipped == [] and not data.lesion_metrics
    assert [v.key.level for v in data.vertebrae] == ["L2", "L3", "L4"]
    assert [v.label for v in data.vertebrae] == [WeakLabel.HEALTHY, WeakLabel.MALIGNANT, None]
    for v in data.vertebrae:
        assert v.slices.shape == v.body.shape == (5, 64, 64) and v.lesions is None
        assert v.geometry["body_source"] == "subregion:49+50"
        assert v.spacing == pytest.approx((0.8 * v.geometry["zoom"]["S"], 0.8))
        assert v.body[2].any()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_hideseek_manifest(real_data: Path, tmp_path: Path, suffix: str):
    ct = real_data / "hideseek_sample_ct.nii.gz"
    seg = real_data / "hideseek_sample_seg.nii.gz"
    table = pd.DataFrame(
        {"image": [str(ct), "missing.nii.gz", str(ct)], "seg_msk": [str(seg)] * 3,
         "label": [1, 0, ""], "patient_id": ["p1", "p2", "p3"]}
    )  # fmt: skip
    manifest = tmp_path / f"manifest{suffix}"
    if suffix == ".csv":
        table.to_csv(manifest, index=False)
    else:
        table.to_excel(manifest, index=False)
    data = InHouseDataset(root=manifest).prepare()
    assert not data.lesion_metrics
    assert [s.where for s in data.skipped] == [f"{manifest.name} row 3"]
    v, unlabelled = data.vertebrae
    assert (v.key.subject, v.label, v.lesions) == ("p1", WeakLabel.MALIGNANT, None)
    assert (unlabelled.key.subject, unlabelled.label) == ("p3", None)
    assert v.slices.shape == v.body.shape == (5, 64, 64)
    assert v.spacing == pytest.approx((0.675, 0.8))
    a, b = HIDESEEK_HU
    raw = np.asarray(nib.load(ct).dataobj)
    mask = np.asarray(nib.load(seg).dataobj) > 0.5
    # PSR array: sagittal slice 32 of axis 2, rows superior → inferior, columns anterior → posterior
    np.testing.assert_allclose(v.slices[2], a * raw[:, ::-1, 32].T + b, rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(v.body[2], mask[:, ::-1, 32].T)
    assert 200 < float(np.median(v.slices[v.body])) < 400  # ≈ 2000·0.65 − 1000
    back, affine = mask_to_source(v.body[2].astype(np.uint8), v.geometry)
    np.testing.assert_allclose(affine, nib.load(ct).affine)
    expected = np.zeros(mask.shape, np.uint8)
    expected[:, :, 32] = mask[:, :, 32]
    np.testing.assert_array_equal(back, expected)


def test_datasets_check_command(tmp_path: Path):
    from wsbench.cli.datasets import app

    write_inhouse(tmp_path, [subject("001")])
    (tmp_path / "labels.csv").write_text("subject,vertebra,label\n001,L3,1\n001,T9,0\n")
    runner = CliRunner()
    result = runner.invoke(app, ["check", "--dataset", "inhouse", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for text in ("L3 1", "malignant 1", "lesion masks", "yes", "sub-001 T9", "no voxels"):
        assert text in result.output
    missing = runner.invoke(app, ["check", "--dataset", "inhouse", "--root", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "does not exist" in " ".join(missing.output.split())
    no_root = runner.invoke(app, ["check", "--dataset", "inhouse"])
    assert no_root.exit_code == 1 and "BIDS-like" in no_root.output
    unknown = runner.invoke(app, ["check", "--dataset", "inhoose", "--root", str(tmp_path)])
    assert unknown.exit_code == 1 and "inhouse" in unknown.output
    assert isinstance(app, typer.Typer)
