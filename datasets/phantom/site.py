"""A vertebra as the lesion and mimic models see it: world coordinates, the CT and label arrays
to modify, and the body's signed distance and frame. Built by the phantom renderer and by
``insert`` (real anatomy) alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsbench.datasets.phantom.fields import Fields


@dataclass(frozen=True)
class BodyFrame:
    """Where a vertebral body sits: centre (mm), half-width, half-depth, half-height."""

    yc: float
    zc: float
    a: float
    b: float
    h: float
    xc: float = 0.0

    def world(self, point: tuple[float, float, float]) -> tuple[float, float, float]:
        """World position of a body-normalised point."""
        return (
            self.xc + point[0] * self.a,
            self.yc + point[1] * self.b,
            self.zc + point[2] * self.h,
        )


@dataclass
class Site:
    """Views of one vertebra's region (axes x, y, z; RAS mm coordinate vectors, ascending).

    ``ct`` (float32 HU), ``lesion`` (0/1/2), ``mimic`` (mimic type), ``vert`` and ``subreg`` are
    modified in place; ``sd_body`` is the signed distance (mm) to the vertebral body.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    ct: np.ndarray
    lesion: np.ndarray
    mimic: np.ndarray
    vert: np.ndarray
    subreg: np.ndarray
    sd_body: np.ndarray
    frame: BodyFrame
    number: int
    voxel_mm: float
    trabecular_hu: float
    cortex_hu: float
    fields: Fields

    def box(
        self, centre: tuple[float, float, float], half: tuple[float, float, float]
    ) -> tuple[slice, slice, slice]:
        """Index box covering ``centre ± half`` (mm), clipped to the site."""
        out = []
        for coords, c, h in zip(
            (self.x.ravel(), self.y.ravel(), self.z.ravel()), centre, half, strict=True
        ):
            lo = int(np.searchsorted(coords, c - h))
            hi = int(np.searchsorted(coords, c + h, side="right"))
            out.append(slice(lo, max(lo, hi)))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable x, y, z coordinates of a box."""
        return self.x[box[0], :, :], self.y[:, box[1], :], self.z[:, :, box[2]]
