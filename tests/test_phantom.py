"""The synthetic phantom: plan, rendering invariants, determinism, in-house round trip, insert."""

from __future__ import annotations

import csv
import shutil
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wsbench.contract import Phenotype, Split, WeakLabel
from wsbench.data.volumes import BODY_SUBREGIONS
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.phantom import PhantomDataset, build_with_progress, phantom_options
from wsbench.datasets.phantom.generate import build_cached, render_subject, write_phantom
from wsbench.datasets.phantom.insert import InsertOptions, insert_dataset
from wsbench.datasets.phantom.plan import MIMIC_TYPES, PhantomOptions, plan_dataset, plan_subject
from wsbench.models.store import cache_root

TINY = PhantomOptions(subjects=3, seed=5, test_fraction=1.0, min_levels=2, max_levels=2)
"""Three two-vertebra test subjects: blastic, lytic and mixed patients (the test cycle)."""


def test_default_test_split_has_every_phenotype_mimic_and_healthy_vertebrae() -> None:
    options = PhantomOptions()
    test = [p for p in plan_dataset(options) if p.split == Split.TEST]
    vertebrae = [v for p in test for v in p.vertebrae]
    malignant = [v for v in vertebrae if v.label == WeakLabel.MALIGNANT]
    assert {v.phenotype for v in malignant} == set(Phenotype)
    assert all(v.lesions for v in malignant)
    assert {lesion.kind for v in malignant for lesion in v.lesions} == {"lytic", "blastic", "mixed"}
    assert any(v.label == WeakLabel.HEALTHY for v in vertebrae)
    assert {m.kind for v in vertebrae for m in v.mimics} == set(MIMIC_TYPES)
    n_train = sum(len(p.vertebrae) for p in plan_dataset(options) if p.split == Split.TRAIN)
    assert 1500 <= n_train <= 2500
    assert 150 <= len(vertebrae) <= 250


def test_plans_are_independent_per_subject() -> None:
    small = PhantomOptions(subjects=5, seed=3, test_fraction=0.2)
    large = PhantomOptions(subjects=50, seed=3, test_fraction=0.02)
    assert plan_subject(small, 4) == plan_subject(large, 4)
    assert plan_subject(small, 4) != plan_subject(PhantomOptions(subjects=5, seed=4), 4)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_lesions_lie_in_the_body_and_never_on_a_mimic(index: int) -> None:
    subject = render_subject(plan_subject(TINY, index))
    lesion, mimic = subject.lesion, subject.extra["mimic"]
    assert lesion.any() and mimic.any()
    body = np.isin(subject.subreg, BODY_SUBREGIONS) & (subject.vert > 0)
    assert not (lesion > 0)[~body].any()
    assert not ((lesion > 0) & (mimic > 0)).any()
    assert subject.ct.dtype == np.int16
    expected = {0: {2}, 1: {1}, 2: {1, 2}}[index]
    assert set(np.unique(lesion[lesion > 0]).tolist()) <= {1, 2}
    assert set(np.unique(lesion[lesion > 0]).tolist()) & expected


def test_lesions_change_hu_in_their_direction() -> None:
    blastic = render_subject(plan_subject(TINY, 0))
    lytic = render_subject(plan_subject(TINY, 1))
    for subject in (blastic, lytic):
        healthy_body = (
            (subject.subreg == 50) & (subject.lesion == 0) & (subject.extra["mimic"] == 0)
        )
        reference = np.median(subject.ct[healthy_body])
        inside = np.median(subject.ct[subject.lesion > 0])
        if subject is blastic:
            assert inside > reference + 100
        else:
            assert inside < reference - 50


def test_same_seed_same_arrays_other_seed_other_arrays() -> None:
    a = render_subject(plan_subject(TINY, 1))
    b = render_subject(plan_subject(TINY, 1))
    c = render_subject(plan_subject(PhantomOptions(**{**TINY.__dict__, "seed": 6}), 1))
    for name in ("ct", "vert", "subreg", "lesion"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert np.array_equal(a.affine, b.affine)
    assert a.ct.shape != c.ct.shape or not np.array_equal(a.ct, c.ct)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_write_is_byte_identical_and_round_trips(tmp_path: Path) -> None:
    options = PhantomOptions(subjects=2, seed=2, test_fraction=0.5, min_levels=2, max_levels=2)
    write_phantom(tmp_path / "a", options, workers=1)
    write_phantom(tmp_path / "b", options, workers=2)
    assert _tree_bytes(tmp_path / "a") == _tree_bytes(tmp_path / "b")

    root = tmp_path / "a"
    with open(root / "labels.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for plan in plan_dataset(options):
        subject = render_subject(plan)
        stem = f"sub-{plan.subject}"
        ct = nib.load(root / "rawdata" / stem / f"{stem}_ct.nii.gz")
        assert np.array_equal(np.asarray(ct.dataobj), subject.ct)
        assert np.allclose(ct.affine, subject.affine)
        assert np.allclose(ct.header.get_zooms(), subject.spacing)
        for seg in ("vert", "subreg", "lesion", "mimic"):
            path = root / "derivatives" / stem / f"{stem}_seg-{seg}_msk.nii.gz"
            expected = subject.extra["mimic"] if seg == "mimic" else getattr(subject, seg)
            assert np.array_equal(np.asarray(nib.load(path).dataobj), expected)
        mine = [r for r in rows if r["subject"] == plan.subject]
        assert [(r["vertebra"], r["label"], r["phenotype"], r["split"]) for r in mine] == [
            (v.level, v.label.value, v.phenotype.value if v.phenotype else "", plan.split.value)
            for v in plan.vertebrae
        ]
    prepared = InHouseDataset(root=root, cache_dir=tmp_path / "cache").prepare()
    assert not prepared.skipped
    assert len(prepared.vertebrae) == 4
    assert {v.split for v in prepared.vertebrae} == {Split.TRAIN, Split.TEST}


def test_phantom_dataset_builds_once_and_reads_through_inhouse(tmp_path: Path) -> None:
    options = {"subjects": 2, "seed": 1, "test_fraction": 0.5, "min_levels": 2, "max_levels": 2}
    first = PhantomDataset(cache_dir=tmp_path / "prepared", workers=1, **options).prepare()
    folder = first.root
    assert folder is not None and (folder / "labels.csv").is_file()
    stamp = (folder / "labels.csv").stat().st_mtime_ns
    second = PhantomDataset(cache_dir=tmp_path / "prepared", workers=1, **options).prepare()
    assert second.root == folder and (folder / "labels.csv").stat().st_mtime_ns == stamp
    assert first.name == "phantom" and first.fingerprint == second.fingerprint
    assert first.lesion_metrics
    assert {v.key.dataset for v in first.vertebrae} == {"phantom"}
    assert build_cached(folder.parent, phantom_options(options), workers=1) == folder
    with pytest.raises(ValueError, match="unknown phantom option"):
        phantom_options({"subject": 3})


def test_rendering_processes_prepare_their_subjects_as_the_adapter_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = PhantomOptions(subjects=3, seed=4, test_fraction=0.5, min_levels=2, max_levels=2)
    prepared = tmp_path / "prepared"
    folder = build_with_progress(cache_root() / "phantom", options, 2, prepared)
    assert len(list((prepared / "phantom").glob("*.npz"))) == options.subjects

    def no_preprocessing(*args: object, **kwargs: object) -> None:
        raise AssertionError("a subject was preprocessed again")

    serial = InHouseDataset(root=folder, cache_dir=tmp_path / "serial").prepare()
    monkeypatch.setattr("wsbench.datasets.inhouse.preprocess_subject", no_preprocessing)
    built = PhantomDataset(cache_dir=prepared, workers=2, **asdict(options)).prepare()
    assert built.root == folder and built.fingerprint == serial.fingerprint
    assert not built.skipped and not serial.skipped
    pairs = zip(built.vertebrae, serial.vertebrae, strict=True)
    for mine, theirs in pairs:
        assert (mine.key.subject, mine.key.level) == (theirs.key.subject, theirs.key.level)
        assert np.array_equal(mine.slices, theirs.slices)
        assert np.array_equal(mine.body, theirs.body)
        assert np.array_equal(mine.lesions, theirs.lesions)


def test_insert_into_real_vertebrae(real_data: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    sample = real_data / "tptbox"
    (source / "rawdata" / "sub-ct").mkdir(parents=True)
    (source / "derivatives" / "sub-ct").mkdir(parents=True)
    shutil.copy(sample / "sub-ct_label-22_ct.nii.gz", source / "rawdata/sub-ct/sub-ct_ct.nii.gz")
    for seg in ("vert", "subreg"):
        shutil.copy(
            sample / f"sub-ct_seg-{seg}_label-22_msk.nii.gz",
            source / f"derivatives/sub-ct/sub-ct_seg-{seg}_msk.nii.gz",
        )
    out = tmp_path / "out"
    assert insert_dataset(source, out, InsertOptions(copies=1)) == ["ctc00"]
    derivatives = out / "derivatives" / "sub-ctc00"
    lesion = np.asarray(nib.load(derivatives / "sub-ctc00_seg-lesion_msk.nii.gz").dataobj)
    mimic = np.asarray(nib.load(derivatives / "sub-ctc00_seg-mimic_msk.nii.gz").dataobj)
    subreg = np.asarray(nib.load(derivatives / "sub-ctc00_seg-subreg_msk.nii.gz").dataobj)
    assert lesion.any()
    assert not (lesion > 0)[~np.isin(subreg, BODY_SUBREGIONS)].any()
    assert not ((lesion > 0) & (mimic > 0)).any()
    prepared = InHouseDataset(root=out, cache_dir=tmp_path / "cache").prepare()
    assert {v.key.level for v in prepared.vertebrae} == {"L3"}
    assert any(v.label == WeakLabel.MALIGNANT for v in prepared.vertebrae)


def test_phantom_in_tcia_and_inhouse_layouts_gives_the_same_slices(tmp_path: Path) -> None:
    from wsbench.datasets.inhouse import InHouseDataset
    from wsbench.datasets.inhouse.layout import write_inhouse
    from wsbench.datasets.phantom.tcia_writer import write_tcia
    from wsbench.datasets.tcia import TciaDataset

    subjects = [render_subject(plan_subject(TINY, i)) for i in range(2)]
    write_inhouse(tmp_path / "inhouse", subjects)
    write_tcia(tmp_path / "tcia", subjects)
    inhouse = InHouseDataset(root=tmp_path / "inhouse").prepare()
    tcia = TciaDataset(root=tmp_path / "tcia").prepare()
    assert tcia.skipped == [] and inhouse.skipped == []

    def by_level(data):
        return {(v.key.subject, v.key.level): v for v in data.vertebrae}

    a, b = by_level(inhouse), by_level(tcia)
    assert a.keys() == b.keys() and len(a) >= 2
    for key, vertebra in a.items():
        other = b[key]
        assert (other.label, other.phenotype) == (vertebra.label, vertebra.phenotype)
        np.testing.assert_allclose(other.slices, vertebra.slices, atol=0.5)
        # TCIA has whole-vertebra masks only: its body is derived, not the phantom's corpus
        overlap = (other.body & vertebra.body).sum() / vertebra.body.sum()
        assert overlap > 0.85, key
