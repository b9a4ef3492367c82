"""3D subject volumes as writers and generators exchange them, and vertebra level naming."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsbench.contract import Phenotype, Split, WeakLabel

LEVEL_NAMES: dict[int, str] = {
    **{n: f"C{n}" for n in range(1, 8)},
    **{n + 7: f"T{n}" for n in range(1, 13)},
    **{n + 19: f"L{n}" for n in range(1, 7)},
    28: "T13",
}
"""VerSe / TPTBox vertebra label numbers to level names."""

LEVEL_NUMBERS: dict[str, int] = {name: number for number, name in LEVEL_NAMES.items()}

BODY_SUBREGIONS = (49, 50)
"""Subregion labels whose union is the vertebral body (corpus border and corpus)."""

DISC_SUBREGION = 100


def level_name(value: object) -> str:
    """Level name (``L3``) from a name or a VerSe label number (``22``)."""
    text = str(value).strip().upper()
    if text in LEVEL_NUMBERS:
        return text
    try:
        return LEVEL_NAMES[int(float(text))]
    except (ValueError, KeyError, OverflowError):
        raise ValueError(f"vertebra {value!r} is neither a level name nor a label number") from None


@dataclass(frozen=True)
class VertebraLabel:
    """Weak label and phenotype of one vertebra of a subject."""

    level: str
    label: WeakLabel | None
    phenotype: Phenotype | None = None


@dataclass
class SubjectVolumes:
    """One subject's CT and masks on one voxel grid.

    ``affine`` maps voxel indices to RAS millimetres (nibabel convention). ``vert`` holds VerSe
    vertebra numbers, ``subreg`` subregion labels (49 ∪ 50 = body, 100 = disc), ``lesion``
    0/1/2. ``ct`` is HU (int16).
    """

    subject: str
    ct: np.ndarray
    affine: np.ndarray
    vert: np.ndarray
    vertebrae: list[VertebraLabel]
    subreg: np.ndarray | None = None
    lesion: np.ndarray | None = None
    split: Split | None = None
    session: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]
