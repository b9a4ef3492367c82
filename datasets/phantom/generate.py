"""Render planned subjects into :class:`~wsbench.data.volumes.SubjectVolumes` and write datasets.

A subject is rendered on its acquisition grid (in-plane 0.6–0.9 mm, slices 0.8–2.0 mm, RAS or
LPS). Partial volume is modelled by occupancy ramps as wide as the voxel along each axis (so thick
slices blur endplates more than walls). Order: soft tissue, discs, bone, benign mimics, lesions
(which override mimics), then blur, noise and streaks. Masks are the shapes' interiors at voxel
centres.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

import numpy as np

from wsbench.data.nifti import bids_folder, bids_stem, write_nifti_gz
from wsbench.data.volumes import SubjectVolumes, VertebraLabel
from wsbench.datasets.inhouse.layout import write_inhouse
from wsbench.datasets.phantom.anatomy import (
    Canvas,
    field_of_view,
    paint_discs,
    paint_soft_tissue,
    paint_vertebra,
    place_vertebrae,
)
from wsbench.datasets.phantom.fields import Fields
from wsbench.datasets.phantom.lesions import paint_lesion
from wsbench.datasets.phantom.mimics import paint_mimic
from wsbench.datasets.phantom.plan import PhantomOptions, SubjectPlan, plan_dataset, subject_rng
from wsbench.datasets.phantom.scanner import add_noise, add_streaks, blur, to_int16
from wsbench.models.store import digest

T = TypeVar("T")

AfterWrite = Callable[[Path], object]
"""Run in the rendering process on each subject's freshly written in-house folder (e.g. to
preprocess it there, in parallel); must be picklable."""

GENERATOR_VERSION = "3"
"""Bumped whenever the generator's output changes; part of every phantom cache digest."""


def render_subject(plan: SubjectPlan) -> SubjectVolumes:
    """The subject's CT (int16 HU), vert, subreg, lesion masks and ``extra["mimic"]``."""
    rng = subject_rng(plan.seed, plan.index, 1)
    fields = Fields.make(rng)
    vertebrae = place_vertebrae(plan)
    fov = field_of_view(vertebrae)
    sx, sy, sz = plan.scanner.spacing
    x = np.arange(fov.x[0], fov.x[1], sx)
    y = np.arange(fov.y[0], fov.y[1], sy)
    z = np.arange(fov.z[0], fov.z[1], sz)
    canvas = Canvas.empty(x, y, z)
    paint_soft_tissue(canvas, vertebrae, fields, plan.age)
    paint_discs(canvas, vertebrae, fields)
    sites = [paint_vertebra(canvas, g, fields, plan) for g in vertebrae]
    for site, g in zip(sites, vertebrae, strict=True):
        for mimic in g.plan.mimics:
            paint_mimic(site, mimic)
    for site, g in zip(sites, vertebrae, strict=True):
        for lesion in g.plan.lesions:
            paint_lesion(site, lesion)
    ct = blur(canvas.ct, plan.scanner)
    add_noise(ct, plan.scanner, rng)
    add_streaks(ct, x, y, plan.scanner, rng)
    arrays = {
        "ct": to_int16(ct),
        **{name: getattr(canvas, name) for name in ("vert", "subreg", "lesion", "mimic")},
    }
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = (x[0], y[0], z[0])
    if plan.scanner.lps:
        arrays = {n: np.ascontiguousarray(a[::-1, ::-1, :]) for n, a in arrays.items()}
        affine[:2, :2] *= -1
        affine[:2, 3] = (x[-1], y[-1])
    return SubjectVolumes(
        subject=plan.subject,
        ct=arrays["ct"],
        affine=affine,
        vert=arrays["vert"],
        vertebrae=[VertebraLabel(v.level, v.label, v.phenotype) for v in plan.vertebrae],
        subreg=arrays["subreg"],
        lesion=arrays["lesion"],
        split=plan.split,
        extra={"mimic": arrays["mimic"]},
    )


def options_digest(options: PhantomOptions) -> str:
    """Digest of the generator version and options (names the cached phantom folder)."""
    return digest({"generator": GENERATOR_VERSION, "options": asdict(options)})


def write_mimic_map(root: Path, subject: SubjectVolumes) -> None:
    """``derivatives/.../sub-<S>_seg-mimic_msk.nii.gz`` (benign findings; not read by adapters)."""
    stem = bids_stem(subject.subject, subject.session)
    path = bids_folder(root, "derivatives", subject.subject, subject.session)
    write_nifti_gz(path / f"{stem}_seg-mimic_msk.nii.gz", subject.extra["mimic"], subject.affine)


def _write_one(job: tuple[SubjectPlan, str, AfterWrite | None]) -> str:
    """Render one subject, write it in the in-house layout into its own folder, then run the
    job's :data:`AfterWrite` on that folder."""
    plan, folder, after = job
    subject = render_subject(plan)
    write_inhouse(Path(folder), [subject])
    write_mimic_map(Path(folder), subject)
    if after is not None:
        after(Path(folder))
    return plan.subject


def _merge(parts: Path, root: Path, order: Iterable[str]) -> None:
    """Move per-subject folders into one in-house tree with one ``labels.csv`` (in order)."""
    lines: list[str] = []
    header = ""
    for name in order:
        part = parts / name
        for tree in ("rawdata", "derivatives"):
            for item in sorted((part / tree).iterdir()):
                target = root / tree / item.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(item, target)
        text = (part / "labels.csv").read_text(encoding="utf-8").splitlines()
        header = text[0]
        lines += text[1:]
    (root / "labels.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")


def write_phantom(
    root: Path,
    options: PhantomOptions,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    after: AfterWrite | None = None,
) -> None:
    """Generate ``options`` and write it in the in-house layout under ``root`` (which must not
    exist yet), rendering subjects in ``workers`` processes, each subject followed by ``after``
    on its own folder. Same options → same bytes."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; choose a new folder")
    plans = plan_dataset(options)
    parts = root / ".parts"
    parts.mkdir(parents=True)
    jobs = [(plan, str(parts / plan.subject), after) for plan in plans]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for done, _ in enumerate(pool.map(_write_one, jobs, chunksize=1), start=1):
                if progress is not None:
                    progress(done, len(jobs))
    else:
        for done, job in enumerate(jobs, start=1):
            _write_one(job)
            if progress is not None:
                progress(done, len(jobs))
    _merge(parts, root, [p.subject for p in plans])
    shutil.rmtree(parts)


def build_cached(
    cache: Path,
    options: PhantomOptions,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    after: AfterWrite | None = None,
) -> Path:
    """The phantom folder ``cache/<digest>``: reused when present, else written atomically
    (into a temporary sibling folder, then renamed) by :func:`write_phantom`."""
    final = Path(cache) / options_digest(options)
    if (final / "labels.csv").is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_phantom(tmp, options, workers, progress, after)
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "labels.csv").is_file():
            raise
        shutil.rmtree(tmp)
    return final


def default_workers() -> int:
    """Worker processes for rendering: the CPUs available to this process, at most 2."""
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))
