"""Scanner effects: partial-volume blur, correlated noise, streak artefacts."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsbench.datasets.phantom.plan import ScannerPlan

NOISE_CORRELATION_VOXELS = 0.6
"""In-plane Gaussian correlation of the noise (reconstruction kernel), in voxels."""


def blur(volume: np.ndarray, scanner: ScannerPlan) -> np.ndarray:
    """Point-spread function: Gaussian of ``psf_mm`` in-plane and a third of a slice along z."""
    sx, sy, _ = scanner.spacing
    sigma = (scanner.psf_mm / sx, scanner.psf_mm / sy, 0.33)
    return ndimage.gaussian_filter(volume, sigma, mode="nearest")


def add_noise(volume: np.ndarray, scanner: ScannerPlan, rng: np.random.Generator) -> None:
    """In-plane correlated Gaussian noise of SD ``noise_hu`` (in place)."""
    white = rng.standard_normal(volume.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, (NOISE_CORRELATION_VOXELS,) * 2 + (0.0,))
    noise *= scanner.noise_hu / max(float(noise.std()), 1e-6)
    volume += noise


def add_streaks(
    volume: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    scanner: ScannerPlan,
    rng: np.random.Generator,
) -> None:
    """``scanner.streaks`` bundles of dark/bright lines through a point near the spine, each over
    a run of axial slices (in place); ``x``, ``y`` are the in-plane coordinate vectors (mm)."""
    nz = volume.shape[2]
    xx, yy = x[:, None], y[None, :]
    for _ in range(scanner.streaks):
        cx, cy = rng.uniform(-15, 15), rng.uniform(y.min() + 20, y.max() - 20)
        length = int(rng.integers(max(1, nz // 8), max(2, nz // 3) + 1))
        start = int(rng.integers(0, max(1, nz - length + 1)))
        pattern = np.zeros(xx.shape[:1] + yy.shape[1:], np.float32)
        for _line in range(int(rng.integers(3, 9))):
            angle = rng.uniform(0, np.pi)
            dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
            width = rng.uniform(0.4, 1.2)
            pattern += (
                rng.choice([-1.0, 1.0]) * rng.uniform(40, 140) * np.exp(-0.5 * (dist / width) ** 2)
            )
        volume[:, :, start : start + length] += pattern[:, :, None]


def to_int16(volume: np.ndarray) -> np.ndarray:
    """Round to int16 HU within the scanner range (−1024 … 3071)."""
    return np.clip(np.rint(volume), -1024, 3071).astype(np.int16)
