"""Benign findings that look like lesions to a threshold (never part of the lesion mask).

Each model modifies the CT of a :class:`~wsbench.datasets.phantom.site.Site` and marks its
voxels in the mimic map with its :data:`~wsbench.datasets.phantom.plan.MIMIC_TYPES` value:

- bone island: small, very dense, round, sharp margin;
- endplate sclerosis (Modic-type degenerative change): dense band fading away from an endplate;
- Schmorl node: disc tissue herniated through an endplate, with a sclerotic rim;
- haemangioma: fatty low density with coarse vertical trabeculae (polka dots / corduroy);
- focal fat: well-defined fat-density island;
- trabecular rarefaction: ill-defined region of reduced bone density;
- osteophyte: bony spur growing out of an endplate rim (vertebra and corpus border);
- basivertebral vein: low-density channel at the middle of the posterior wall.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from wsbench.datasets.phantom.anatomy import CORPUS_BORDER, DISC_HU
from wsbench.datasets.phantom.fields import occupancy, smoothstep
from wsbench.datasets.phantom.lesions import normalised_radius
from wsbench.datasets.phantom.plan import MIMIC_TYPES, MimicSpec
from wsbench.datasets.phantom.site import Site


def _region(site: Site, centre: tuple[float, float, float], radii: tuple[float, ...], pad: float):
    box = site.box(centre, tuple(r + pad for r in radii))  # type: ignore[arg-type]
    return box, normalised_radius(site, box, centre, radii)


def _mark(site: Site, box: tuple[slice, slice, slice], where: np.ndarray, kind: str) -> int:
    """Record mimic voxels (never over a lesion); returns how many were marked."""
    where = where & (site.lesion[box] == 0)
    site.mimic[box][where] = MIMIC_TYPES[kind]
    return int(where.sum())


def _bone_island(site: Site, spec: MimicSpec) -> int:
    centre = site.frame.world(spec.centre)
    box, q = _region(site, centre, spec.radii, 1.5)
    x, y, z = site.coords(box)
    q = q + 0.12 * site.fields.fine.sample(x, y, z)
    body = site.sd_body[box] < 0
    weight = smoothstep((1.0 - q) * min(spec.radii) / 0.4 + 0.5) * body
    site.ct[box] += weight * (spec.contrast - site.ct[box])
    return _mark(site, box, (q < 1.0) & body, spec.kind)


def _endplate_point(site: Site, spec: MimicSpec, inset: float) -> tuple[float, float, float]:
    """The endplate point above/below the spec's (x, y), moved ``inset`` mm into the body."""
    x, y, _ = site.frame.world(spec.centre)
    sign = 1.0 if spec.side == "top" else -1.0
    return x, y, site.frame.zc + sign * (site.frame.h - inset)


def _endplate_sclerosis(site: Site, spec: MimicSpec) -> int:
    centre = _endplate_point(site, spec, 0.0)
    radii = (spec.radii[0], spec.radii[1], spec.radii[2] + 2.0)
    box, q = _region(site, centre, radii, 1.0)
    x, y, z = site.coords(box)
    body = site.sd_body[box] < 0
    q = q + 0.15 * site.fields.rough.sample(x, y, z)
    weight = smoothstep((1.0 - q) * 2.0) * body
    site.ct[box] += weight * spec.contrast * (0.85 + 0.15 * site.fields.fine.sample(x, y, z))
    return _mark(site, box, (weight > 0.25) & body, spec.kind)


def _schmorl_node(site: Site, spec: MimicSpec) -> int:
    centre = _endplate_point(site, spec, 0.0)
    rim = 1.3
    box, q = _region(site, centre, spec.radii, rim + 1.0)
    body = site.sd_body[box] < 0
    r = min(spec.radii)
    defect = occupancy((q - 1.0) * r, site.voxel_mm) * body
    ring = (occupancy((q - 1.0) * r - rim, site.voxel_mm) - defect).clip(0, 1) * body
    site.ct[box] += defect * (DISC_HU - site.ct[box]) + ring * spec.contrast
    return _mark(site, box, ((q - 1.0) * r < rim) & body, spec.kind)


def _haemangioma(site: Site, spec: MimicSpec) -> int:
    centre = site.frame.world(spec.centre)
    box, q = _region(site, centre, spec.radii, 1.5)
    x, y, _ = site.coords(box)
    body = site.sd_body[box] < 0
    weight = smoothstep((1.0 - q) * min(spec.radii) / 0.6 + 0.5) * body
    period = 3.0
    struts = smoothstep(
        (np.cos(2 * np.pi * (x - centre[0]) / period) * np.cos(2 * np.pi * (y - centre[1]) / period)
         - 0.55) * 4.0
    )  # fmt: skip
    value = spec.contrast + (site.cortex_hu * 0.45) * struts
    site.ct[box] += weight * (value - site.ct[box])
    return _mark(site, box, (q < 1.0) & body, spec.kind)


def _focal_fat(site: Site, spec: MimicSpec) -> int:
    centre = site.frame.world(spec.centre)
    box, q = _region(site, centre, spec.radii, 1.5)
    x, y, z = site.coords(box)
    q = q + 0.1 * site.fields.rough.sample(x, y, z)
    body = site.sd_body[box] < 0
    weight = smoothstep((1.0 - q) * min(spec.radii) / 0.8 + 0.5) * body
    site.ct[box] += weight * (spec.contrast - site.ct[box])
    return _mark(site, box, (q < 1.0) & body, spec.kind)


def _rarefaction(site: Site, spec: MimicSpec) -> int:
    centre = site.frame.world(spec.centre)
    box, q = _region(site, centre, spec.radii, 1.0)
    x, y, z = site.coords(box)
    q = q + 0.2 * site.fields.rough.sample(x, y, z)
    body = site.sd_body[box] < -1.0
    weight = smoothstep((1.0 - q) * 1.6) * body
    site.ct[box] -= weight * spec.contrast
    return _mark(site, box, (weight > 0.5) & body, spec.kind)


def _osteophyte(site: Site, spec: MimicSpec) -> int:
    side, rim = spec.side.split("-")
    f = site.frame
    z = f.zc + (f.h if side == "top" else -f.h) * 0.97
    length, spread, thick = spec.radii[1], spec.radii[0], spec.radii[2]
    if rim == "anterior":
        centre, radii = (f.xc, f.yc + f.b + 0.4 * length, z), (spread, length, thick)
    else:
        sign = -1.0 if rim == "left" else 1.0
        centre, radii = (f.xc + sign * (f.a + 0.4 * length), f.yc, z), (length, spread, thick)
    box, q = _region(site, centre, radii, 1.0)
    outside = site.sd_body[box] > -1.5
    spur = occupancy((q - 1.0) * min(radii), site.voxel_mm) * outside
    site.ct[box] += spur * (spec.contrast - site.ct[box])
    bone = (q < 1.0) & outside
    new_bone = bone & (site.vert[box] == 0)
    site.vert[box][new_bone] = site.number
    site.subreg[box][new_bone] = CORPUS_BORDER
    return _mark(site, box, bone, spec.kind)


def _basivertebral_vein(site: Site, spec: MimicSpec) -> int:
    centre = site.frame.world(spec.centre)
    box, q = _region(site, centre, spec.radii, 1.0)
    body = site.sd_body[box] < 0
    weight = smoothstep((1.0 - q) * min(spec.radii) / 0.5 + 0.5) * body
    site.ct[box] += weight * (spec.contrast - site.ct[box])
    return _mark(site, box, (q < 1.0) & body, spec.kind)


MIMIC_MODELS: dict[str, Callable[[Site, MimicSpec], int]] = {
    "bone_island": _bone_island,
    "endplate_sclerosis": _endplate_sclerosis,
    "schmorl_node": _schmorl_node,
    "haemangioma": _haemangioma,
    "focal_fat": _focal_fat,
    "rarefaction": _rarefaction,
    "osteophyte": _osteophyte,
    "basivertebral_vein": _basivertebral_vein,
}


def paint_mimic(site: Site, spec: MimicSpec) -> int:
    """Render one benign finding; returns the number of voxels marked in the mimic map."""
    try:
        model = MIMIC_MODELS[spec.kind]
    except KeyError:
        known = ", ".join(MIMIC_TYPES)
        raise ValueError(f"unknown mimic type {spec.kind!r}; known: {known}") from None
    return model(site, spec)
