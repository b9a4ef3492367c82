"""Small constructed datasets and methods for harness tests (importable as ``fakes:Name``)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from wsbench.contract import (
    BLASTIC,
    LYTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Split,
    TrainingSet,
    VertebraKey,
    VertebraSample,
    WeakLabel,
    WeightsNotSuppliedError,
)

SIZE = 32


def square_body() -> np.ndarray:
    """A 32×32 body mask: the square [4, 28)²."""
    body = np.zeros((SIZE, SIZE), bool)
    body[4:28, 4:28] = True
    return body


def make_vertebra(
    subject: str, level: str, split: Split, phenotype: Phenotype | None, seed: int
) -> PreparedVertebra:
    """A vertebra with bright (blastic) and dark (lytic) squares as its lesions."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE), 200.0, np.float32) + rng.normal(0, 5, (SIZE, SIZE))
    lesions = np.zeros((SIZE, SIZE), np.uint8)
    if phenotype in (Phenotype.BLASTIC, Phenotype.MIXED):
        image[8:13, 8:13] = 900.0
        lesions[8:13, 8:13] = BLASTIC
    if phenotype in (Phenotype.LYTIC, Phenotype.MIXED):
        image[18:24, 16:22] = -50.0
        lesions[18:24, 16:22] = LYTIC
    stack = np.repeat(image[None].astype(np.float32), 5, axis=0)
    body = np.repeat(square_body()[None], 5, axis=0)
    label = WeakLabel.MALIGNANT if phenotype else WeakLabel.HEALTHY
    return PreparedVertebra(
        key=VertebraKey("tiny", subject, level),
        split=split,
        label=label,
        phenotype=phenotype,
        slices=stack,
        body=body,
        spacing=(0.8, 0.8),
        lesions=np.repeat(lesions[None], 5, axis=0),
    )


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


class OptionsDataset(TinyDataset):
    """:class:`TinyDataset` that records the options it was given."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def prepare(self) -> PreparedDataset:
        OptionsDataset.seen.append(dict(self.options))
        return super().prepare()
