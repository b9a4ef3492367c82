"""Phantom anatomy in HU on a world grid: vertebrae (body with concave endplates and a cortical
shell, trabecular bone, posterior elements), discs, spinal canal, paraspinal muscle and fat.

World coordinates are RAS millimetres: x → right, y → anterior, z → superior. Vertebrae are
stacked cranio-caudally around x = 0 with a gentle sagittal curve. Labels follow VerSe / TPTBox:
vertebra numbers in ``vert``; subregions 41 arch, 42 spinous process, 43/44 left/right
transverse process, 45/46 superior and 47/48 inferior articular processes (left/right), 49
corpus border, 50 corpus, 100 disc.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsbench.data.volumes import DISC_SUBREGION, LEVEL_NUMBERS
from wsbench.datasets.phantom.fields import (
    Fields,
    ellipse_sdf,
    ellipsoid_sdf,
    occupancy,
    smoothstep,
)
from wsbench.datasets.phantom.plan import LEVELS, SubjectPlan, VertebraPlan
from wsbench.datasets.phantom.site import BodyFrame, Site

CORPUS_BORDER, CORPUS = 49, 50
ARCH, SPINOUS = 41, 42
TRANSVERSE = (43, 44)
SUPERIOR_ARTICULAR = (45, 46)
INFERIOR_ARTICULAR = (47, 48)

POSTERIOR_WALL = 0.85
"""The body's flat posterior wall lies this fraction of the half-depth behind its centre."""

CORTEX_MM = 1.0
BORDER_MM = 2.0
"""Thickness of the corpus-border subregion (49) inside the body surface."""

MUSCLE_HU, FAT_HU, CSF_HU, DISC_HU = 50.0, -95.0, 10.0, 85.0
FAR_MM = 1000.0
FOV_HALF_WIDTH_MM = 46.0
FOV_MAX_DEPTH_MM = 100.0


def _interp_level(level: str, values: tuple[float, float, float]) -> float:
    """A size interpolated over T1, T12 and L5."""
    return float(np.interp(LEVELS.index(level), [0.0, 11.0, 16.0], values))


@dataclass(frozen=True)
class VertebraGeometry:
    """A placed vertebra: its plan, body frame, canal and posterior-element sizes (mm)."""

    plan: VertebraPlan
    body: BodyFrame
    canal_a: float
    canal_b: float
    lamina: float
    spinous: float
    transverse: float

    @property
    def number(self) -> int:
        """VerSe label number."""
        return LEVEL_NUMBERS[self.plan.level]

    @property
    def canal_y(self) -> float:
        """y of the canal centre."""
        return self.body.yc - POSTERIOR_WALL * self.body.b - self.canal_b + 0.5

    @property
    def posterior_extent(self) -> float:
        """Lowest y the vertebra reaches (tip of the spinous process)."""
        return self.canal_y - self.canal_b - self.lamina - self.spinous

    @property
    def z_range(self) -> tuple[float, float]:
        """Lowest and highest z the vertebra can reach."""
        return self.body.zc - self.body.h - 9.0, self.body.zc + self.body.h + 5.0


def place_vertebrae(plan: SubjectPlan) -> list[VertebraGeometry]:
    """Stack the planned vertebrae from z = 0 downwards with a sagittal curve."""
    out = []
    top = 0.0
    n = len(plan.vertebrae)
    for i, vp in enumerate(plan.vertebrae):
        zc = top - vp.height / 2
        curve = plan.lordosis_mm * np.sin(np.pi * (i + 0.5) / n)
        body = BodyFrame(yc=float(curve), zc=zc, a=vp.width / 2, b=vp.depth / 2, h=vp.height / 2)
        out.append(
            VertebraGeometry(
                plan=vp,
                body=body,
                canal_a=_interp_level(vp.level, (7.5, 8.5, 11.5)),
                canal_b=_interp_level(vp.level, (7.0, 7.5, 8.0)),
                lamina=_interp_level(vp.level, (4.0, 5.0, 6.0)),
                spinous=_interp_level(vp.level, (20.0, 24.0, 26.0)),
                transverse=_interp_level(vp.level, (13.0, 14.0, 17.0)),
            )
        )
        top = zc - vp.height / 2 - vp.disc_below
    return out


@dataclass(frozen=True)
class Extent:
    """The field of view (mm): x, y, z ranges."""

    x: tuple[float, float]
    y: tuple[float, float]
    z: tuple[float, float]


def field_of_view(vertebrae: list[VertebraGeometry]) -> Extent:
    """Spine plus some paraspinal tissue: about 90 mm × ≤100 mm axially."""
    half = min(FOV_HALF_WIDTH_MM, max(v.body.a for v in vertebrae) + 20.0)
    front = max(v.body.yc + v.body.b for v in vertebrae) + 14.0
    back = max(min(v.posterior_extent for v in vertebrae) - 5.0, front - FOV_MAX_DEPTH_MM)
    first, last = vertebrae[0], vertebrae[-1]
    above = first.body.zc + first.body.h + 0.5 * last.plan.disc_below + 2.0
    below = last.body.zc - last.body.h - last.plan.disc_below - 2.0
    return Extent((-half, half), (back, front), (below, above))


def body_parts(
    g: VertebraGeometry, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distances whose maximum is the vertebral body: the elliptic outline with a lateral
    waist (in-plane), the flat posterior wall, and the concave endplates (along z)."""
    b = g.body
    s = np.clip((z - b.zc) / b.h, -1.0, 1.0)
    a_z = b.a * (1.0 - 0.06 * (1.0 - s * s))
    qx, qy = (x - b.xc) / a_z, (y - b.yc) / b.b
    k = np.sqrt(qx * qx + qy * qy)
    grad = np.sqrt((qx / a_z) ** 2 + (qy / b.b) ** 2) / np.maximum(k, 1e-6)
    sd_xy = (k - 1.0) / np.maximum(grad, 1e-6)
    sd_back = (b.yc - POSTERIOR_WALL * b.b) - y
    dip = g.plan.endplate_depth * np.clip(1.0 - k * k, 0.0, 1.0)
    sd_z = np.maximum(z - (b.zc + b.h - dip), (b.zc - b.h + dip) - z)
    return sd_xy, np.broadcast_to(sd_back, sd_xy.shape), sd_z


def body_sdf(g: VertebraGeometry, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to the vertebral body."""
    return np.maximum.reduce(body_parts(g, x, y, z))


def _boxed(
    out: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    half: tuple[float, float, float],
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """Index box of ``centre ± half`` on the coordinate vectors and its coordinates."""
    box = []
    for coords, c, h in zip((x.ravel(), y.ravel(), z.ravel()), centre, half, strict=True):
        lo = int(np.searchsorted(coords, c - h))
        box.append(slice(lo, max(lo, int(np.searchsorted(coords, c + h, side="right")))))
    sl = tuple(box)
    return sl, x[sl[0], :, :], y[:, sl[1], :], z[:, :, sl[2]]  # type: ignore[return-value]


def _ellipsoid_in_box(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    shear: float = 0.0,
) -> np.ndarray:
    """Ellipsoid signed distance on the grid, computed only in its bounding box (far elsewhere);
    ``shear`` tilts it (z shifted by ``shear`` · (y − centre y))."""
    shape = (x.shape[0], y.shape[1], z.shape[2])
    out = np.full(shape, FAR_MM, np.float32)
    reach = max(radii) * (1.0 + abs(shear)) + 2.0
    box, bx, by, bz = _boxed(out, x, y, z, centre, (reach, reach, reach))
    out[box] = ellipsoid_sdf(bx, by, bz + shear * (by - centre[1]), centre, radii)
    return out


def posterior_sdfs(
    g: VertebraGeometry, x: np.ndarray, y: np.ndarray, z: np.ndarray
) -> dict[int, np.ndarray]:
    """Signed distances of the posterior elements, by subregion label."""
    b = g.body
    cy = g.canal_y
    outer = ellipse_sdf(x, y, (b.xc, cy), (g.canal_a + g.lamina, g.canal_b + g.lamina))
    canal = ellipse_sdf(x, y, (b.xc, cy), (g.canal_a, g.canal_b))
    z_arch = np.maximum(z - (b.zc + 0.85 * b.h), (b.zc - 0.35 * b.h) - z)
    arch = np.maximum(np.maximum(outer, -canal), z_arch)
    sp_len = g.spinous / 2
    spinous_c = (b.xc, cy - g.canal_b - g.lamina - sp_len + 4.0, b.zc - 0.1 * b.h)
    out = {
        ARCH: arch,
        SPINOUS: _ellipsoid_in_box(x, y, z, spinous_c, (2.8, sp_len, 4.5), shear=0.4),
    }
    tx = g.canal_a + g.lamina + g.transverse / 2 - 2.0
    for sign, label in zip((-1.0, 1.0), TRANSVERSE, strict=True):
        out[label] = _ellipsoid_in_box(
            x, y, z, (b.xc + sign * tx, cy + 1.0, b.zc + 0.35 * b.h), (g.transverse / 2, 3.5, 4.0)
        )
    ax = g.canal_a + 0.5 * g.lamina
    for sign, sup, inf in zip((-1.0, 1.0), SUPERIOR_ARTICULAR, INFERIOR_ARTICULAR, strict=True):
        out[sup] = _ellipsoid_in_box(
            x, y, z, (b.xc + sign * ax, cy - 0.3 * g.canal_b, b.zc + 0.9 * b.h), (3.2, 4.5, 5.0)
        )
        out[inf] = _ellipsoid_in_box(
            x, y, z, (b.xc + sign * ax, cy - g.canal_b, b.zc - 0.75 * b.h), (3.2, 4.5, 5.0)
        )
    return out


@dataclass
class Canvas:
    """Volumes being painted on the acquisition grid (x, y, z axes; RAS mm coordinates)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: tuple[float, float, float]
    ct: np.ndarray
    vert: np.ndarray
    subreg: np.ndarray
    lesion: np.ndarray
    mimic: np.ndarray

    @classmethod
    def empty(cls, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Canvas:
        """A canvas over the ascending, evenly spaced coordinate vectors ``x``, ``y``, ``z``."""
        shape = (x.size, y.size, z.size)
        spacing = tuple(float(c[1] - c[0]) if c.size > 1 else 1.0 for c in (x, y, z))
        return cls(
            x[:, None, None],
            y[None, :, None],
            z[None, None, :],
            spacing,  # type: ignore[arg-type]
            np.full(shape, FAT_HU, np.float32),
            np.zeros(shape, np.uint8),
            np.zeros(shape, np.uint8),
            np.zeros(shape, np.uint8),
            np.zeros(shape, np.uint8),
        )

    @property
    def voxel_mm(self) -> float:
        """Voxel size used for the partial volume of oblique surfaces (largest side)."""
        return max(self.spacing)

    @property
    def in_plane_mm(self) -> float:
        """In-plane voxel size."""
        return max(self.spacing[:2])

    def z_slab(self, low: float, high: float) -> slice:
        """Index range of the z coordinates within ``[low, high]``."""
        zs = self.z[0, 0]
        i0 = int(np.searchsorted(zs, low))
        i1 = int(np.searchsorted(zs, high, side="right"))
        return slice(i0, max(i0, i1))


def _spine_y(vertebrae: list[VertebraGeometry], z: np.ndarray) -> np.ndarray:
    """Body-centre y along z (interpolated between vertebrae)."""
    zs = np.array([v.body.zc for v in vertebrae])[::-1]
    ys = np.array([v.body.yc for v in vertebrae])[::-1]
    return np.interp(z, zs, ys)


def _follow_spine(plane: np.ndarray, shifts: np.ndarray, pad: int) -> np.ndarray:
    """Stack an in-plane map (computed on a y grid padded by ``pad`` rows each side) into a
    volume whose slices are shifted by ``shifts`` rows (the spine's sagittal curve)."""
    ny = plane.shape[1] - 2 * pad
    out = np.empty((plane.shape[0], ny, shifts.size), np.float32)
    for k, s in enumerate(shifts):
        out[:, :, k] = plane[:, pad - s : pad - s + ny]
    return out


def paint_soft_tissue(
    canvas: Canvas, vertebrae: list[VertebraGeometry], fields: Fields, age: float
) -> None:
    """Fat, paraspinal muscles (erector spinae; psoas in the lumbar spine), aorta, canal."""
    x, z = canvas.x, canvas.z
    sy = canvas.spacing[1]
    curve = _spine_y(vertebrae, z.ravel())
    shifts = np.rint(curve / sy).astype(int)
    pad = int(np.abs(shifts).max()) + 1
    y = canvas.y[0, :, 0]
    y_pad = np.concatenate(
        [y[0] - sy * np.arange(pad, 0, -1), y, y[-1] + sy * np.arange(1, pad + 1)]
    )
    yy = y_pad[None, :]
    xx = x[:, :, 0]
    g = vertebrae[len(vertebrae) // 2]
    canal_y = g.canal_y - g.body.yc
    lumbar = any(v.plan.level.startswith("L") for v in vertebrae)
    muscle = np.zeros(xx.shape[:1] + yy.shape[1:], np.float32)
    h = 3.0
    for sign in (-1.0, 1.0):
        erector = ellipse_sdf(xx, yy, (sign * (g.canal_a + 13.0), canal_y - 14.0), (13.0, 18.0))
        muscle = np.maximum(muscle, occupancy(erector, h))
        if lumbar:
            psoas = ellipse_sdf(xx, yy, (sign * (g.body.a + 9.0), -2.0), (9.0, 11.0))
            muscle = np.maximum(muscle, occupancy(psoas, h))
    aorta = occupancy(
        ellipse_sdf(xx, yy, (-14.0, g.body.b + 12.0), (10.5, 10.5)), canvas.in_plane_mm
    )
    muscle3 = _follow_spine(muscle, shifts, pad)
    marbling = smoothstep((fields.rough.sample(x, canvas.y, z) - 1.2 + age / 150.0) * 2.0)
    muscle3 *= 1.0 - marbling
    canvas.ct[:] = FAT_HU + 8.0 * fields.fine.sample(canvas.y, z, x)
    canvas.ct += (MUSCLE_HU - FAT_HU) * muscle3
    paint(canvas.ct, _follow_spine(aorta, shifts, pad), 42.0)
    for v in vertebrae:
        slab = canvas.z_slab(v.body.zc - v.body.h - v.plan.disc_below, v.body.zc + v.body.h + 3)
        sac = ellipse_sdf(
            x, canvas.y, (v.body.xc, v.canal_y + 0.8), (v.canal_a * 0.8, v.canal_b * 0.75)
        )
        canal = ellipse_sdf(x, canvas.y, (v.body.xc, v.canal_y), (v.canal_a, v.canal_b))
        part = canvas.ct[..., slab]
        paint(part, occupancy(canal, canvas.in_plane_mm), FAT_HU + 15.0)
        paint(part, occupancy(sac, canvas.in_plane_mm), CSF_HU)


def paint(ct: np.ndarray, weight: np.ndarray, value: np.ndarray | float) -> None:
    """Blend ``value`` into ``ct`` with weight 0..1 (in place)."""
    ct += weight * (value - ct)


def paint_discs(canvas: Canvas, vertebrae: list[VertebraGeometry], fields: Fields) -> None:
    """Intervertebral discs (subregion 100): below every vertebra and above the first."""
    sx, _, sz = canvas.spacing
    pairs = [(None, vertebrae[0]), *zip(vertebrae, [*vertebrae[1:], None], strict=True)]
    for upper, lower in pairs:
        others = [v for v in (upper, lower) if v is not None]
        if upper is not None:
            top = upper.body.zc - upper.body.h + upper.plan.endplate_depth
            bottom = top - upper.plan.disc_below - 2 * upper.plan.endplate_depth
        else:
            top = others[0].body.zc + others[0].body.h + 0.6 * others[0].plan.disc_below
            bottom = top - 0.6 * others[0].plan.disc_below - 2 * others[0].plan.endplate_depth
        slab = canvas.z_slab(bottom - 1.0, top + 1.0)
        z = canvas.z[..., slab]
        a = float(np.mean([v.body.a for v in others])) + 1.0
        b = float(np.mean([v.body.b for v in others])) + 1.0
        yc = float(np.mean([v.body.yc for v in others]))
        sd_xy = ellipse_sdf(canvas.x, canvas.y, (0.0, yc), (a, b))
        sd_back = (yc - POSTERIOR_WALL * b) - canvas.y
        sd_z = np.maximum(z - top, bottom - z)
        occ = occupancy(np.maximum(sd_xy, sd_back), sx) * occupancy(sd_z, sz)
        nucleus = np.clip(-sd_xy / 6.0, 0.0, 1.0)
        value = DISC_HU + 25.0 * (1.0 - nucleus) - 15.0 * nucleus
        value = value + 8.0 * fields.rough.sample(canvas.x, canvas.y, z)
        paint(canvas.ct[..., slab], occ, value)
        inside = np.maximum(np.maximum(sd_xy, sd_back), sd_z) < 0
        canvas.subreg[..., slab][inside] = DISC_SUBREGION


def paint_vertebra(canvas: Canvas, g: VertebraGeometry, fields: Fields, plan: SubjectPlan) -> Site:
    """Bone of one vertebra (trabecular texture, cortical shell) with its labels."""
    sx, sy, sz = canvas.spacing
    slab = canvas.z_slab(*g.z_range)
    x, y, z = canvas.x, canvas.y, canvas.z[..., slab]
    sd_xy, sd_back, sd_z = body_parts(g, x, y, z)
    sd_body = np.maximum(np.maximum(sd_xy, sd_back), sd_z)
    parts = posterior_sdfs(g, x, y, z)
    sd_post = np.minimum.reduce(list(parts.values()))
    t = CORTEX_MM

    def body_occ(offset: float) -> np.ndarray:
        return (
            occupancy(sd_xy + offset, sx)
            * occupancy(sd_back + offset, sy)
            * occupancy(sd_z + offset, sz)
        )

    h = canvas.voxel_mm
    outer = np.maximum(body_occ(0.0), occupancy(sd_post, h))
    inner = np.maximum(body_occ(t), occupancy(sd_post + t, h))
    depth = np.clip(-sd_z / 3.0, 0.0, 1.0)
    texture = fields.texture.sample(x, y, z)
    in_post = sd_post < sd_body
    trab = plan.trabecular_hu + plan.texture_hu * texture + 40.0 * (1.0 - depth) + 120.0 * in_post
    ct = canvas.ct[..., slab]
    paint(ct, outer, trab)
    ct += (outer - inner) * (plan.cortex_hu - trab)
    inside = np.minimum(sd_body, sd_post) < 0
    canvas.vert[..., slab][inside] = g.number
    sub = canvas.subreg[..., slab]
    names = list(parts)
    posterior = inside & (sd_body >= 0)
    nearest = np.argmin(np.stack([parts[k][posterior] for k in names]), axis=0)
    sub[posterior] = np.asarray(names, np.uint8)[nearest]
    sub[sd_body < 0] = CORPUS_BORDER
    sub[sd_body < -BORDER_MM] = CORPUS
    return Site(
        x=x,
        y=y,
        z=z,
        ct=ct,
        lesion=canvas.lesion[..., slab],
        mimic=canvas.mimic[..., slab],
        vert=canvas.vert[..., slab],
        subreg=sub,
        sd_body=sd_body,
        frame=g.body,
        number=g.number,
        voxel_mm=h,
        trabecular_hu=plan.trabecular_hu,
        cortex_hu=plan.cortex_hu,
        fields=fields,
    )
