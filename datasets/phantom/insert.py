"""Insert the phantom's lesion and mimic models into real vertebrae (``wsbench phantom insert``
and ``--dataset realinsert``).

Every source subject (a CT with its vertebra mask, found anywhere under a folder) is reoriented
to RAS (an exact axis permutation/flip, no resampling). Vertebrae cut by the scan's edge are left
out (unless kept on request) and each remaining vertebra's body is taken from the subregion mask
(49 ∪ 50) or, without one, derived from the vertebra mask. Each of ``copies`` independent copies
of a subject gets its own phantom plan (label, phenotype, lesions, mimics; copy ``k`` has the
patient phenotype ``TEST_PHENOTYPE_CYCLE[k % 4]``), painted with the phantom's own models, and
is written as one subject of the in-house layout with its exact lesion mask. All copies of one
source subject share its split (:func:`source_splits`).
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from wsbench.contract import Scope, Skipped, Split, WeakLabel
from wsbench.data.preprocess import derive_body, lacks_body
from wsbench.data.splits import DEFAULT_SEED, DEFAULT_TEST_FRACTION, subject_draw
from wsbench.data.volumes import BODY_SUBREGIONS, LEVEL_NAMES, SubjectVolumes, VertebraLabel
from wsbench.datasets.inhouse.layout import SubjectFiles, find_subjects, write_inhouse
from wsbench.datasets.phantom.anatomy import CORPUS
from wsbench.datasets.phantom.fields import Fields
from wsbench.datasets.phantom.generate import _merge, write_mimic_map
from wsbench.datasets.phantom.lesions import paint_lesion
from wsbench.datasets.phantom.mimics import paint_mimic
from wsbench.datasets.phantom.plan import LEVELS, PhantomOptions, plan_subject, subject_rng
from wsbench.datasets.phantom.site import BodyFrame, Site
from wsbench.files import digest
from wsbench.models.store import sha256_file

INSERT_VERSION = "2"
"""Bumped whenever the inserted output changes; part of every realinsert cache digest."""

CUT_VOLUME_FRACTION = 0.5
"""A vertebra whose mask holds less than this fraction of the median volume of its neighbouring
levels (those not touching the scan's edge) is taken as partial (cut off)."""

DEFAULT_COPIES = 8
"""Copies per source subject: two of each patient phenotype (blastic, lytic, mixed, none)."""

SKIPPED_FILE = "skipped.csv"
"""What the insertion left out (columns where, reason, scope), beside ``labels.csv``."""


@dataclass(frozen=True)
class InsertOptions:
    """What an inserted dataset is made of (all of it is part of the cache digest).

    ``copies`` independent copies per source subject; ``seed`` of the plans and of the split;
    ``test_fraction`` of the source subjects tested (:func:`source_splits`); ``keep_cut`` keeps
    vertebrae cut by the scan's edge.
    """

    copies: int = DEFAULT_COPIES
    seed: int = DEFAULT_SEED
    test_fraction: float = DEFAULT_TEST_FRACTION
    keep_cut: bool = False

    def __post_init__(self) -> None:
        if self.copies < 1:
            raise ValueError(f"option copies={self.copies} must be ≥ 1")
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"option test_fraction={self.test_fraction} must lie between 0 and 1")


@dataclass
class SourceScan:
    """One real subject in RAS: CT (HU), vertebra mask, subregion mask (given, or the derived
    bodies as ``CORPUS``), the vertebra numbers to insert into, and what was left out."""

    files: SubjectFiles
    ct: np.ndarray
    affine: np.ndarray
    vert: np.ndarray
    subreg: np.ndarray
    numbers: list[int]
    skipped: list[Skipped] = field(default_factory=list)


def as_ras(image: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine of ``image`` reoriented to RAS (raises on an oblique affine)."""
    ras = nib.as_closest_canonical(image)
    affine = np.asarray(ras.affine, float)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])), atol=1e-3):
        raise ValueError(f"{image.get_filename()}: oblique affine; resample it to RAS first")
    return np.asarray(ras.dataobj), affine


def cut_reason(vert: np.ndarray, number: int, volumes: dict[int, int]) -> str | None:
    """Why vertebra ``number`` is cut by the scan's edge (``None`` when it is not): its mask
    touches the volume's border, or it holds under :data:`CUT_VOLUME_FRACTION` of the median
    volume of its uncut neighbouring levels (``volumes``: voxels per uncut vertebra)."""
    box = ndimage.find_objects((vert == number).astype(np.uint8))[0]
    edges = [
        f"{'RAS'[axis]} {'first' if b.start == 0 else 'last'} slice"
        for axis, (b, n) in enumerate(zip(box, vert.shape, strict=True))
        if b.start == 0 or b.stop == n
    ]
    if edges:
        return f"its mask touches the scan's edge ({', '.join(edges)}): the vertebra is cut"
    neighbours = [volumes[n] for n in (number - 1, number + 1) if n in volumes]
    own = int(np.count_nonzero(vert[box] == number))
    if neighbours and own < CUT_VOLUME_FRACTION * float(np.median(neighbours)):
        return (
            f"its mask holds {own} voxels, under {CUT_VOLUME_FRACTION:g}× its neighbours' "
            f"median {float(np.median(neighbours)):.0f}: a partial vertebra"
        )
    return None


def derived_body(vertebra: np.ndarray, spacing: Sequence[float]) -> np.ndarray | None:
    """The body of a whole-vertebra mask on a RAS grid by :func:`derive_body` (which works on a
    posterior-superior-right grid), ``None`` when :func:`lacks_body` finds no body."""
    psr = np.transpose(vertebra, (1, 2, 0))[::-1]
    in_plane = float(np.sqrt(spacing[0] * spacing[1]))
    if lacks_body(psr, float(spacing[0])):
        return None
    return np.transpose(derive_body(psr, in_plane)[::-1], (2, 0, 1))


def load_source(files: SubjectFiles, keep_cut: bool) -> SourceScan:
    """A source subject in RAS with its usable vertebrae (cut ones left out unless
    ``keep_cut``) and bodies; what is left out becomes :class:`Skipped` records."""
    ct, affine = as_ras(nib.load(files.ct))
    vert = as_ras(nib.load(files.masks["vert"]))[0].astype(np.uint8)
    given = "subreg" in files.masks
    subreg = (
        as_ras(nib.load(files.masks["subreg"]))[0].astype(np.uint8)
        if given
        else np.zeros(vert.shape, np.uint8)
    )
    spacing = np.abs(np.diag(affine)[:3])
    skipped = []
    present = [int(n) for n in np.unique(vert) if n]
    for number in present:
        if number not in LEVEL_NAMES:
            reason = f"vertebra mask label {number} is not a VerSe level; left out"
            skipped.append(Skipped(f"{files.ct} label {number}", reason))
    levels = [n for n in present if n in LEVEL_NAMES]
    cuts = {n: cut_reason(vert, n, {}) for n in levels}
    volumes = {n: int(np.count_nonzero(vert == n)) for n in levels if cuts[n] is None}
    numbers = []
    for number in levels:
        where = f"{files.ct} {LEVEL_NAMES[number]}"
        reason = cuts[number] or cut_reason(vert, number, volumes)
        if reason and not keep_cut:
            skipped.append(Skipped(where, f"{reason}; left out (option keep_cut=true keeps it)"))
            continue
        box = ndimage.find_objects((vert == number).astype(np.uint8))[0]
        if given:
            has_body = np.isin(subreg[box][vert[box] == number], BODY_SUBREGIONS).any()
            reason = None if has_body else "no vertebral-body voxels (subregions 49 ∪ 50)"
        else:
            body = derived_body(vert[box] == number, spacing)
            reason = None if body is not None else "no vertebral body in its mask to derive"
            if body is not None:
                subreg[box][body] = CORPUS
        if reason:
            skipped.append(Skipped(where, f"{reason}; left out"))
            continue
        numbers.append(number)
    vert[~np.isin(vert, numbers)] = 0
    return SourceScan(files, ct.astype(np.float32), affine, vert, subreg, numbers, skipped)


def body_site(
    ct: np.ndarray,
    arrays: dict[str, np.ndarray],
    affine: np.ndarray,
    number: int,
    fields: Fields,
) -> Site | None:
    """A :class:`Site` over one real vertebra (``None`` when it has no body voxels)."""
    body = (arrays["vert"] == number) & np.isin(arrays["subreg"], BODY_SUBREGIONS)
    if not body.any():
        return None
    spacing = np.abs(np.diag(affine)[:3])
    box = tuple(
        slice(max(0, s.start - 6), s.stop + 6)
        for s in ndimage.find_objects(body.astype(np.uint8))[0]
    )
    sub = body[box]
    inside = ndimage.distance_transform_edt(sub, sampling=spacing)
    outside = ndimage.distance_transform_edt(~sub, sampling=spacing)
    sd = (outside - inside).astype(np.float32)
    coords = [affine[i, 3] + affine[i, i] * np.arange(box[i].start, box[i].start + sub.shape[i])
              for i in range(3)]  # fmt: skip
    idx = np.argwhere(sub)
    world = np.stack([coords[i][idx[:, i]] for i in range(3)], axis=1)
    lo, hi = world.min(axis=0), world.max(axis=0)
    centre = (lo + hi) / 2
    half = (hi - lo) / 2
    frame = BodyFrame(yc=centre[1], zc=centre[2], a=half[0], b=half[1], h=half[2], xc=centre[0])
    trabecular = float(np.median(ct[box][sd < -2.0])) if (sd < -2.0).any() else 150.0
    return Site(
        x=coords[0][:, None, None],
        y=coords[1][None, :, None],
        z=coords[2][None, None, :],
        ct=ct[box],
        lesion=arrays["lesion"][box],
        mimic=arrays["mimic"][box],
        vert=arrays["vert"][box],
        subreg=arrays["subreg"][box],
        sd_body=sd,
        frame=frame,
        number=number,
        voxel_mm=float(spacing.max()),
        trabecular_hu=trabecular,
        cortex_hu=float(np.percentile(ct[box][sub], 95)),
        fields=fields,
    )


def copy_name(subject: str, copy: int) -> str:
    """Subject id of copy ``copy`` of a source subject, e.g. ``diffdrrc03``."""
    return f"{subject}c{copy:02d}"


def plan_seed(seed: int, source: SubjectFiles) -> int:
    """The plan seed of one source subject: its copies' plans differ from other sources'."""
    return int(digest(["realinsert-plan", seed, source.subject, source.session], length=8), 16)


def insert_copy(source: SourceScan, copy: int, options: InsertOptions) -> SubjectVolumes:
    """Copy ``copy`` of a source subject with lesions and mimics inserted (split unset); a
    vertebra is malignant when lesion voxels were painted into its body (a planned lesion can
    miss a small body), healthy otherwise.

    Voxels outside the vertebra masks keep their source value: the models' partial-volume ramp
    (half the largest voxel side) would otherwise reach into tissue against the body, such as
    an enhanced vessel."""
    n_plan = max(1, min(len(source.numbers), len(LEVELS)))
    phantom = PhantomOptions(
        subjects=options.copies,
        seed=plan_seed(options.seed, source.files),
        test_fraction=1.0,
        min_levels=n_plan,
        max_levels=n_plan,
    )
    plan = plan_subject(phantom, copy)
    fields = Fields.make(subject_rng(phantom.seed, copy, 1))
    ct = source.ct.copy()
    arrays = {
        "vert": source.vert.copy(),
        "subreg": source.subreg.copy(),
        "lesion": np.zeros(ct.shape, np.uint8),
        "mimic": np.zeros(ct.shape, np.uint8),
    }
    labels = []
    for i, number in enumerate(source.numbers):
        vplan = plan.vertebrae[i % len(plan.vertebrae)]
        site = body_site(ct, arrays, source.affine, number, fields)
        if site is None:
            continue
        for mimic in vplan.mimics:
            paint_mimic(site, mimic)
        painted = sum(paint_lesion(site, lesion) for lesion in vplan.lesions)
        phenotype = vplan.phenotype if painted else None
        label = WeakLabel.MALIGNANT if painted else WeakLabel.HEALTHY
        labels.append(VertebraLabel(LEVEL_NAMES[number], label, phenotype))
    inside = np.where(arrays["vert"] > 0, ct, source.ct)
    return SubjectVolumes(
        subject=copy_name(source.files.subject, copy),
        session=source.files.session,
        ct=np.clip(np.rint(inside), -1024, 3071).astype(np.int16),
        affine=source.affine,
        vert=arrays["vert"],
        vertebrae=labels,
        subreg=arrays["subreg"],
        lesion=arrays["lesion"],
        extra={"mimic": arrays["mimic"]},
    )


def source_splits(subjects: Sequence[str], seed: int, test_fraction: float) -> dict[str, Split]:
    """Split of each source subject: the ``n_test`` subjects with the lowest
    :func:`~wsbench.data.splits.subject_draw` are tested, ``n_test = round(test_fraction · n)``
    held to 1 … n − 1 when there are two subjects or more (so both splits are non-empty) and
    0 < ``test_fraction`` < 1; one subject alone is tested unless ``test_fraction`` is 0."""
    ranked = sorted(set(subjects), key=lambda s: (subject_draw(s, seed), s))
    n = len(ranked)
    n_test = round(test_fraction * n)
    if 0.0 < test_fraction < 1.0:
        n_test = min(max(n_test, 1), max(n - 1, 1))
    return {s: Split.TEST if i < n_test else Split.TRAIN for i, s in enumerate(ranked)}


def find_sources(root: Path) -> tuple[list[SubjectFiles], list[Skipped]]:
    """Source subjects anywhere under ``root`` (in-house file names; see
    :func:`~wsbench.datasets.inhouse.layout.find_subjects`); ``FileNotFoundError`` when none."""
    subjects, skipped = find_subjects(root, anywhere=True)
    if not subjects:
        raise FileNotFoundError(
            f"no usable subject (sub-*_ct.nii.gz with a sub-*_seg-vert_msk.nii.gz) under {root}"
        )
    return subjects, skipped


def source_digest(root: Path, subjects: Sequence[SubjectFiles], options: InsertOptions) -> str:
    """Digest of the insertion version, the options and every source file's path (relative to
    ``root``) and content: it names the cached output folder."""
    files = [
        (str(path.relative_to(root)), sha256_file(path)) for s in subjects for _, path in s.files()
    ]
    return digest({"insert": INSERT_VERSION, "options": asdict(options), "files": sorted(files)})


@lru_cache(maxsize=1)
def _cached_source(
    subject: str, session: str, ct: Path, masks: tuple[tuple[str, Path], ...], keep_cut: bool
) -> SourceScan:
    """:func:`load_source`, kept for the next copy of the same subject in this process."""
    return load_source(SubjectFiles(subject, session, ct, dict(masks)), keep_cut)


def _write_copy(job: tuple[SubjectFiles, int, InsertOptions, str, str]) -> list[Skipped]:
    """Insert one copy, write it (in-house layout, mimic map) into its own folder and return
    the source's skipped records (copy 0 only, so each is reported once)."""
    files, copy, options, split, folder = job
    masks = tuple(sorted(files.masks.items()))
    source = _cached_source(files.subject, files.session, files.ct, masks, options.keep_cut)
    volumes = insert_copy(source, copy, options)
    volumes.split = Split(split)
    write_inhouse(Path(folder), [volumes])
    write_mimic_map(Path(folder), volumes)
    return source.skipped if copy == 0 else []


def write_skipped(path: Path, skipped: Sequence[Skipped]) -> None:
    """``skipped.csv``: one row per left-out vertebra or file."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["where", "reason", "scope"])
        writer.writerows([s.where, s.reason, s.scope.value] for s in skipped)


def read_skipped(path: Path) -> list[Skipped]:
    """The records :func:`write_skipped` wrote."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [Skipped(r["where"], r["reason"], Scope(r["scope"])) for r in csv.DictReader(handle)]


def insert_dataset(
    source: Path,
    out: Path,
    options: InsertOptions = InsertOptions(),
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Insert lesions and mimics into ``options.copies`` copies of every subject found under
    ``source`` and write them to ``out`` (must not exist) in the in-house layout, with
    ``skipped.csv``; copies are made in ``workers`` processes. Returns the subjects written."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder")
    subjects, skipped = find_sources(Path(source))
    splits = source_splits([s.subject for s in subjects], options.seed, options.test_fraction)
    parts = out / ".parts"
    parts.mkdir(parents=True)
    jobs = [
        (files, copy, options, splits[files.subject].value, str(parts / f"{i}-{copy}"))
        for i, files in enumerate(subjects)
        for copy in range(options.copies)
    ]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for done, result in enumerate(pool.map(_write_copy, jobs, chunksize=1), start=1):
                results.append(result)
                if progress is not None:
                    progress(done, len(jobs))
    else:
        results = []
        for done, job in enumerate(jobs, start=1):
            results.append(_write_copy(job))
            if progress is not None:
                progress(done, len(jobs))
    _merge(parts, out, [Path(job[4]).name for job in jobs])
    shutil.rmtree(parts)
    write_skipped(out / SKIPPED_FILE, skipped + [s for found in results for s in found])
    return [copy_name(files.subject, copy) for files, copy, *_ in jobs]
