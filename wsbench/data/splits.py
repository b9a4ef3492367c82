"""Subject-level train/test splits shared by the dataset adapters.

A subject's split is a pure function of its own id and the seed (a keyed hash), so adding,
removing or failing to load any other subject never moves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from wsbench.contract import Split

DEFAULT_SEED = 0
DEFAULT_TEST_FRACTION = 0.3


def subject_draw(subject: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``subject`` and ``seed`` alone (BLAKE2b keyed by the seed)."""
    key = str(seed).encode()
    value = hashlib.blake2b(subject.encode(), key=key, digest_size=8).digest()
    return int.from_bytes(value, "big") / 2**64


def subject_split(subject: str, seed: int, test_fraction: float) -> Split:
    """``test`` when the subject's draw falls below ``test_fraction``, else ``train``: about that
    fraction of subjects is tested, each independently of the others."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction {test_fraction} must lie between 0 and 1")
    return Split.TEST if subject_draw(subject, seed) < test_fraction else Split.TRAIN


def seeded_split(subjects: Iterable[str], seed: int, test_fraction: float) -> dict[str, Split]:
    """Subject → :func:`subject_split` for every subject."""
    return {s: subject_split(s, seed, test_fraction) for s in sorted(set(subjects))}
