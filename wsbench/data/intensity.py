"""The one HU-to-network intensity scaling shared by every learned method."""

from __future__ import annotations

import numpy as np

HU_WINDOW = (-200.0, 1300.0)
"""HU window mapped to [-1, 1]: soft tissue at the low end, cortical and blastic bone high."""


def hu_to_unit(hu: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """HU clipped to ``window`` and mapped linearly to [-1, 1] (float32)."""
    lo, hi = window
    scaled = (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) / (hi - lo)
    return (scaled * 2.0 - 1.0).astype(np.float32)


def unit_to_hu(unit: np.ndarray, window: tuple[float, float] = HU_WINDOW) -> np.ndarray:
    """Inverse of :func:`hu_to_unit` inside the window (float32)."""
    lo, hi = window
    return ((np.asarray(unit, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)
