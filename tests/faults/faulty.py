"""Methods and a dataset that misbehave on purpose, for the fault-injection tests (importable as
``faulty:Name``, also from the forked worker a run segments in)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from fakes import TinyDataset

from wsbench.contract import (
    BLASTIC,
    DatasetAdapter,
    Method,
    Phenotype,
    PreparedDataset,
    Scope,
    Segmentation,
    Skipped,
    Split,
    VertebraSample,
)
from wsbench.testing import synthetic_vertebra


def bright(sample: VertebraSample) -> np.ndarray:
    """Otsu-like answer: bright pixels of the body, labelled blastic."""
    return ((sample.image > 600) & sample.body_mask).astype(np.uint8) * BLASTIC


class Misbehaving(Method):
    """Answers like :func:`bright`, except on the vertebrae named in its parameters: ``fail``
    raises, ``hang`` sleeps for ever (first creating the file ``flag`` when one is named, so
    that a test can tell the hang has begun), ``die`` ends the process, ``refuse`` declines to
    look, ``flaky`` raises while the file ``flag`` exists (a transient error). Names are
    comma-separated vertebra ids."""

    name = "misbehaving"
    timeout_s = 5.0

    def __init__(
        self, fail: str = "", hang: str = "", die: str = "", refuse: str = "", flaky: str = "",
        flag: str = "", empty: str = "",
    ) -> None:  # fmt: skip
        self.fail, self.hang, self.die, self.refuse = fail, hang, die, refuse
        self.flaky, self.flag, self.empty = flaky, flag, empty

    @staticmethod
    def named(names: str, vertebra_id: str) -> bool:
        return vertebra_id in names.split(",")

    def segment(self, sample: VertebraSample) -> Segmentation | np.ndarray:
        vertebra = sample.key.id
        if self.named(self.fail, vertebra):
            raise RuntimeError(f"no convergence on {vertebra}")
        if self.named(self.hang, vertebra):
            if self.flag:
                Path(self.flag).touch()
            while True:
                time.sleep(60)
        if self.named(self.die, vertebra):
            os._exit(3)
        if self.named(self.flaky, vertebra) and Path(self.flag).exists():
            raise ConnectionError("model server unreachable")
        if self.named(self.empty, vertebra):
            return np.zeros_like(sample.body_mask, np.uint8)
        if self.named(self.refuse, vertebra):
            return Segmentation(np.zeros_like(sample.body_mask, np.uint8), refusal="looks healthy")
        return bright(sample)


class UnsafeIds(DatasetAdapter):
    """Four test vertebrae whose subject ids hold ``/`` and ``..``."""

    name = "unsafe"
    needs_root = False

    def prepare(self) -> PreparedDataset:
        plan = [("a/b", "L1", Phenotype.BLASTIC), ("a_b", "L1", None),
                ("../x", "L2", Phenotype.LYTIC), ("..", "L3", None)]  # fmt: skip
        vertebrae = [
            synthetic_vertebra(subject, level, Split.TEST, phenotype, seed, dataset="unsafe")
            for seed, (subject, level, phenotype) in enumerate(plan)
        ]
        return PreparedDataset("unsafe", "unsafe-fingerprint", vertebrae)


class Hangs(Misbehaving):
    """:class:`Misbehaving` that hangs on the tiny dataset's first test vertebra by default."""

    name = "hangs"

    def __init__(self, hang: str = "tiny_s3_L1", **params: Any) -> None:
        super().__init__(hang=hang, **params)


class UnusableLabels(DatasetAdapter):
    """The tiny dataset with a dataset-level fault: its labels table is unusable."""

    name = "unusable"
    needs_root = False

    def prepare(self) -> PreparedDataset:
        prepared = TinyDataset().prepare()
        lost = Skipped("sub-9", "sub-9_ct.nii.gz cannot be read (truncated)", Scope.FILE)
        fault = Skipped("labels.csv", "rows 4 and 7 contradict each other", Scope.DATASET)
        prepared.skipped += [lost, fault]
        return prepared
