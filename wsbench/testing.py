"""Helpers for testing method plugins, for wsbench's own tests and for plugin authors' tests.

:func:`check_method` runs a method class through what the harness does to it, on a small
synthetic dataset, and reports every broken rule of the contract at once::

    from wsbench.testing import check_method

    def test_my_method_keeps_the_contract():
        check_method(MyMethod, params={"quantile": 0.95})
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsbench.contract import (
    BLASTIC,
    LYTIC,
    N_CENTRAL_SLICES,
    Method,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Split,
    TrainingSet,
    TrainOptions,
    VertebraKey,
    VertebraSample,
    WeakLabel,
    patient_hints,
)
from wsbench.harness.runner import seed_everything, train_method, validate_output, vertebra_seed

SIZE = 32
"""Side of the synthetic slices (pixels)."""
SAMPLE_ARRAYS = ("image", "body_mask", "stack", "stack_body")
"""The arrays of a :class:`VertebraSample` a method must leave as they are."""


def synthetic_vertebra(
    subject: str,
    level: str,
    split: Split,
    phenotype: Phenotype | None,
    seed: int,
    dataset: str = "synthetic",
) -> PreparedVertebra:
    """A 32×32 vertebra at 200 HU (noise SD 5) whose body is the square [4, 28)²; a blastic
    lesion is the bright square [8, 13)² (900 HU), a lytic one the dark block [18, 24)×[16, 22)
    (−50 HU), a mixed vertebra has both. Its five central slices are identical."""
    rng = np.random.default_rng(seed)
    image = np.full((SIZE, SIZE), 200.0, np.float32) + rng.normal(0, 5, (SIZE, SIZE))
    lesions = np.zeros((SIZE, SIZE), np.uint8)
    if phenotype in (Phenotype.BLASTIC, Phenotype.MIXED):
        image[8:13, 8:13] = 900.0
        lesions[8:13, 8:13] = BLASTIC
    if phenotype in (Phenotype.LYTIC, Phenotype.MIXED):
        image[18:24, 16:22] = -50.0
        lesions[18:24, 16:22] = LYTIC
    body = np.zeros((SIZE, SIZE), bool)
    body[4:28, 4:28] = True
    label = WeakLabel.MALIGNANT if phenotype else WeakLabel.HEALTHY
    return PreparedVertebra(
        key=VertebraKey(dataset, subject, level),
        split=split,
        label=label,
        phenotype=phenotype,
        slices=np.repeat(image[None].astype(np.float32), N_CENTRAL_SLICES, axis=0),
        body=np.repeat(body[None], N_CENTRAL_SLICES, axis=0),
        spacing=(0.8, 0.8),
        lesions=np.repeat(lesions[None], N_CENTRAL_SLICES, axis=0),
    )


def synthetic_dataset(subjects: int = 4) -> PreparedDataset:
    """``subjects`` training and ``subjects`` test subjects of two vertebrae each (L1 malignant,
    cycling blastic / lytic / mixed; L2 healthy): enough for a learned method to fit."""
    kinds = (Phenotype.BLASTIC, Phenotype.LYTIC, Phenotype.MIXED)
    vertebrae = []
    for index in range(2 * subjects):
        split = Split.TRAIN if index < subjects else Split.TEST
        subject = f"s{index}"
        vertebrae.append(synthetic_vertebra(subject, "L1", split, kinds[index % 3], 2 * index))
        vertebrae.append(synthetic_vertebra(subject, "L2", split, None, 2 * index + 1))
    return PreparedDataset("synthetic", f"synthetic-{subjects}", vertebrae)


def sample_of(
    image: np.ndarray,
    body: np.ndarray,
    phenotype: Phenotype | None = None,
    spacing: tuple[float, float] = (0.8, 0.8),
    key: VertebraKey | None = None,
) -> VertebraSample:
    """The :class:`VertebraSample` of one slice (its stack is that slice five times)."""
    image = np.asarray(image, dtype=np.float32)
    body = np.asarray(body, dtype=bool)
    return VertebraSample(
        key=key or VertebraKey("synthetic", "s0", "L1"),
        image=image,
        body_mask=body,
        spacing=spacing,
        stack=np.repeat(image[None], N_CENTRAL_SLICES, axis=0),
        stack_body=np.repeat(body[None], N_CENTRAL_SLICES, axis=0),
        phenotype=phenotype,
    )


@contextmanager
def isolated_cache() -> Iterator[Path]:
    """A throw-away ``$WSBENCH_CACHE`` for the block (trained models land there, not in yours)."""
    previous = os.environ.get("WSBENCH_CACHE")
    with tempfile.TemporaryDirectory(prefix="wsbench-check-") as folder:
        os.environ["WSBENCH_CACHE"] = folder
        try:
            yield Path(folder)
        finally:
            if previous is None:
                os.environ.pop("WSBENCH_CACHE", None)
            else:
                os.environ["WSBENCH_CACHE"] = previous


@dataclass
class MethodReport:
    """What :func:`check_method` checked: the parameters, trained files, segmented vertebrae."""

    params: dict[str, Any]
    trained: list[Path] = field(default_factory=list)
    segmented: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_parameters(method: Method, report: MethodReport) -> None:
    """Every constructor parameter is readable as an attribute, and the class rebuilt from
    :meth:`Method.params` has the same parameters."""
    try:
        report.params = method.params()
    except AttributeError as exc:
        report.problems.append(f"params(): a constructor parameter has no attribute ({exc})")
        return
    rebuilt = type(method)(**report.params).params()
    if rebuilt != report.params:
        report.problems.append(f"params() does not rebuild the method: {report.params} → {rebuilt}")


def check_segmentations(
    method: Method, dataset: PreparedDataset, seed: int, report: MethodReport
) -> None:
    """Each test vertebra's answer passes the harness's output checks, is the same twice under
    the same seed, and leaves the given arrays untouched."""
    hints = patient_hints(dataset.vertebrae)
    for vertebra in dataset.split(Split.TEST):
        sample = vertebra.sample(hints[vertebra.key.patient])
        given = sample.copy()
        answers = []
        for _ in range(2):
            seed_everything(vertebra_seed(seed, vertebra.key.id))
            try:
                output = method.segment(given)
            except Exception as exc:
                report.problems.append(f"segment({vertebra.key.id}): {type(exc).__name__}: {exc}")
                return
            changed = [
                a
                for a in SAMPLE_ARRAYS
                if not np.array_equal(getattr(given, a), getattr(sample, a))
            ]
            if changed:
                report.problems.append(f"segment({vertebra.key.id}) changed sample.{changed[0]}")
                return
            try:
                answers.append(validate_output(method, output, sample.image.shape).labels)
            except ValueError as exc:
                report.problems.append(f"segment({vertebra.key.id}): {exc}")
                return
        if not np.array_equal(*answers):
            report.problems.append(f"segment({vertebra.key.id}) differs under the same seed")
        report.segmented.append(vertebra.key.id)


def check_method(
    method_cls: type[Method],
    params: Mapping[str, Any] | None = None,
    train_settings: Mapping[str, Any] | None = None,
    dataset: PreparedDataset | None = None,
    seed: int = 0,
) -> MethodReport:
    """Run ``method_cls(**params)`` through the contract the harness applies, on
    :func:`synthetic_dataset` (or ``dataset``), in a throw-away model cache.

    Checked: the class has a name and subclasses :class:`Method`; :meth:`Method.params` comes
    from the constructor and rebuilds the method; a learning method trains
    (:meth:`Method.train` with ``train_settings``) and fits on the weak :class:`TrainingSet`
    only (it has no lesion field); every test vertebra's answer has the slice's shape, dtype
    uint8 and allowed labels (0/1/2, or 0/1 for ``distinguishes_phenotype = False``), score and
    candidate maps of that shape; the same seed gives the same answer; the inputs are not
    changed. Raises ``AssertionError`` listing every problem; returns the report otherwise.
    """
    report = MethodReport(params={})
    if not (isinstance(method_cls, type) and issubclass(method_cls, Method)):
        raise AssertionError(f"{method_cls!r} is not a subclass of wsbench.api.Method")
    if not method_cls.name:
        report.problems.append("the class sets no `name`")
    data = dataset or synthetic_dataset()
    with isolated_cache() as cache:
        method = method_cls(**dict(params or {}))
        check_parameters(method, report)
        training = data.training_set()
        if type(training) is not TrainingSet:
            raise AssertionError("the dataset's training view is not a TrainingSet")
        ready = True
        if method_cls.learns():
            options = TrainOptions(cache / "work", seed=seed, progress=False)
            try:
                report.trained = train_method(method, training, options, dict(train_settings or {}))
                method.fit(training, cache / "work")
            except Exception as exc:  # reported with the other problems
                report.problems.append(f"train/fit: {type(exc).__name__}: {exc}")
                ready = False
        if ready:
            check_segmentations(method, data, seed, report)
    if report.problems:
        raise AssertionError(
            f"{method_cls.__name__} breaks the wsbench method contract:\n- "
            + "\n- ".join(report.problems)
        )
    return report
