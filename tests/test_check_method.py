"""Every built-in method passes ``wsbench.testing.check_method`` (learned ones with tiny
training settings), and the check catches each kind of contract break."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import NoisyMethod

from wsbench.contract import Method, Split, VertebraSample
from wsbench.models.store import cache_root
from wsbench.plugins.ad import AnomalyDetection
from wsbench.plugins.cam import GradCAMMethod
from wsbench.plugins.hideseek import HideAndSeek
from wsbench.plugins.medsam import MedSAM
from wsbench.plugins.otsu import Otsu
from wsbench.testing import check_method, synthetic_dataset

TINY_DAE = {"config": "tiny", "steps": 2}
DDIM = {"steps_stochastic": 2, "steps_decode": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    ("method", "params", "settings"),
    [
        (Otsu, {}, {}),
        (GradCAMMethod, {"epochs": 1}, {}),
        (AnomalyDetection, DDIM, TINY_DAE),
        (HideAndSeek, {**DDIM, "only_malignant": False, "min_candidate_px": 5}, TINY_DAE),
    ],
    ids=lambda value: getattr(value, "name", None) or "",
)
def test_builtin_methods_keep_the_contract(method, params, settings):
    report = check_method(method, params=params, train_settings=settings)
    assert len(report.segmented) == len(synthetic_dataset().split(Split.TEST)) == 8
    assert report.params == method(**params).params()
    assert not (cache_root() / "models").exists()  # training went to a throw-away cache


def test_medsam_keeps_the_contract(tmp_path: Path):
    from test_medsam import tiny_sam

    path = tmp_path / "tiny_medsam.pth"
    torch.save(tiny_sam(64).state_dict(), path)
    report = check_method(MedSAM, params={"checkpoint": str(path)})
    assert report.params["checkpoint"] == str(path) and report.segmented


class RandomEveryTime(Method):
    """Ignores the harness's seed."""

    name = "random"
    distinguishes_phenotype = False

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return (np.random.default_rng().random(sample.image.shape) > 0.5).astype(np.uint8)


class Scribbler(Method):
    """Writes into the image it was given."""

    name = "scribbler"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        sample.image[:] = 0
        return np.zeros(sample.image.shape, np.uint8)


class ThreeClasses(Method):
    """Declares a binary foreground but answers with a label it may not use."""

    name = "threeclasses"
    distinguishes_phenotype = False

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.full(sample.image.shape, 2, np.uint8)


class Unnamed(Method):
    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.zeros((3, 3), np.uint8)


@pytest.mark.parametrize(
    ("method", "problem"),
    [
        (RandomEveryTime, "differs under the same seed"),
        (Scribbler, "changed sample.image"),
        (ThreeClasses, r"label values \[2\], allowed \[0, 1\]"),
        (Unnamed, "sets no `name`"),
        (Unnamed, r"shape \(3, 3\)"),
    ],
)
def test_check_method_names_what_is_broken(method, problem):
    with pytest.raises(AssertionError, match=problem):
        check_method(method)


def test_harness_seeded_randomness_is_deterministic():
    assert check_method(NoisyMethod).segmented
