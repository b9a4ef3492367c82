"""Shared preprocessing (paper Table 3): PSR 0.8 mm grid, body crop, central sagittal slices.

Every dataset adapter turns a subject's CT (HU) and masks into :class:`VertebraCrop` records with
:func:`preprocess_subject`. Per vertebra:

1. The world is gridded on a **PSR lattice** (axis 0 → posterior, 1 → superior, 2 → right) of
   ``spacing_mm`` (0.8 mm) isotropic voxels covering the source volume (``lattice_affine``,
   ``lattice_shape``; it is never allocated as a whole).
2. The vertebra's label map and subregion map are resampled (nearest) onto the part of the
   lattice around the vertebra; the **body** is vertebra ∩ subregions 49 ∪ 50, or, without a
   subregion mask, derived from the vertebra mask (:func:`derive_body`).
3. The crop box is the body's bounding box + ``margin`` voxels. As in the authors' 64³ crops
   (their sample: 0.8 × 0.675 × 0.8 mm in P, S, R) only the **superior axis is resized**: the
   box height is stretched/shrunk to ``crop`` voxels (spacing ``0.8·height/64``), while the
   anterior-posterior and left-right axes keep 0.8 mm with a ``crop``-voxel window centred on the
   box (the anterior-posterior axis is resized too only when box + margin exceeds ``crop``).
4. The CT (linear, outside the scan = ``pad_hu``), the body and the lesion map (nearest) are
   sampled from the source **once**, directly on the final grid (resampling, cropping and resizing
   composed into one affine), keeping HU.
5. The central ``n_slices`` sagittal slices (fixed R index; the middle one at the body's centre
   along R) are returned as ``(n_slices, 64, 64)`` arrays (five by default) in **display
   order**: rows run superior → inferior, columns anterior → posterior, so
   ``plt.imshow(slices[2])`` shows a normal sagittal view with the head up and the patient
   facing left. ``spacing`` is (row, column) in mm.

``geometry`` records the source affine/shape, the lattice, the crop box, zoom factors, the crop's
own affine (axes R, I, P) and the slice indices; :func:`mask_to_source` uses it to put a slice
mask (or the slices of a k-slice evaluation) back into the source volume. Problems become
:class:`~wsbench.contract.Skipped` records: a subject-wide fault (unreadable geometry, non-finite
CT voxels, a bad mask) costs the subject
(:attr:`~wsbench.contract.Scope.FILE`), a vertebra-level one only that vertebra.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage
from skimage.measure import label as label_components

from wsbench.contract import GRID_MM, N_CENTRAL_SLICES, Scope, Skipped
from wsbench.data.volumes import BODY_SUBREGIONS, LEVEL_NAMES, SubjectVolumes
from wsbench.files import atomic_path

PSR_DIRECTIONS = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
"""Columns: RAS world direction of lattice axes P, S, R."""

CROP_AXES = "RIP"
"""Axes of the crop grid and of the returned arrays: slice (→ right), row (→ inferior), column
(→ posterior)."""

SACRUM_LABEL = 26
"""Sacrum label in VerSe numbering; present in many masks, never cropped."""

CANAL_MIN_AREA_MM2 = 25.0
"""Smallest enclosed hole (mm²) taken as the spinal canal by :func:`derive_body`."""

BODY_FALLBACK_FRACTION = 0.4
"""Anterior fraction of a vertebra's anterior-posterior extent taken as body when no canal is
found."""

BODY_PRESENCE_FRACTION = 0.2
"""Anterior fraction of a vertebra's anterior-posterior extent in which a mask with a body has
voxels at its left-right midline (:func:`lacks_body`)."""

MIDLINE_HALF_WIDTH_MM = 2.0
"""Half width of the left-right midline band :func:`lacks_body` looks in."""

MAX_LABEL = 255
"""Largest label value of a vertebra or subregion mask (VerSe numbers, SPINEPS subregions)."""

RESULT_FORMAT = 2
"""Version of what a cached :class:`SubjectResult` holds (its checks and fields); part of every
cache file name, so results made by older checks are computed again."""


@dataclass(frozen=True)
class PreprocessParams:
    """Preprocessing parameters (paper Table 3); they are part of every cache key."""

    spacing_mm: float = GRID_MM
    crop: int = 64
    margin: int = 5
    n_slices: int = N_CENTRAL_SLICES
    """Central sagittal slices cut per vertebra: five, or more for a k-slice evaluation
    (:func:`~wsbench.contract.central_slices_needed`)."""
    image_order: int = 1
    pad_hu: float = -1024.0
    version: str = "1"

    def __post_init__(self) -> None:
        n, crop = self.n_slices, self.crop
        if n % 2 == 0 or not N_CENTRAL_SLICES <= n <= crop:
            raise ValueError(
                f"n_slices={n}: give an odd number of central slices from {N_CENTRAL_SLICES} to "
                f"the crop's {crop} (fewer or a smaller step for a k-slice evaluation)"
            )

    def as_dict(self) -> dict[str, Any]:
        """JSON form (for cache keys)."""
        return asdict(self)

    def data_dict(self) -> dict[str, Any]:
        """JSON form for dataset fingerprints: :meth:`as_dict` with ``n_slices`` at its default.
        Vertebrae prepared with more central slices (for a k-slice evaluation) are the same
        data: their five central slices, all a method trains on, are the same arrays, so models
        trained for one preparation serve the other."""
        return {**self.as_dict(), "n_slices": N_CENTRAL_SLICES}


@dataclass
class VertebraCrop:
    """One preprocessed vertebra: central sagittal slices (HU), body mask, optional lesions."""

    level: str
    slices: np.ndarray
    body: np.ndarray
    spacing: tuple[float, float]
    lesions: np.ndarray | None = None
    geometry: dict[str, Any] = field(default_factory=dict)
    lesion_voxels: int | None = None
    """Lesion voxels inside this vertebra's own 3D mask (``None`` without a lesion mask)."""


@dataclass
class SubjectResult:
    """What :func:`preprocess_subject` returns: crops, problems, and the levels in the mask."""

    crops: list[VertebraCrop]
    skipped: list[Skipped]
    mask_levels: list[str]


def psr_lattice(
    affine: np.ndarray, shape: Sequence[int], spacing_mm: float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the world-aligned PSR grid of ``spacing_mm`` covering a volume."""
    corners = np.array(
        [[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    )
    frame = apply_affine(affine, corners) @ PSR_DIRECTIONS
    low, high = frame.min(axis=0), frame.max(axis=0)
    lattice = np.eye(4)
    lattice[:3, :3] = PSR_DIRECTIONS * spacing_mm
    lattice[:3, 3] = PSR_DIRECTIONS @ low
    lattice_shape = tuple(int(n) for n in np.floor((high - low) / spacing_mm + 1e-6) + 1)
    return lattice, lattice_shape  # type: ignore[return-value]


def sample_on_grid(
    data: np.ndarray,
    data_affine: np.ndarray,
    out_shape: Sequence[int],
    out_affine: np.ndarray,
    order: int,
    cval: float = 0.0,
    dtype: type = np.float32,
) -> np.ndarray:
    """Resample ``data`` onto the grid ``(out_shape, out_affine)`` (scipy spline of ``order``)."""
    vox = np.linalg.solve(data_affine, out_affine)
    return ndimage.affine_transform(
        data,
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(int(n) for n in out_shape),
        output=dtype,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )


def derive_body(vertebra: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Vertebral body from a whole-vertebra mask on a PSR grid (axis 0 → posterior).

    In every axial plane the spinal canal is the largest hole the vertebra encloses; the body is
    the part of the vertebra anterior to the canal's front wall. Planes without a closed canal use
    the median wall position of the others; with no canal at all the anterior
    ``BODY_FALLBACK_FRACTION`` of the vertebra's extent is used. The largest 3D component is kept.
    """
    min_area = CANAL_MIN_AREA_MM2 / spacing_mm**2
    fronts: dict[int, int] = {}
    for s in np.flatnonzero(vertebra.any(axis=(0, 2))):
        plane = vertebra[:, s, :]
        holes, n = ndimage.label(ndimage.binary_fill_holes(plane) & ~plane)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(holes), holes, index=np.arange(1, n + 1))
        biggest = int(np.argmax(sizes)) + 1
        if sizes[biggest - 1] >= min_area:
            fronts[int(s)] = int(np.flatnonzero((holes == biggest).any(axis=1))[0])
    p_any = np.flatnonzero(vertebra.any(axis=(1, 2)))
    if fronts:
        default = int(np.median(list(fronts.values())))
    else:
        default = int(p_any[0] + BODY_FALLBACK_FRACTION * (p_any[-1] - p_any[0] + 1))
    front = np.array([fronts.get(s, default) for s in range(vertebra.shape[1])])
    anterior = np.arange(vertebra.shape[0])[:, None, None] < front[None, :, None]
    body = vertebra & anterior
    components = label_components(body, connectivity=1)
    if components.max() == 0:
        return body
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    return components == largest


def lacks_body(vertebra: np.ndarray, spacing_mm: float) -> bool:
    """True when a whole-vertebra mask on a PSR grid (axis 0 → posterior) holds no body: no voxel
    near its left-right midline in the anterior ``BODY_PRESENCE_FRACTION`` of its extent, as for
    a mask of the posterior elements alone (the canal, open in front, lies there)."""
    p_any = np.flatnonzero(vertebra.any(axis=(1, 2)))
    r_any = np.flatnonzero(vertebra.any(axis=(0, 1)))
    if p_any.size == 0:
        return True
    front = p_any[0] + math.ceil(BODY_PRESENCE_FRACTION * (p_any[-1] - p_any[0] + 1))
    mid = (int(r_any[0]) + int(r_any[-1])) // 2
    half = max(1, round(MIDLINE_HALF_WIDTH_MM / spacing_mm))
    return not vertebra[:front, :, max(mid - half, 0) : mid + half + 1].any()


def _body_deriver() -> tuple[Callable[[np.ndarray, float], np.ndarray], str]:
    """The body derivation used without a subregion mask.

    ``wsbench.body.derive_body(vertebra_psr: bool array, spacing_mm: float) -> bool array`` when
    that module provides it, else :func:`derive_body`.
    """
    try:
        from wsbench import body as body_module  # type: ignore[attr-defined]
    except ImportError:
        body_module = None
    better = getattr(body_module, "derive_body", None)
    if better is None:
        return derive_body, "derived:wsbench.data.preprocess.derive_body"
    return better, "derived:wsbench.body.derive_body"


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _axis_window(lo: int, hi: int, margin: int, size: int, resize: bool) -> tuple[float, float]:
    """(lattice coordinate of crop index 0, zoom) for the box ``[lo-margin, hi+margin]``."""
    extent = hi - lo + 1 + 2 * margin
    start = lo - margin
    if resize or extent > size:
        zoom = extent / size
        return start + 0.5 * zoom - 0.5, zoom
    return float(start - (size - extent) // 2), 1.0


def _crop_affine(
    lattice_affine: np.ndarray, start: Mapping[str, float], zoom: Mapping[str, float], size: int
) -> np.ndarray:
    """Affine of the crop grid (axes R, I, P) from the lattice window in P, S, R."""
    to_lattice = np.zeros((4, 4))
    to_lattice[0, 2] = zoom["P"]
    to_lattice[0, 3] = start["P"]
    to_lattice[1, 1] = -zoom["S"]
    to_lattice[1, 3] = start["S"] + zoom["S"] * (size - 1)
    to_lattice[2, 0] = zoom["R"]
    to_lattice[2, 3] = start["R"]
    to_lattice[3, 3] = 1.0
    return lattice_affine @ to_lattice


def _region(
    bbox: tuple[slice, ...], source_affine: np.ndarray, lattice_affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """Lattice index origin, affine and shape of the lattice part covering a source box."""
    corners = np.array(
        [
            [a, b, c]
            for a in (bbox[0].start, bbox[0].stop - 1)
            for b in (bbox[1].start, bbox[1].stop - 1)
            for c in (bbox[2].start, bbox[2].stop - 1)
        ]
    )
    coords = apply_affine(np.linalg.solve(lattice_affine, source_affine), corners)
    low = np.floor(coords.min(axis=0)).astype(int) - 1
    high = np.ceil(coords.max(axis=0)).astype(int) + 1
    shift = np.eye(4)
    shift[:3, 3] = low
    return low, lattice_affine @ shift, tuple(int(n) for n in high - low + 1)  # type: ignore[return-value]


def file_name(image: nib.spatialimages.SpatialImage, role: str) -> str:
    """The file an image was read from (its name), else ``role`` (an in-memory image)."""
    name = image.get_filename()
    return Path(name).name if name else role


def _geometry_problem(image: nib.spatialimages.SpatialImage, name: str) -> str | None:
    """Why an image's grid is unusable (not 3D, empty, or a non-finite or singular affine)."""
    if len(image.shape) != 3:
        return f"{name} is not a 3D volume (shape {image.shape}); give one 3D volume per file"
    if min(image.shape) < 1:
        return f"{name} has an empty dimension (shape {image.shape}); re-export it"
    affine = np.asarray(image.affine, dtype=float)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        return (
            f"{name} has a non-finite or singular affine (header pixdim/qform/sform); fix the "
            "header or re-export the file"
        )
    return None


def _check_inputs(
    ct: nib.spatialimages.SpatialImage,
    masks: Mapping[str, nib.spatialimages.SpatialImage | None],
    where: str,
) -> list[Skipped]:
    problem = _geometry_problem(ct, f"CT {file_name(ct, 'CT')}")
    if problem:
        return [Skipped(where, problem, Scope.FILE)]
    problems = []
    for role, img in masks.items():
        if img is None:
            continue
        name = f"{role} mask {file_name(img, role)}"
        if img.shape[:3] != ct.shape[:3]:
            reason = f"{name} shape {img.shape} differs from CT shape {ct.shape}"
        elif (problem := _geometry_problem(img, name)) is not None:
            reason = problem
        elif not np.allclose(img.affine, ct.affine, atol=1e-3):
            reason = (
                f"{name} affine differs from the CT affine by up to "
                f"{np.abs(img.affine - ct.affine).max():.4g} mm; resample it onto the CT"
            )
        else:
            continue
        problems.append(Skipped(where, reason, Scope.FILE))
    return problems


def _ct_problem(ct: nib.spatialimages.SpatialImage, data: np.ndarray, where: str) -> Skipped | None:
    """A CT with NaN or infinite voxels."""
    if not np.issubdtype(data.dtype, np.floating):
        return None
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if not n_bad:
        return None
    reason = (
        f"CT {file_name(ct, 'CT')} has {n_bad} non-finite voxels (NaN or infinite); "
        "fix or re-export the scan"
    )
    return Skipped(where, reason, Scope.FILE)


def _mask_problem(role: str, image: Any | None, where: str) -> Skipped | None:
    """A label mask with NaN, infinite or fractional voxels, or values outside 0..255 (0/1/2
    for the lesion mask)."""
    if image is None:
        return None
    name = f"{role} mask {file_name(image, role)}"
    data = np.asanyarray(image.dataobj)
    reason = None
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            reason = f"{name} has {n_bad} NaN or infinite voxels"
        elif (data != np.round(data)).any():
            reason = f"{name} has fractional values"
    highest = 2 if role == "lesion" else MAX_LABEL
    if reason is None and data.size and (data.min() < 0 or data.max() > highest):
        values = np.unique(data)
        shown = (
            values.astype(np.int64).tolist()
            if values.size <= 8
            else f"{values.min():g}..{values.max():g}"
        )
        reason = f"{name} values {shown} are not within 0..{highest}"
    return None if reason is None else Skipped(where, f"{reason}; fix the mask", Scope.FILE)


def _lesions_outside(
    lesion: nib.spatialimages.SpatialImage,
    lesion_data: np.ndarray,
    vert_data: np.ndarray,
    where: str,
) -> Skipped | None:
    """Lesion voxels lying outside every vertebra mask, reported with their count and file."""
    n_outside = int(np.count_nonzero((lesion_data > 0) & (vert_data == 0)))
    if not n_outside:
        return None
    reason = (
        f"{n_outside} lesion voxels of {file_name(lesion, 'the lesion mask')} lie outside every "
        "vertebra mask (not scored); check that the lesion mask belongs to this CT"
    )
    return Skipped(where, reason)


def preprocess_subject(
    ct: nib.spatialimages.SpatialImage,
    vert: nib.spatialimages.SpatialImage,
    subreg: nib.spatialimages.SpatialImage | None = None,
    lesion: nib.spatialimages.SpatialImage | None = None,
    *,
    levels: Iterable[str] | None = None,
    where: str = "",
    params: PreprocessParams = PreprocessParams(),
) -> SubjectResult:
    """Preprocess one subject into per-vertebra central sagittal slices (see the module doc).

    ``ct`` is HU; ``vert`` holds VerSe vertebra numbers, ``subreg`` subregion labels (body = 49 ∪
    50), ``lesion`` 0/1/2; all on the CT's grid. ``levels`` restricts the vertebrae (default: all
    in ``vert``; a requested level without voxels is reported). ``where`` names the subject in
    :class:`Skipped` records. Returns crops ``(n_slices, crop, crop)``: float32 HU, bool body,
    uint8 lesions (``None`` without a lesion mask), and the problems found.
    """
    masks = {"vertebra": vert, "subregion": subreg, "lesion": lesion}
    problems = _check_inputs(ct, masks, where)
    if problems:
        return SubjectResult([], problems, [])
    ct_data = np.asanyarray(ct.dataobj)
    problem = _ct_problem(ct, ct_data, where)
    if problem:
        return SubjectResult([], [problem], [])
    problems = [p for name, image in masks.items() if (p := _mask_problem(name, image, where))]
    if problems:
        return SubjectResult([], problems, [])
    vert_data = np.asanyarray(vert.dataobj).astype(np.int32, copy=False)
    subreg_data = None if subreg is None else np.asanyarray(subreg.dataobj).astype(np.uint8)
    lesion_data = None if lesion is None else np.asanyarray(lesion.dataobj).astype(np.uint8)

    boxes = ndimage.find_objects(vert_data)
    present = {n + 1: box for n, box in enumerate(boxes) if box is not None}
    skipped: list[Skipped] = []
    if lesion is not None and (outside := _lesions_outside(lesion, lesion_data, vert_data, where)):
        skipped.append(outside)
    for number in sorted(present):
        if number not in LEVEL_NAMES and number != SACRUM_LABEL:
            skipped.append(Skipped(where, f"vertebra mask label {number} is not a VerSe level"))
    mask_levels = [LEVEL_NAMES[n] for n in sorted(present) if n in LEVEL_NAMES]
    wanted = mask_levels if levels is None else list(levels)
    number_of = {name: n for n, name in LEVEL_NAMES.items()}
    lattice_affine, lattice_shape = psr_lattice(ct.affine, ct.shape, params.spacing_mm)
    deriver, derived_name = _body_deriver()

    crops = []
    for level in wanted:
        number = number_of.get(level)
        if number not in present:
            skipped.append(Skipped(f"{where} {level}", "no voxels in the vertebra mask"))
            continue
        low, region_affine, region_shape = _region(present[number], ct.affine, lattice_affine)
        vertebra = (
            sample_on_grid(vert_data, ct.affine, region_shape, region_affine, 0, dtype=np.int32)
            == number
        )
        if subreg_data is not None:
            sub = sample_on_grid(
                subreg_data, ct.affine, region_shape, region_affine, 0, dtype=np.uint8
            )
            body = vertebra & np.isin(sub, BODY_SUBREGIONS)
            body_source = "subregion:49+50"
        elif lacks_body(vertebra, params.spacing_mm):
            reason = (
                "the vertebra mask holds no vertebral body (posterior elements only), so none "
                "can be derived; supply a subregion mask (seg-subreg, body = 49 ∪ 50)"
            )
            skipped.append(Skipped(f"{where} {level}", reason))
            continue
        else:
            body = np.asarray(deriver(vertebra, params.spacing_mm), dtype=bool)
            body_source = derived_name
        if not body.any():
            skipped.append(
                Skipped(f"{where} {level}", f"empty vertebral-body mask ({body_source})")
            )
            continue
        box = present[number]
        at_border = any(b.start == 0 or b.stop == n for b, n in zip(box, ct.shape, strict=False))
        crop = _crop_vertebra(
            level,
            body,
            low,
            region_affine,
            ct,
            ct_data,
            lesion_data,
            lattice_affine,
            lattice_shape,
            body_source,
            at_border,
            params,
        )
        if lesion_data is not None:
            own = (vert_data[box] == number) & (lesion_data[box] > 0)
            crop.lesion_voxels = int(np.count_nonzero(own))
        crops.append(crop)
    return SubjectResult(crops, skipped, mask_levels)


def _crop_vertebra(
    level: str,
    body_region: np.ndarray,
    region_low: np.ndarray,
    region_affine: np.ndarray,
    ct: nib.spatialimages.SpatialImage,
    ct_data: np.ndarray,
    lesion_data: np.ndarray | None,
    lattice_affine: np.ndarray,
    lattice_shape: tuple[int, int, int],
    body_source: str,
    at_border: bool,
    params: PreprocessParams,
) -> VertebraCrop:
    """Sample the crop's central slices for one vertebra whose region body mask is known."""
    size, n = params.crop, params.n_slices
    idx = np.argwhere(body_region) + region_low
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    start_p, zoom_p = _axis_window(int(lo[0]), int(hi[0]), params.margin, size, resize=False)
    start_s, zoom_s = _axis_window(int(lo[1]), int(hi[1]), params.margin, size, resize=True)
    centre_r = _round_half_up((lo[2] + hi[2]) / 2)
    start = {"P": start_p, "S": start_s, "R": float(centre_r - size // 2)}
    zoom = {"P": zoom_p, "S": zoom_s, "R": 1.0}
    crop_affine = _crop_affine(lattice_affine, start, zoom, size)
    first = size // 2 - n // 2
    slice_indices = list(range(first, first + n))
    shift = np.eye(4)
    shift[0, 3] = first
    stack_affine = crop_affine @ shift
    shape = (n, size, size)
    slices = sample_on_grid(
        ct_data, ct.affine, shape, stack_affine, params.image_order, params.pad_hu, np.float32
    )
    body = sample_on_grid(
        body_region.astype(np.uint8), region_affine, shape, stack_affine, 0, dtype=np.uint8
    ).astype(bool)
    lesions = None
    if lesion_data is not None:
        lesions = sample_on_grid(lesion_data, ct.affine, shape, stack_affine, 0, dtype=np.uint8)
    spacing = (params.spacing_mm * zoom["S"], params.spacing_mm * zoom["P"])
    geometry = {
        "source_affine": np.asarray(ct.affine, dtype=float).tolist(),
        "source_shape": [int(s) for s in ct.shape[:3]],
        "lattice_axes": "PSR",
        "lattice_affine": lattice_affine.tolist(),
        "lattice_shape": list(lattice_shape),
        "body_bbox": {
            "P": [int(lo[0]), int(hi[0])],
            "S": [int(lo[1]), int(hi[1])],
            "R": [int(lo[2]), int(hi[2])],
        },
        "crop_start": start,
        "zoom": zoom,
        "crop_axes": CROP_AXES,
        "crop_affine": crop_affine.tolist(),
        "crop_shape": [size, size, size],
        "slice_indices": slice_indices,
        "spacing_rc": list(spacing),
        "body_source": body_source,
        "touches_scan_border": at_border,
    }
    return VertebraCrop(level, slices, body, spacing, lesions, geometry)


def preprocess_volumes(
    subject: SubjectVolumes,
    *,
    levels: Iterable[str] | None = None,
    where: str = "",
    params: PreprocessParams = PreprocessParams(),
) -> SubjectResult:
    """:func:`preprocess_subject` on in-memory :class:`SubjectVolumes`."""

    def image(data: np.ndarray | None) -> nib.Nifti1Image | None:
        return None if data is None else nib.Nifti1Image(np.asarray(data), subject.affine)

    ct, vert = image(subject.ct), image(subject.vert)
    subreg, lesion = image(subject.subreg), image(subject.lesion)
    where = where or subject.subject
    return preprocess_subject(ct, vert, subreg, lesion, levels=levels, where=where, params=params)


def mask_to_source(mask: np.ndarray, geometry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Write a slice mask, or the slab of a k-slice evaluation, back into the source volume's
    grid.

    A 2D mask (``crop × crop``, display order) is the mid-sagittal slice; a 3D one
    ``(K, crop, crop)`` holds the crop slices that ``geometry["evaluated_slices"]`` lists (crop
    slice indices, recorded by a k-slice run). Each slice is placed in the source plane nearest
    to it (along the source axis closest to left-right); each voxel of that plane takes the
    mask value at its nearest crop pixel. Returns ``(array, source_affine)``; the array has the
    source shape and the mask's dtype.
    """
    mask = np.asarray(mask)
    size = int(geometry["crop_shape"][1])
    indices = geometry["slice_indices"]
    planes = mask[None] if mask.ndim == 2 else mask
    crop_slices = (
        [indices[len(indices) // 2]] if mask.ndim == 2 else geometry.get("evaluated_slices", [])
    )
    if planes.shape[1:] != (size, size) or len(crop_slices) != planes.shape[0]:
        raise ValueError(
            f"mask shape {mask.shape} is neither the crop slice shape {(size, size)} nor a stack "
            f"of the {len(crop_slices)} evaluated slices the geometry lists (evaluated_slices)"
        )
    source_affine = np.asarray(geometry["source_affine"], dtype=float)
    out = np.zeros(tuple(int(s) for s in geometry["source_shape"]), dtype=mask.dtype)
    for plane_mask, crop_slice in zip(planes, crop_slices, strict=True):
        _place_slice(out, plane_mask, int(crop_slice), geometry)
    return out, source_affine


def _place_slice(
    out: np.ndarray, mask2d: np.ndarray, crop_slice: int, geometry: Mapping[str, Any]
) -> None:
    """Write one crop slice's mask into the source plane of ``out`` nearest to it, over what an
    earlier slice put there only where this one is non-zero (nothing when that plane lies
    outside the source)."""
    crop_affine = np.asarray(geometry["crop_affine"], dtype=float)
    source_affine = np.asarray(geometry["source_affine"], dtype=float)
    shape, size = out.shape, mask2d.shape[0]
    to_source = np.linalg.solve(source_affine, crop_affine)
    axis = int(np.argmax(np.abs(to_source[:3, 0])))
    centre = apply_affine(to_source, [crop_slice, (size - 1) / 2, (size - 1) / 2])
    plane = _round_half_up(float(centre[axis]))
    if not 0 <= plane < shape[axis]:
        return
    others = [a for a in range(3) if a != axis]
    grid = np.meshgrid(*(np.arange(shape[a]) for a in others), indexing="ij")
    vox = np.zeros((*grid[0].shape, 3))
    vox[..., others[0]], vox[..., others[1]], vox[..., axis] = grid[0], grid[1], plane
    crop_coords = apply_affine(np.linalg.solve(crop_affine, source_affine), vox)
    values = ndimage.map_coordinates(
        mask2d, [crop_coords[..., 1], crop_coords[..., 2]], order=0, mode="constant", cval=0
    )
    index: list[Any] = [slice(None)] * 3
    index[axis] = plane
    here = tuple(index)
    out[here] = np.where(values > 0, values, out[here]).astype(mask2d.dtype)


# --- caching -------------------------------------------------------------------------------------


def save_result(path: Path, result: SubjectResult) -> None:
    """Store a :class:`SubjectResult` as an npz file (written atomically)."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {
        "skipped": [[s.where, s.reason, s.scope.value] for s in result.skipped],
        "mask_levels": result.mask_levels,
        "crops": [],
    }
    for i, crop in enumerate(result.crops):
        arrays[f"slices_{i}"] = crop.slices
        arrays[f"body_{i}"] = crop.body
        if crop.lesions is not None:
            arrays[f"lesions_{i}"] = crop.lesions
        meta["crops"].append(
            {
                "level": crop.level,
                "spacing": list(crop.spacing),
                "geometry": crop.geometry,
                "lesion_voxels": crop.lesion_voxels,
            }
        )
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path) as temporary, temporary.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


def load_result(path: Path) -> SubjectResult:
    """Read a :class:`SubjectResult` written by :func:`save_result`."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        crops = []
        for i, info in enumerate(meta["crops"]):
            lesions = data[f"lesions_{i}"] if f"lesions_{i}" in data.files else None
            spacing = (float(info["spacing"][0]), float(info["spacing"][1]))
            slices, body = data[f"slices_{i}"], data[f"body_{i}"]
            crops.append(
                VertebraCrop(
                    info["level"],
                    slices,
                    body,
                    spacing,
                    lesions,
                    info["geometry"],
                    info["lesion_voxels"],
                )
            )
    skipped = [Skipped(w, r, Scope(s)) for w, r, s in meta["skipped"]]
    return SubjectResult(crops, skipped, meta["mask_levels"])


def cached_result(
    cache_dir: Path | None, key: str, compute: Callable[[], SubjectResult]
) -> tuple[SubjectResult, bool]:
    """``compute()`` memoised as ``<cache_dir>/<key>-r<RESULT_FORMAT>.npz``; returns (result,
    was_cached)."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}-r{RESULT_FORMAT}.npz"
    if path.exists():
        try:
            return load_result(path), True
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
    result = compute()
    save_result(path, result)
    return result, False
