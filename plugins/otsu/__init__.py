"""Otsu thresholding inside the vertebral body (paper A.1.3)."""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_multiotsu, threshold_otsu

from wsbench.api import BLASTIC, LYTIC, Method, Phenotype, VertebraSample


class Otsu(Method):
    """Single-level Otsu for a lytic (below) or blastic (above) hint; three-class Otsu otherwise.

    With a mixed hint or none, the low class is lytic and the high class blastic.
    """

    name = "otsu"
    version = "1"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        """Label map from thresholds computed on the body's pixels."""
        image, body = sample.image, sample.body_mask.astype(bool)
        values = image[body]
        if values.size == 0:
            raise ValueError("the vertebral-body mask is empty: nothing to threshold")
        labels = np.zeros(image.shape, dtype=np.uint8)
        levels_needed = 2 if sample.phenotype in (Phenotype.LYTIC, Phenotype.BLASTIC) else 3
        if np.unique(values).size < levels_needed:
            return labels
        if sample.phenotype == Phenotype.LYTIC:
            labels[body & (image < threshold_otsu(values))] = LYTIC
        elif sample.phenotype == Phenotype.BLASTIC:
            labels[body & (image > threshold_otsu(values))] = BLASTIC
        else:
            low, high = threshold_multiotsu(values, classes=3)
            labels[body & (image < low)] = LYTIC
            labels[body & (image > high)] = BLASTIC
        return labels
