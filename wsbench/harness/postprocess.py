"""Harness post-processing applied identically to every method's prediction (paper §4)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import remove_small_objects

from wsbench.contract import BACKGROUND

CONNECTIVITY = 2
"""Pixel connectivity of lesion components everywhere in wsbench (2 = 8-neighbourhood in 2D)."""

BODY_EROSION_PX = 2
MIN_COMPONENT_PX = 5


def eroded_body(body_mask: np.ndarray, pixels: int = BODY_EROSION_PX) -> np.ndarray:
    """The vertebral-body mask eroded by ``pixels`` (4-neighbourhood steps)."""
    if pixels <= 0:
        return body_mask.astype(bool)
    return ndimage.binary_erosion(body_mask.astype(bool), iterations=pixels, border_value=0)


def components(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> np.ndarray:
    """Connected components of a binary mask (int32, 0 = background); ``connectivity`` 1 is the
    4-neighbourhood in 2D, 2 the 8-neighbourhood."""
    return connected_components(mask.astype(bool), connectivity=connectivity).astype(np.int32)


def postprocess(
    labels: np.ndarray,
    body_mask: np.ndarray,
    erosion: int = BODY_EROSION_PX,
    min_size: int = MIN_COMPONENT_PX,
) -> np.ndarray:
    """Keep predictions inside the eroded body and drop components smaller than ``min_size``.

    Components are taken per lesion label, so a lytic and a touching blastic region are filtered
    on their own sizes.
    """
    inside = eroded_body(body_mask, erosion)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value in np.unique(labels):
        if value == BACKGROUND:
            continue
        region = (labels == value) & inside
        kept = remove_small_objects(region, max_size=min_size - 1, connectivity=CONNECTIVITY)
        out[kept] = value
    return out
