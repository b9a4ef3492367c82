"""Small constructed datasets and methods for harness tests (importable as ``fakes:Name``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsbench.contract import (
    BLASTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Split,
    TrainedOn,
    TrainingSet,
    VertebraSample,
    WeightsNotSuppliedError,
)
from wsbench.testing import synthetic_vertebra


def make_vertebra(
    subject: str, level: str, split: Split, phenotype: Phenotype | None, seed: int
) -> PreparedVertebra:
    """A vertebra of the ``tiny`` dataset (:func:`wsbench.testing.synthetic_vertebra`)."""
    return synthetic_vertebra(subject, level, split, phenotype, seed, dataset="tiny")


class TinyDataset(DatasetAdapter):
    """Eight vertebrae: train and test, each phenotype and healthy."""

    name = "tiny"
    needs_root = False

    def prepare(self) -> PreparedDataset:
        plan = [
            ("s1", "L1", Split.TRAIN, Phenotype.BLASTIC),
            ("s1", "L2", Split.TRAIN, None),
            ("s2", "L1", Split.TRAIN, Phenotype.LYTIC),
            ("s2", "L2", Split.TRAIN, None),
            ("s3", "L1", Split.TEST, Phenotype.BLASTIC),
            ("s3", "L2", Split.TEST, Phenotype.LYTIC),
            ("s4", "L1", Split.TEST, Phenotype.MIXED),
            ("s4", "L2", Split.TEST, None),
        ]
        vertebrae = [make_vertebra(*row, seed=i) for i, row in enumerate(plan)]
        return PreparedDataset("tiny", "tiny-fingerprint", vertebrae)


class NoisyMethod(Method):
    """Random binary foreground (seeded by the harness); records what ``fit`` saw."""

    name = "noisy"
    distinguishes_phenotype = False
    seen: ClassVar[list[TrainingSet]] = []

    def fit(self, training: TrainingSet, workdir: Any) -> None:
        NoisyMethod.seen.append(training)

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return (np.random.random(sample.image.shape) > 0.7).astype(np.uint8)


class OnDevice(Method):
    """Segments nothing; takes a torch ``device`` parameter, as the DAE methods do."""

    name = "ondevice"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.zeros(sample.image.shape, np.uint8)


class HintRecorder(Method):
    """Segments nothing; records the phenotype hint each vertebra was given."""

    name = "hintrecorder"
    seen: ClassVar[dict[str, Phenotype | None]] = {}

    def segment(self, sample: VertebraSample) -> np.ndarray:
        HintRecorder.seen[sample.key.id] = sample.phenotype
        return np.zeros(sample.image.shape, np.uint8)


class WrongShape(Method):
    """Returns a map of the wrong shape for subject s3 and a valid empty map otherwise."""

    name = "wrongshape"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        if sample.key.subject == "s3":
            return np.zeros((3, 3), np.uint8)
        return np.zeros(sample.image.shape, np.uint8)


class WrongLabels(Method):
    """Returns label 7 everywhere inside the body."""

    name = "wronglabels"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.where(sample.body_mask, 7, 0).astype(np.uint8)


class CrashAfterTwo(Method):
    """Segments like Otsu's blastic branch but raises KeyboardInterrupt on the third call."""

    name = "crash"
    calls: ClassVar[int] = 0
    crash_at: ClassVar[int | None] = 2

    def segment(self, sample: VertebraSample) -> np.ndarray:
        if CrashAfterTwo.crash_at is not None and CrashAfterTwo.calls == CrashAfterTwo.crash_at:
            raise KeyboardInterrupt
        CrashAfterTwo.calls += 1
        noise = np.random.random(sample.image.shape) > 0.9
        return ((sample.image > 600) | (noise & sample.body_mask)).astype(np.uint8) * BLASTIC


class NeedsWeights(Method):
    """A method whose external weights were not supplied."""

    name = "needsweights"

    def fit(self, training: TrainingSet, workdir: Any) -> None:
        raise WeightsNotSuppliedError("pass --checkpoint with the official weights")

    def segment(self, sample: VertebraSample) -> np.ndarray:
        raise AssertionError("never reached")


class BrokenFit(Method):
    """A method whose training crashes."""

    name = "brokenfit"

    def fit(self, training: TrainingSet, workdir: Any) -> None:
        raise RuntimeError("diverged at step 3")

    def segment(self, sample: VertebraSample) -> np.ndarray:
        raise AssertionError("never reached")


class Transferred(Method):
    """Otsu-like thresholding whose (pretend) model was trained on another dataset."""

    name = "transferred"
    distinguishes_phenotype = False

    def fit(self, training: TrainingSet, workdir: Any) -> None:
        self.origin = TrainedOn("elsewhere", "elsewhere-fingerprint")

    def trained_on(self) -> dict[str, TrainedOn]:
        return {"classifier": self.origin}

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return ((sample.image > 600) & sample.body_mask).astype(np.uint8)


class TrainedHere(Transferred):
    """:class:`Transferred`, but its model was trained on the run's own dataset."""

    name = "trainedhere"

    def fit(self, training: TrainingSet, workdir: Any) -> None:
        self.origin = TrainedOn(training.name, training.fingerprint)


class OptionsDataset(TinyDataset):
    """:class:`TinyDataset` that declares two options and records those it was given."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def __init__(
        self, root: Any = None, cache_dir: Any = None, *, colour: str = "", size: str = ""
    ):
        super().__init__(root, cache_dir, colour=colour, size=size)

    def prepare(self) -> PreparedDataset:
        OptionsDataset.seen.append(dict(self.options))
        return super().prepare()


KILL_MARKER_ENV = "WSBENCH_FAKES_KILL_MARKER"
"""Environment variable naming the marker file of :class:`KillsWorker` (unset: it never kills)."""


class KillsWorker(Method):
    """Thresholding with seeded noise that, the first time it meets ``tiny_s4_L1`` while the
    marker file :data:`KILL_MARKER_ENV` names is missing, creates the marker and ends its own
    process at once (no time limit, so in a Dask worker it runs in the worker itself)."""

    name = "killsworker"
    distinguishes_phenotype = False
    timeout_s = 0.0

    def segment(self, sample: VertebraSample) -> np.ndarray:
        marker = os.environ.get(KILL_MARKER_ENV)
        if marker and sample.key.id == "tiny_s4_L1" and not Path(marker).exists():
            Path(marker).touch()
            os._exit(1)
        noise = np.random.random(sample.image.shape) > 0.8
        return ((sample.image > 600) | (noise & sample.body_mask)).astype(np.uint8)
