"""Lesion candidates from an image and its pseudo-healthy version (Hide-and-Seek and AD alike).

On CT a lytic lesion is hypodense, so its healthy version is *brighter*: lytic candidates are
where ``healthy > image`` and blastic candidates where ``image > healthy``. Each polarity's
difference map is binarised at its mean over all body pixels (zeros included; paper §4) and split
into 8-connected components.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsbench.api import BLASTIC, LYTIC, components


def polarity_maps(image: np.ndarray, healthy: np.ndarray) -> dict[int, np.ndarray]:
    """Lytic (``healthy − image``)⁺ and blastic (``image − healthy``)⁺ difference maps."""
    difference = np.asarray(image, dtype=np.float64) - np.asarray(healthy, dtype=np.float64)
    return {LYTIC: np.maximum(-difference, 0.0), BLASTIC: np.maximum(difference, 0.0)}


def binarise(diff: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Body pixels whose difference exceeds its mean over *all* body pixels (zeros included)."""
    body = np.asarray(body, dtype=bool)
    values = diff[body]
    cut = values.mean() if values.size else 0.0
    return body & (diff > cut)


@dataclass(frozen=True)
class Candidate:
    """One connected component of a polarity's binarised difference map."""

    mask: np.ndarray
    label: int

    @property
    def size(self) -> int:
        """Number of pixels."""
        return int(self.mask.sum())


def extract_candidates(image: np.ndarray, healthy: np.ndarray, body: np.ndarray) -> list[Candidate]:
    """Lytic then blastic candidates (8-connected components, in label order)."""
    found = []
    for label, diff in polarity_maps(image, healthy).items():
        labelled = components(binarise(diff, body))
        found += [Candidate(labelled == k, label) for k in range(1, int(labelled.max()) + 1)]
    return found
