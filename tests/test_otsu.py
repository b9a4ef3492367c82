"""Otsu plugin (paper A.1.3) on constructed slices."""

from __future__ import annotations

import numpy as np
import pytest

from wsbench.contract import BLASTIC, LYTIC, Phenotype
from wsbench.plugins.otsu import Otsu
from wsbench.testing import sample_of


def three_level_slice(lytic: bool = True, blastic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Bone at 200 HU with a dark and/or a bright square; ±10 HU noise when both are present."""
    image = np.full((20, 20), 200.0, np.float32)
    if lytic:
        image[2:9, 2:9] = -50.0
    if blastic:
        image[10:17, 10:17] = 1000.0
    if lytic and blastic:
        image += np.random.default_rng(0).uniform(-10, 10, image.shape).astype(np.float32)
    image[0, :] = 5000.0  # outside the body: must not influence the thresholds
    body = np.zeros((20, 20), bool)
    body[1:19, 1:19] = True
    return image, body


def test_blastic_hint_marks_pixels_above_threshold() -> None:
    image, body = three_level_slice(lytic=False)
    labels = Otsu().segment(sample_of(image, body, phenotype=Phenotype.BLASTIC))
    expected = np.zeros((20, 20), np.uint8)
    expected[10:17, 10:17] = BLASTIC
    assert np.array_equal(labels, expected)


def test_lytic_hint_marks_pixels_below_threshold() -> None:
    image, body = three_level_slice(blastic=False)
    labels = Otsu().segment(sample_of(image, body, phenotype=Phenotype.LYTIC))
    expected = np.zeros((20, 20), np.uint8)
    expected[2:9, 2:9] = LYTIC
    assert np.array_equal(labels, expected)


@pytest.mark.parametrize("phenotype", [Phenotype.MIXED, None])
def test_mixed_or_no_hint_uses_three_classes(phenotype: Phenotype | None) -> None:
    image, body = three_level_slice()
    labels = Otsu().segment(sample_of(image, body, phenotype=phenotype))
    expected = np.zeros((20, 20), np.uint8)
    expected[2:9, 2:9] = LYTIC
    expected[10:17, 10:17] = BLASTIC
    assert np.array_equal(labels, expected)


def test_uniform_body_gives_no_lesion() -> None:
    body = np.ones((8, 8), bool)
    labels = Otsu().segment(sample_of(np.full((8, 8), 300.0), body, phenotype=Phenotype.BLASTIC))
    assert labels.dtype == np.uint8 and not labels.any()


def test_empty_body_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        Otsu().segment(sample_of(np.zeros((8, 8)), np.zeros((8, 8), bool), phenotype=None))
