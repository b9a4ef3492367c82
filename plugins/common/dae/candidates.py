"""Lesion candidates from an image and its pseudo-healthy version (Hide-and-Seek and AD alike).

On CT a lytic lesion is hypodense, so its healthy version is *brighter*: lytic candidates are
where ``healthy > image`` and blastic candidates where ``image > healthy``. Each polarity's
difference map is binarised within the body and split into connected components. Two rules set
the cut: ``body-mean``, its mean over all body pixels, zeros included (the paper's "per-image
mean threshold", §4), and ``positive-median``, the median of its positive body pixels (the
authors' released demo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from wsbench.api import BLASTIC, CONNECTIVITY, LYTIC, components

Threshold = Literal["body-mean", "positive-median"]
THRESHOLDS: tuple[Threshold, ...] = ("body-mean", "positive-median")


def polarity_maps(image: np.ndarray, healthy: np.ndarray) -> dict[int, np.ndarray]:
    """Lytic (``healthy − image``)⁺ and blastic (``image − healthy``)⁺ difference maps."""
    difference = np.asarray(image, dtype=np.float64) - np.asarray(healthy, dtype=np.float64)
    return {LYTIC: np.maximum(-difference, 0.0), BLASTIC: np.maximum(difference, 0.0)}


def binarise(diff: np.ndarray, body: np.ndarray, rule: Threshold = "body-mean") -> np.ndarray:
    """Body pixels whose difference is strictly above the ``rule``'s cut: the mean over *all*
    body pixels (zeros included), or the median of the body pixels above zero."""
    body = np.asarray(body, dtype=bool)
    values = diff[body]
    if rule == "positive-median":
        values = values[values > 0]
        cut = float(np.median(values)) if values.size else 0.0
    elif rule == "body-mean":
        cut = values.mean() if values.size else 0.0
    else:
        raise ValueError(f"threshold rule {rule!r}: choose one of {', '.join(THRESHOLDS)}")
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


def extract_candidates(
    image: np.ndarray,
    healthy: np.ndarray,
    body: np.ndarray,
    rule: Threshold = "body-mean",
    connectivity: int = CONNECTIVITY,
) -> list[Candidate]:
    """Lytic then blastic candidates: components (``connectivity`` 2 = 8-connected, 1 =
    4-connected) of each polarity's map binarised by ``rule``, in label order."""
    found = []
    for label, diff in polarity_maps(image, healthy).items():
        labelled = components(binarise(diff, body, rule), connectivity)
        found += [Candidate(labelled == k, label) for k in range(1, int(labelled.max()) + 1)]
    return found
