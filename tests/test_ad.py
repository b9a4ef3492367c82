"""The anomaly-detection baseline on a constructed 'healthy DAE' and on the real tiny DAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fakes import make_vertebra

from wsbench.contract import BLASTIC, LYTIC, Phenotype, PreparedDataset, Split
from wsbench.data.intensity import hu_to_unit
from wsbench.plugins.ad import STORE, AnomalyDetection
from wsbench.plugins.common.dae.training import run_training, train_config
from wsbench.testing import sample_of

SIZE = 16
BLAST = (slice(2, 6), slice(2, 6))  # 16 px at 1000 HU
LYSIS = (slice(9, 13), slice(8, 14))  # 24 px at -100 HU
BACKGROUND_HU = 300.0


class ConstantHealthy:
    """A 'healthy-only DAE' whose reconstruction of anything is a uniform 300 HU slice."""

    def to_unit(self, hu):
        return hu_to_unit(hu)

    def encode(self, x):
        return torch.zeros(len(x), 2)

    def stochastic_encode(self, x, z_sem, steps):
        return x.clone()

    def decode(self, x_t, z_sem, steps):
        return torch.full_like(x_t, float(hu_to_unit(np.float32(BACKGROUND_HU))))


def vertebra() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((SIZE, SIZE), BACKGROUND_HU, np.float32)
    image[BLAST], image[LYSIS] = 1000.0, -100.0
    return image, np.ones((SIZE, SIZE), bool)


def expected(*labels: int) -> np.ndarray:
    out = np.zeros((SIZE, SIZE), np.uint8)
    if LYTIC in labels:
        out[LYSIS] = LYTIC
    if BLASTIC in labels:
        out[BLAST] = BLASTIC
    return out


@pytest.mark.parametrize(
    ("hint", "labels"),
    [(None, (LYTIC, BLASTIC)), (Phenotype.MIXED, (LYTIC, BLASTIC)),
     (Phenotype.LYTIC, (LYTIC,)), (Phenotype.BLASTIC, (BLASTIC,))],
)  # fmt: skip
def test_residual_polarities_give_exact_lytic_and_blastic_masks(hint, labels):
    image, body = vertebra()
    seg = AnomalyDetection.from_dae(ConstantHealthy()).segment(
        sample_of(image, body, phenotype=hint)
    )
    np.testing.assert_array_equal(seg.labels, expected(*labels))
    assert seg.labels.dtype == np.uint8 and seg.candidates.dtype == np.int32
    assert [lesion.label for lesion in seg.lesions] == list(labels)
    assert [lesion.size for lesion in seg.lesions] == [{LYTIC: 24, BLASTIC: 16}[k] for k in labels]
    assert all(lesion.kept for lesion in seg.lesions)


def test_score_map_is_the_absolute_residual():
    image, body = vertebra()
    seg = AnomalyDetection.from_dae(ConstantHealthy()).segment(
        sample_of(image, body, phenotype=None)
    )
    np.testing.assert_allclose(seg.scores, np.abs(hu_to_unit(image) - hu_to_unit(BACKGROUND_HU)))
    assert seg.lesions[1].score == pytest.approx(hu_to_unit(1000.0) - hu_to_unit(300.0))


def test_only_body_pixels_can_be_candidates():
    image, body = vertebra()
    body[:, :7] = False  # hides the blastic square
    seg = AnomalyDetection.from_dae(ConstantHealthy()).segment(
        sample_of(image, body, phenotype=None)
    )
    np.testing.assert_array_equal(seg.labels, expected(LYTIC))


def dataset() -> PreparedDataset:
    vertebrae = [
        make_vertebra(f"s{s}", level, Split.TRAIN if s < 3 else Split.TEST, phenotype, 4 * s + i)
        for s in range(4)
        for i, (level, phenotype) in enumerate([("L1", None), ("L2", Phenotype.BLASTIC)])
    ]
    return PreparedDataset("tiny", "tiny-fingerprint", vertebrae)


def test_fit_without_a_healthy_dae_says_how_to_train_it(tmp_path):
    training = dataset().training_set()
    with pytest.raises(FileNotFoundError, match="wsbench train --method ad --dataset tiny"):
        AnomalyDetection().fit(training, tmp_path)
    run_training(training, train_config("tiny", steps=1), STORE, progress=False)  # all vertebrae
    with pytest.raises(FileNotFoundError, match="no trained dae-healthy DAE"):
        AnomalyDetection().dae_path(training)


def test_fit_finds_the_healthy_dae_and_segments_with_it(tmp_path):
    prepared = dataset()
    recipe = train_config("tiny", steps=2, healthy_only=True)
    path, _ = run_training(prepared.training_set(), recipe, STORE, progress=False)
    assert AnomalyDetection().dae_path(prepared.training_set()) == path
    method = AnomalyDetection(steps_stochastic=2, steps_decode=2)
    method.fit(prepared.training_set(), tmp_path)
    vertebra = prepared.split(Split.TEST)[1]
    sample = vertebra.sample(vertebra.phenotype)
    seg = method.segment(sample)
    x, healthy = method.pseudo_healthy(sample.image)
    np.testing.assert_allclose(seg.scores, np.abs(x - healthy), rtol=1e-6)
    assert seg.labels.shape == sample.image.shape and set(np.unique(seg.labels)) <= {0, BLASTIC}
    again = method.segment(sample)
    np.testing.assert_array_equal(seg.labels, again.labels)


def test_segment_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="fit"):
        AnomalyDetection().segment(sample_of(*vertebra(), phenotype=None))
