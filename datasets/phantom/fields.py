"""Shapes and random fields evaluated at world coordinates (mm).

Shapes are approximate signed distance functions (negative inside); :func:`occupancy` turns one
into a partial-volume fraction. Random fields are periodic tiles of filtered noise sampled at
any world point, so the same lesion and texture models work on the phantom's grid and on a real
scan's grid (``insert``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TILE_SIZE = 96
TILE_STEP_MM = 0.5


def ellipsoid_sdf(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid (first-order, exact on
    spheres)."""
    qx, qy, qz = ((c - o) / r for c, o, r in zip((x, y, z), centre, radii, strict=True))
    k = np.sqrt(qx * qx + qy * qy + qz * qz)
    gx, gy, gz = (q / r for q, r in zip((qx, qy, qz), radii, strict=True))
    grad = np.sqrt(gx * gx + gy * gy + gz * gz) / np.maximum(k, 1e-6)
    return (k - 1.0) / np.maximum(grad, 1e-6)


def ellipse_sdf(
    x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radii: tuple[float, float]
) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse in the x-y plane (an elliptic
    cylinder along z)."""
    qx, qy = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1]
    k = np.sqrt(qx * qx + qy * qy)
    grad = np.sqrt((qx / radii[0]) ** 2 + (qy / radii[1]) ** 2) / np.maximum(k, 1e-6)
    return (k - 1.0) / np.maximum(grad, 1e-6)


def occupancy(sdf: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel of size ``voxel_mm`` inside the shape (linear ramp)."""
    return np.clip(0.5 - sdf / voxel_mm, 0.0, 1.0).astype(np.float32)


def smoothstep(t: np.ndarray) -> np.ndarray:
    """Smooth 0→1 ramp of ``t`` clipped to 0..1."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass
class NoiseField:
    """A periodic 3D tile of Gaussian-filtered noise (unit SD) sampled at world coordinates."""

    tile: np.ndarray
    step_mm: float
    offset: np.ndarray

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        sigma_mm: tuple[float, float, float],
        band_mm: tuple[float, float, float] | None = None,
        size: int = TILE_SIZE,
        step_mm: float = TILE_STEP_MM,
    ) -> NoiseField:
        """Low-pass noise of ``sigma_mm`` (x, y, z); with ``band_mm`` a band-pass (difference of
        the two low-pass versions), e.g. trabecular texture."""
        white = rng.standard_normal((size, size, size)).astype(np.float32)
        tile = ndimage.gaussian_filter(white, [s / step_mm for s in sigma_mm], mode="wrap")
        if band_mm is not None:
            tile -= ndimage.gaussian_filter(white, [s / step_mm for s in band_mm], mode="wrap")
        tile /= max(float(tile.std()), 1e-6)
        return cls(tile, step_mm, rng.uniform(0, size, size=3))

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Field values at world points (nearest tile voxel; arrays broadcast)."""
        n = self.tile.shape[0]
        idx = [
            (np.floor(c / self.step_mm + o).astype(np.int64) % n)
            for c, o in zip((x, y, z), self.offset, strict=True)
        ]
        return self.tile[idx[0], idx[1], idx[2]]


@dataclass
class Fields:
    """The random fields of one subject: trabecular texture, boundary roughness, fine mixing."""

    texture: NoiseField
    rough: NoiseField
    fine: NoiseField

    @classmethod
    def make(cls, rng: np.random.Generator) -> Fields:
        """Fields with the phantom's scales (texture anisotropic: trabeculae run vertically)."""
        return cls(
            texture=NoiseField.make(rng, (0.45, 0.45, 0.7), band_mm=(1.6, 1.6, 2.4)),
            rough=NoiseField.make(rng, (1.6, 1.6, 1.6)),
            fine=NoiseField.make(rng, (0.8, 0.8, 0.8)),
        )
