"""Shared preprocessing: exact crops on constructed anatomy, orientation, write-back, caching."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wsbench.data.preprocess import (
    PreprocessParams,
    cached_result,
    derive_body,
    mask_to_source,
    preprocess_subject,
    preprocess_volumes,
    save_result,
)
from wsbench.data.volumes import SubjectVolumes, VertebraLabel

PSR_0P8 = np.array(
    [[0, 0, 0.8, -23.6], [-0.8, 0, 0, 39.6], [0, 0.8, 0, -31.6], [0, 0, 0, 1]], dtype=float
)
"""PSR grid, 100 × 80 × 60 voxels of 0.8 mm, voxel centres at odd multiples of 0.4 mm."""
PSR_SHAPE = (100, 80, 60)
RAS_0P8 = np.array(
    [[0.8, 0, 0, -23.6], [0, 0.8, 0, -39.6], [0, 0, 0.8, -31.6], [0, 0, 0, 1]], dtype=float
)
RAS_SHAPE = (60, 100, 80)


def anatomy(
    affine: np.ndarray, shape: tuple[int, int, int], body_height: float = 43.2
) -> dict[str, np.ndarray]:
    """A box-shaped L3 (label 22) with a posterior ring and spinous process, voxelised.

    World millimetres (RAS): body x∈[-16,16), y∈[0,24), z∈[-h/2,h/2); canal x∈[-6,6),
    y∈[-12,-4) inside a ring y∈[-16,0); spinous y∈[-30,-16). Lesions: blastic ball r=4 at
    (0,12,2), lytic ball r=3 at (0,6,-10). CT (HU) = 10 outside, 250 body, 500 posterior, 900
    blastic, -50 lytic, plus 0.5·z for a gradient.
    """
    idx = np.indices(shape).reshape(3, -1).T
    x, y, z = nib.affines.apply_affine(affine, idx).T
    half = body_height / 2

    def box(xr, yr, zr):
        return (x >= xr[0]) & (x < xr[1]) & (y >= yr[0]) & (y < yr[1]) & (z >= zr[0]) & (z < zr[1])

    body = box((-16, 16), (0, 24), (-half, half))
    ring = box((-12, 12), (-16, 0), (-10, 10)) & ~box((-6, 6), (-12, -4), (-10, 10))
    spinous = box((-2, 2), (-30, -16), (-6, 6))
    blastic = body & ((x**2 + (y - 12) ** 2 + (z - 2) ** 2) < 16)
    lytic = body & ((x**2 + (y - 6) ** 2 + (z + 10) ** 2) < 9)
    vert = np.where(body | ring | spinous, 22, 0)
    subreg = np.select([body, ring, spinous], [50, 41, 42], 0)
    lesion = np.select([blastic, lytic], [2, 1], 0)
    ct = np.select([blastic, lytic, body, ring | spinous], [900, -50, 250, 500], 10) + 0.5 * z
    return {
        "ct": np.round(ct).astype(np.int16).reshape(shape),
        "vert": vert.astype(np.uint8).reshape(shape),
        "subreg": subreg.astype(np.uint8).reshape(shape),
        "lesion": lesion.astype(np.uint8).reshape(shape),
    }


def images(arrays: dict[str, np.ndarray], affine: np.ndarray) -> dict[str, nib.Nifti1Image]:
    return {k: nib.Nifti1Image(v, affine) for k, v in arrays.items()}


def run(arrays, affine, with_subreg=True, **kwargs):
    img = images(arrays, affine)
    return preprocess_subject(
        img["ct"], img["vert"], img["subreg"] if with_subreg else None, img["lesion"], **kwargs
    )


def test_exact_crop_on_psr_grid():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    result = run(arrays, PSR_0P8, where="sub-x")
    assert result.skipped == [] and result.mask_levels == ["L3"]
    (crop,) = result.crops
    assert crop.slices.shape == crop.body.shape == crop.lesions.shape == (5, 64, 64)
    assert (crop.slices.dtype, crop.body.dtype, crop.lesions.dtype) == (
        np.float32,
        np.bool_,
        np.uint8,
    )
    # body p 20..49, s 13..66 (54 high: box + 2×5 = 64, no resize), r 10..49 (centre r = 30)
    assert crop.spacing == pytest.approx((0.8, 0.8))
    assert crop.geometry["zoom"] == {"P": 1.0, "S": 1.0, "R": 1.0}
    # display order: row b ↔ s = 71 - b (superior on top), column c ↔ p = 3 + c (anterior left)
    expected = np.flip(np.transpose(arrays["ct"][3:67, 8:72, 28:33], (2, 1, 0)), axis=1)
    np.testing.assert_allclose(crop.slices, expected.astype(np.float32), atol=1e-4)
    expected_lesions = np.flip(np.transpose(arrays["lesion"][3:67, 8:72, 28:33], (2, 1, 0)), 1)
    np.testing.assert_array_equal(crop.lesions, expected_lesions)
    body = np.zeros((5, 64, 64), bool)
    body[:, 5:59, 17:47] = True
    np.testing.assert_array_equal(crop.body, body)
    assert crop.geometry["slice_indices"] == [30, 31, 32, 33, 34]
    # superior is up: the blastic ball (z = +2) lies above the lytic one (z = -10)
    rows_blastic = np.flatnonzero((crop.lesions[2] == 2).any(axis=1))
    rows_lytic = np.flatnonzero((crop.lesions[2] == 1).any(axis=1))
    assert rows_blastic.max() < rows_lytic.min()


def test_orientation_does_not_change_the_result():
    psr = run(anatomy(PSR_0P8, PSR_SHAPE), PSR_0P8).crops[0]
    ras = run(anatomy(RAS_0P8, RAS_SHAPE), RAS_0P8).crops[0]
    np.testing.assert_allclose(psr.slices, ras.slices, atol=1e-4)
    np.testing.assert_array_equal(psr.body, ras.body)
    np.testing.assert_array_equal(psr.lesions, ras.lesions)


def test_superior_axis_is_resized_and_spacing_recorded():
    arrays = anatomy(PSR_0P8, PSR_SHAPE, body_height=24.0)  # 30 voxels + 10 margin = 40
    crop = run(arrays, PSR_0P8).crops[0]
    assert crop.geometry["zoom"]["S"] == pytest.approx(40 / 64)
    assert crop.spacing == pytest.approx((0.8 * 40 / 64, 0.8))
    rows = np.flatnonzero(crop.body[2].any(axis=1))
    assert abs(rows[0] - 5 * 64 / 40) <= 1 and abs(rows[-1] - (63 - 5 * 64 / 40)) <= 1


def test_mask_to_source_round_trip_exact():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    crop = run(arrays, PSR_0P8).crops[0]
    back, affine = mask_to_source(crop.lesions[2], crop.geometry)
    np.testing.assert_array_equal(affine, PSR_0P8)
    expected = np.zeros_like(arrays["lesion"])
    expected[:, :, 30] = arrays["lesion"][:, :, 30]
    np.testing.assert_array_equal(back, expected)
    # feeding the written-back mask through preprocessing gives the 2D mask again
    again = run({**arrays, "lesion": back}, PSR_0P8).crops[0]
    np.testing.assert_array_equal(again.lesions[2], crop.lesions[2])


def test_mask_to_source_on_coarse_oblique_free_grid():
    affine = np.array(
        [[1.5, 0, 0, -23.25], [0, 0.8, 0, -39.6], [0, 0, 0.8, -31.6], [0, 0, 0, 1]], dtype=float
    )
    arrays = anatomy(affine, (32, 100, 80))
    crop = run(arrays, affine).crops[0]
    assert crop.lesions[2].any()
    back, _ = mask_to_source(crop.lesions[2], crop.geometry)
    planes = np.flatnonzero(back.any(axis=(1, 2)))
    assert len(planes) == 1
    plane = planes[0]
    np.testing.assert_array_equal(back[plane], arrays["lesion"][plane])


def test_body_derived_without_subregions():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    vertebra = arrays["vert"] == 22
    body = derive_body(vertebra, 0.8)
    # canal front wall y = -4 → p = 55; the body is the vertebra anterior to it
    expected = vertebra.copy()
    expected[55:] = False
    np.testing.assert_array_equal(body, expected)
    crop = run(arrays, PSR_0P8, with_subreg=False).crops[0]
    assert crop.geometry["body_source"].startswith("derived")


def test_preprocess_volumes_matches_images():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    subject = SubjectVolumes(
        "x", arrays["ct"], PSR_0P8, arrays["vert"], [VertebraLabel("L3", None)],
        subreg=arrays["subreg"], lesion=arrays["lesion"],
    )  # fmt: skip
    a = preprocess_volumes(subject).crops[0]
    b = run(arrays, PSR_0P8).crops[0]
    np.testing.assert_array_equal(a.slices, b.slices)
    np.testing.assert_array_equal(a.lesions, b.lesions)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("shape", "shape"),
        ("affine", "affine differs"),
        ("nan", "NaN"),
        ("no_body", "empty vertebral-body mask"),
    ],
)
def test_bad_inputs_become_skipped(change, reason):
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    img = images(arrays, PSR_0P8)
    if change == "shape":
        img["vert"] = nib.Nifti1Image(arrays["vert"][:-1], PSR_0P8)
    elif change == "affine":
        shifted = PSR_0P8.copy()
        shifted[0, 3] += 2.0
        img["subreg"] = nib.Nifti1Image(arrays["subreg"], shifted)
    elif change == "nan":
        ct = arrays["ct"].astype(np.float32)
        ct[0, 0, 0] = np.nan
        img["ct"] = nib.Nifti1Image(ct, PSR_0P8)
    else:
        img["subreg"] = nib.Nifti1Image(
            np.where(arrays["subreg"] == 50, 0, 41).astype(np.uint8), PSR_0P8
        )
    result = preprocess_subject(
        img["ct"], img["vert"], img["subreg"], img["lesion"], where="sub-bad"
    )
    assert result.crops == []
    assert len(result.skipped) == 1
    assert result.skipped[0].where.startswith("sub-bad")
    assert reason in result.skipped[0].reason


def test_requested_level_without_voxels_is_reported():
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    result = run(arrays, PSR_0P8, levels=["L3", "T12"], where="sub-x")
    assert [c.level for c in result.crops] == ["L3"]
    assert [(s.where, s.reason) for s in result.skipped] == [
        ("sub-x T12", "no voxels in the vertebra mask")
    ]


def test_cache_hit_gives_identical_arrays(tmp_path: Path):
    arrays = anatomy(PSR_0P8, PSR_SHAPE)
    calls = []

    def compute():
        calls.append(1)
        return run(arrays, PSR_0P8, where="sub-x")

    first, hit1 = cached_result(tmp_path, "key", compute)
    second, hit2 = cached_result(tmp_path, "key", compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    # no temporary file left; the name carries the result format
    assert [p.name for p in tmp_path.iterdir()] == ["key-r2.npz"]
    for a, b in zip(first.crops, second.crops, strict=True):
        for name in ("slices", "body", "lesions"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
        assert a.spacing == b.spacing and a.geometry == b.geometry and a.level == b.level


def test_failed_cache_write_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    result = run(anatomy(PSR_0P8, PSR_SHAPE), PSR_0P8, where="sub-x")
    path = tmp_path / "key.npz"
    save_result(path, result)
    before = path.read_bytes()

    def disk_full(handle, **arrays):
        handle.write(b"half an npz")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match=f"could not write {path}"):
        save_result(path, result)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["key.npz"]


@pytest.mark.slow
def test_real_tptbox_sample(real_data: Path):
    folder = real_data / "tptbox"
    ct = nib.load(folder / "sub-ct_label-22_ct.nii.gz")
    vert = nib.load(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    subreg = nib.load(folder / "sub-ct_seg-subreg_label-22_msk.nii.gz")
    result = preprocess_subject(ct, vert, subreg, where="sub-ct", params=PreprocessParams())
    assert result.skipped == []
    assert [c.level for c in result.crops] == ["L2", "L3", "L4"]
    for crop in result.crops:
        assert crop.slices.shape == crop.body.shape == (5, 64, 64)
        assert crop.lesions is None
        assert crop.geometry["body_source"] == "subregion:49+50"
        assert crop.spacing[1] == pytest.approx(0.8)
        assert crop.spacing[0] == pytest.approx(0.8 * crop.geometry["zoom"]["S"])
        assert crop.body[2].any()
    l3 = result.crops[1]
    # trabecular bone (the source's L3 body median is 98 HU): neither soft tissue nor cortex
    assert 30 < float(np.median(l3.slices[2][l3.body[2]])) < 250
