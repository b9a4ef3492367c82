"""Subject-level train/test splits shared by the dataset adapters."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from wsbench.contract import Split

DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.3


def seeded_split(subjects: Iterable[str], seed: int, test_fraction: float) -> dict[str, Split]:
    """Subject → split: a seeded permutation of the sorted subjects, the first ``round(f·n)``
    (at least one when there are two or more) to test."""
    ordered = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_test = round(test_fraction * len(ordered))
    if len(ordered) >= 2:
        n_test = min(max(n_test, 1), len(ordered) - 1)
    test = {ordered[i] for i in order[:n_test]}
    return {s: Split.TEST if s in test else Split.TRAIN for s in ordered}
