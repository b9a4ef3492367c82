"""The phantom's plan: every subject's anatomy, labels, lesions, mimics and scanner, drawn from a
seed without rendering a voxel.

Rendering (:mod:`wsbench.datasets.phantom.generate`) only reads a :class:`SubjectPlan`, so the
labels and the lesion / mimic inventory of a whole dataset can be inspected (and tested) in
milliseconds. Each subject draws from its own ``numpy`` generator seeded with ``(seed, subject
index)``, so subjects are independent of each other and of the dataset size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wsbench.contract import Phenotype, Split, WeakLabel

LEVELS: tuple[str, ...] = tuple(f"T{n}" for n in range(1, 13)) + tuple(f"L{n}" for n in range(1, 6))
"""Thoracolumbar levels the phantom draws from, cranial to caudal."""

LESION_KINDS = ("lytic", "blastic", "mixed")
"""Lesion models: hypodense, hyperdense, and interwoven lytic/blastic."""

MIMIC_TYPES: dict[str, int] = {
    "bone_island": 1,
    "endplate_sclerosis": 2,
    "schmorl_node": 3,
    "haemangioma": 4,
    "focal_fat": 5,
    "rarefaction": 6,
    "osteophyte": 7,
    "basivertebral_vein": 8,
}
"""Benign findings (value in the mimic map). None of them is ever part of the lesion mask."""

MIMIC_RATES: dict[str, float] = {
    "bone_island": 0.28,
    "endplate_sclerosis": 0.25,
    "schmorl_node": 0.2,
    "haemangioma": 0.12,
    "focal_fat": 0.25,
    "rarefaction": 0.25,
    "osteophyte": 0.22,
    "basivertebral_vein": 0.7,
}
"""Probability that a vertebra carries each mimic (older subjects get more degenerative ones)."""

PHENOTYPE_WEIGHTS: dict[Phenotype, float] = {
    Phenotype.BLASTIC: 0.4,
    Phenotype.LYTIC: 0.3,
    Phenotype.MIXED: 0.3,
}
"""Patient-level phenotype of a patient with metastases (TCIA / paper Table 1 proportions)."""

MIDLINE_SHARE = 0.85
"""Share of a vertebra's further lesions that cross the mid-sagittal plane."""

PLACEMENT_TRIES = 20

TEST_PHENOTYPE_CYCLE = (Phenotype.BLASTIC, Phenotype.LYTIC, Phenotype.MIXED, None)
"""Test subjects cycle through these patient phenotypes (``None`` = no metastases), so every
phenotype and healthy patients appear in any test split of four or more subjects."""


@dataclass(frozen=True)
class PhantomOptions:
    """What a phantom dataset is made of; all of it is part of the cache digest.

    ``subjects`` subjects, the first ``round(test_fraction · subjects)`` (at least one) of which
    form the test split; 5–8 consecutive vertebrae each (``min_levels``, ``max_levels``).
    ``metastatic_fraction`` is the share of training patients with metastases (test patients
    follow :data:`TEST_PHENOTYPE_CYCLE`).
    """

    subjects: int = 340
    seed: int = 0
    test_fraction: float = 0.09
    min_levels: int = 5
    max_levels: int = 8
    metastatic_fraction: float = 0.35

    def __post_init__(self) -> None:
        if self.subjects < 1:
            raise ValueError(f"phantom subjects must be ≥ 1, got {self.subjects}")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"phantom test_fraction must lie in 0..1, got {self.test_fraction}")
        if not 1 <= self.min_levels <= self.max_levels <= len(LEVELS):
            raise ValueError(
                f"phantom levels per subject must satisfy 1 ≤ min ≤ max ≤ {len(LEVELS)}, "
                f"got {self.min_levels}..{self.max_levels}"
            )

    @property
    def n_test(self) -> int:
        """Number of test subjects (subjects ``0 .. n_test-1``)."""
        if self.test_fraction == 0:
            return 0
        return min(self.subjects, max(1, round(self.test_fraction * self.subjects)))


@dataclass(frozen=True)
class LesionSpec:
    """One malignant lesion, in body-normalised coordinates.

    ``centre`` is (x / half-width, y / half-depth, z / half-height) from the body centre;
    ``radii`` are mm along x, y, z. ``contrast`` is the HU the lytic part tends to (lytic) and the
    HU added by the blastic part (blastic); mixed lesions use both (``contrast``,
    ``contrast_blastic``). ``margin`` is the width (mm) of the soft transition, ``irregularity``
    the amplitude of the boundary noise (fraction of the radius).
    """

    kind: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    contrast: float
    margin: float
    irregularity: float
    contrast_blastic: float = 0.0


@dataclass(frozen=True)
class MimicSpec:
    """One benign finding: type, body-normalised centre, radii (mm), contrast (HU) and side
    (``"top"``/``"bottom"`` endplate or ``"anterior"``/``"left"``/``"right"`` rim where it
    matters)."""

    kind: str
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    contrast: float
    side: str = ""


@dataclass(frozen=True)
class VertebraPlan:
    """One vertebra: level, labels, body size (mm), disc below, and its lesions and mimics."""

    level: str
    label: WeakLabel
    phenotype: Phenotype | None
    width: float
    depth: float
    height: float
    disc_below: float
    endplate_depth: float
    lesions: tuple[LesionSpec, ...] = ()
    mimics: tuple[MimicSpec, ...] = ()


@dataclass(frozen=True)
class ScannerPlan:
    """Acquisition of one subject: voxel size (x, y, z mm), orientation, blur, noise, streaks."""

    spacing: tuple[float, float, float]
    lps: bool
    psf_mm: float
    noise_hu: float
    streaks: int


@dataclass(frozen=True)
class SubjectPlan:
    """Everything needed to render one subject."""

    subject: str
    index: int
    seed: int
    split: Split
    phenotype: Phenotype | None
    age: float
    trabecular_hu: float
    texture_hu: float
    cortex_hu: float
    lordosis_mm: float
    scanner: ScannerPlan
    vertebrae: tuple[VertebraPlan, ...] = field(default_factory=tuple)


# Level-dependent size (mm), linearly interpolated over these anchors (T1, T12, L3, L5).
_ANCHOR_INDEX = np.array([0.0, 11.0, 14.0, 16.0])
_WIDTH = np.array([26.0, 40.0, 48.0, 50.0])
_DEPTH = np.array([15.0, 28.0, 34.0, 35.0])
_HEIGHT = np.array([14.0, 22.0, 26.0, 25.0])
_DISC = np.array([4.0, 6.0, 10.0, 11.0])


def level_size(level: str) -> tuple[float, float, float, float]:
    """Typical body width, depth, height and disc-below height (mm) of a level."""
    i = float(LEVELS.index(level))
    return tuple(  # type: ignore[return-value]
        float(np.interp(i, _ANCHOR_INDEX, a)) for a in (_WIDTH, _DEPTH, _HEIGHT, _DISC)
    )


def subject_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator of one subject (``stream`` 0 plans, 1 renders)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def subject_name(index: int) -> str:
    """Subject id, e.g. ``p0007``."""
    return f"p{index:04d}"


def _phenotype(options: PhantomOptions, index: int, rng: np.random.Generator) -> Phenotype | None:
    if index < options.n_test:
        return TEST_PHENOTYPE_CYCLE[index % len(TEST_PHENOTYPE_CYCLE)]
    if rng.random() >= options.metastatic_fraction:
        return None
    kinds = list(PHENOTYPE_WEIGHTS)
    weights = np.array([PHENOTYPE_WEIGHTS[k] for k in kinds])
    return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]


def _malignant_levels(
    levels: list[str], rng: np.random.Generator, phenotype: Phenotype | None
) -> set[str]:
    """Levels with metastases: at least one per metastatic patient, lumbar levels favoured."""
    if phenotype is None:
        return set()
    burden = rng.uniform(0.15, 0.8)
    weights = np.array([1.6 if lv.startswith("L") else 1.0 for lv in levels])
    chosen = {lv for lv, w in zip(levels, weights, strict=True) if rng.random() < burden * w / 1.6}
    if not chosen:
        chosen.add(levels[int(rng.choice(len(levels), p=weights / weights.sum()))])
    return chosen


def _inside_point(rng: np.random.Generator, spread: float = 0.55) -> tuple[float, float, float]:
    """A body-normalised point comfortably inside the body."""
    return (
        float(rng.uniform(-spread, spread)),
        float(rng.uniform(-0.55, 0.6)),
        float(rng.uniform(-0.6, 0.6)),
    )


def _lesion(kind: str, rng: np.random.Generator, on_midline: bool) -> LesionSpec:
    """A lesion whose size spans a few to several hundred mid-sagittal pixels (log-uniform)."""
    radius = float(np.exp(rng.uniform(np.log(1.6), np.log(9.0))))
    aspect = rng.uniform(0.7, 1.3, size=3)
    radii = tuple(float(radius * a) for a in aspect)
    x, y, z = _inside_point(rng)
    if on_midline:
        x = float(rng.uniform(-0.3, 0.3) * radius / 20.0)
    if kind == "lytic":
        return LesionSpec(
            kind,
            (x, y, z),
            radii,  # type: ignore[arg-type]
            contrast=float(rng.uniform(-20.0, 45.0)),
            margin=float(rng.uniform(0.3, 1.2)),
            irregularity=float(rng.uniform(0.1, 0.35)),
        )
    if kind == "blastic":
        diffuse = rng.random() < 0.3
        return LesionSpec(
            kind,
            (x, y, z),
            tuple(r * (1.4 if diffuse else 1.0) for r in radii),  # type: ignore[arg-type]
            contrast=float(rng.uniform(180.0, 400.0) if diffuse else rng.uniform(300.0, 850.0)),
            margin=float(rng.uniform(1.2, 2.5) if diffuse else rng.uniform(0.4, 1.2)),
            irregularity=float(rng.uniform(0.15, 0.4)),
        )
    return LesionSpec(
        kind,
        (x, y, z),
        tuple(r * 1.25 for r in radii),  # type: ignore[arg-type]
        contrast=float(rng.uniform(-20.0, 45.0)),
        margin=float(rng.uniform(0.4, 1.2)),
        irregularity=float(rng.uniform(0.15, 0.35)),
        contrast_blastic=float(rng.uniform(300.0, 750.0)),
    )


def _apart(new: LesionSpec, placed: list[LesionSpec], half: tuple[float, float, float]) -> bool:
    """True when ``new`` does not touch any ``placed`` lesion (bounding spheres, mm)."""
    for other in placed:
        gap = np.linalg.norm(
            [(a - b) * h for a, b, h in zip(new.centre, other.centre, half, strict=True)]
        )
        if gap < 1.15 * (max(new.radii) + max(other.radii)):
            return False
    return True


def _lesions(
    phenotype: Phenotype, rng: np.random.Generator, half: tuple[float, float, float]
) -> tuple[LesionSpec, ...]:
    """One to four separate lesions (``half``: body half-sizes, mm); the first, and most
    others, cross the mid-sagittal plane. A lesion that finds no free place is left out."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.3, 0.28, 0.22]))
    if phenotype == Phenotype.MIXED:
        kinds = ["mixed", "lytic", "blastic"]
        chosen = [kinds[int(i)] for i in rng.choice(3, size=n, p=[0.4, 0.3, 0.3])]
    else:
        chosen = [phenotype.value] * n
    placed: list[LesionSpec] = []
    for i, kind in enumerate(chosen):
        midline = i == 0 or rng.random() < MIDLINE_SHARE
        for _try in range(PLACEMENT_TRIES):
            lesion = _lesion(kind, rng, on_midline=midline)
            if _apart(lesion, placed, half):
                placed.append(lesion)
                break
    return tuple(placed)


def _mimic(kind: str, rng: np.random.Generator) -> MimicSpec:
    """One benign finding of ``kind`` with its typical size, place and contrast."""
    side = str(rng.choice(["top", "bottom"]))
    endplate_z = 1.0 if side == "top" else -1.0
    x_mid = float(rng.uniform(-0.35, 0.35))
    if kind == "bone_island":
        r = float(rng.uniform(1.2, 4.0))
        return MimicSpec(kind, _inside_point(rng, 0.4), (r, r * 0.9, r), rng.uniform(700, 1200))
    if kind == "endplate_sclerosis":
        depth = float(rng.uniform(1.5, 5.0))
        return MimicSpec(
            kind, (x_mid, float(rng.uniform(-0.3, 0.5)), endplate_z),
            (float(rng.uniform(8, 20)), float(rng.uniform(6, 16)), depth),
            float(rng.uniform(180, 450)), side,
        )  # fmt: skip
    if kind == "schmorl_node":
        r = float(rng.uniform(2.0, 4.5))
        return MimicSpec(
            kind, (x_mid, float(rng.uniform(-0.4, 0.4)), endplate_z),
            (r * 1.2, r * 1.2, r), float(rng.uniform(300, 600)), side,
        )  # fmt: skip
    if kind == "haemangioma":
        r = float(rng.uniform(4.0, 10.0))
        return MimicSpec(
            kind, _inside_point(rng, 0.35), (r, r, r * 1.2), float(rng.uniform(-30, 30))
        )
    if kind == "focal_fat":
        r = float(rng.uniform(2.5, 6.0))
        return MimicSpec(kind, _inside_point(rng, 0.4), (r, r, r), float(rng.uniform(-90, -20)))
    if kind == "rarefaction":
        r = float(rng.uniform(6.0, 12.0))
        return MimicSpec(kind, _inside_point(rng, 0.3), (r, r, r), float(rng.uniform(50, 110)))
    if kind == "osteophyte":
        side = str(rng.choice(["top", "bottom"]))
        rim = str(rng.choice(["anterior", "anterior", "left", "right"]))
        length = float(rng.uniform(2.0, 6.0))
        return MimicSpec(
            kind, (0.0, 0.0, 1.0 if side == "top" else -1.0),
            (float(rng.uniform(3, 9)), length, float(rng.uniform(1.5, 3.5))),
            float(rng.uniform(500, 900)), f"{side}-{rim}",
        )  # fmt: skip
    if kind == "basivertebral_vein":
        z = float(rng.uniform(-0.15, 0.15))
        radii = (rng.uniform(1.2, 2.5), rng.uniform(3.0, 7.0), rng.uniform(1.0, 2.2))
        return MimicSpec(kind, (0.0, -0.62, z), tuple(map(float, radii)), rng.uniform(0, 60))
    raise ValueError(f"unknown mimic type {kind!r}; known: {', '.join(MIMIC_TYPES)}")


def _mimics(rng: np.random.Generator, age: float) -> tuple[MimicSpec, ...]:
    """The benign findings of one vertebra; degenerative ones grow more common with age."""
    degenerative = {"endplate_sclerosis", "schmorl_node", "osteophyte", "rarefaction"}
    out = []
    for kind, rate in MIMIC_RATES.items():
        p = rate * (0.6 + 0.8 * (age - 40) / 45) if kind in degenerative else rate
        if rng.random() < p:
            out.append(_mimic(kind, rng))
    return tuple(out)


def plan_subject(options: PhantomOptions, index: int) -> SubjectPlan:
    """The plan of subject ``index`` (depends only on ``options.seed``, the index and
    ``options``' label settings — not on the other subjects)."""
    rng = subject_rng(options.seed, index, 0)
    split = Split.TEST if index < options.n_test else Split.TRAIN
    phenotype = _phenotype(options, index, rng)
    n_levels = int(rng.integers(options.min_levels, options.max_levels + 1))
    start = int(rng.integers(0, len(LEVELS) - n_levels + 1))
    levels = list(LEVELS[start : start + n_levels])
    malignant = _malignant_levels(levels, rng, phenotype)
    age = float(np.clip(rng.normal(66.0, 12.0), 35.0, 90.0))
    scale = float(rng.uniform(0.9, 1.1))
    vertebrae = []
    for level in levels:
        width, depth, height, disc = level_size(level)
        jitter = rng.uniform(0.95, 1.05, size=4)
        is_malignant = level in malignant
        vertebrae.append(
            VertebraPlan(
                level=level,
                label=WeakLabel.MALIGNANT if is_malignant else WeakLabel.HEALTHY,
                phenotype=phenotype if is_malignant else None,
                width=float(width * scale * jitter[0]),
                depth=float(depth * scale * jitter[1]),
                height=float(height * scale * jitter[2]),
                disc_below=float(disc * jitter[3] * rng.uniform(0.7, 1.0)),
                endplate_depth=float(rng.uniform(0.8, 2.2)),
                lesions=(
                    _lesions(phenotype, rng, (width / 2, depth / 2, height / 2))
                    if is_malignant and phenotype
                    else ()
                ),
                mimics=_mimics(rng, age),
            )
        )
    in_plane = float(rng.uniform(0.6, 0.9))
    scanner = ScannerPlan(
        spacing=(in_plane, in_plane, float(rng.uniform(0.8, 2.0))),
        lps=bool(rng.random() < 0.5),
        psf_mm=float(rng.uniform(0.35, 0.6)),
        noise_hu=float(rng.uniform(25.0, 60.0)),
        streaks=int(rng.choice([0, 0, 0, 1, 2])),
    )
    density = float(np.clip(rng.normal(235.0 - 1.9 * age, 25.0), 70.0, 210.0))
    return SubjectPlan(
        subject=subject_name(index),
        index=index,
        seed=options.seed,
        split=split,
        phenotype=phenotype,
        age=age,
        trabecular_hu=density,
        texture_hu=float(rng.uniform(40.0, 80.0)),
        cortex_hu=float(rng.uniform(550.0, 850.0)),
        lordosis_mm=float(rng.uniform(-6.0, 6.0)),
        scanner=scanner,
        vertebrae=tuple(vertebrae),
    )


def plan_dataset(options: PhantomOptions) -> list[SubjectPlan]:
    """Plans of all subjects, test subjects first."""
    return [plan_subject(options, i) for i in range(options.subjects)]
