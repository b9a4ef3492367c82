"""Insert the phantom's lesion and mimic models into real vertebrae of an in-house dataset.

Each subject's CT and masks are reoriented to RAS (an exact axis permutation/flip, no
resampling); every vertebra with a body (subregions 49 ∪ 50) gets a plan drawn exactly as for the
phantom (label, phenotype, lesions, mimics), its lesions and mimics are painted with the same
models, and the result is written in the in-house layout with the exact lesion mask.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from wsbench.contract import Split
from wsbench.data.volumes import BODY_SUBREGIONS, LEVEL_NAMES, SubjectVolumes, VertebraLabel
from wsbench.datasets.inhouse.layout import find_subjects, write_inhouse
from wsbench.datasets.phantom.fields import Fields
from wsbench.datasets.phantom.generate import write_mimic_map
from wsbench.datasets.phantom.lesions import paint_lesion
from wsbench.datasets.phantom.mimics import paint_mimic
from wsbench.datasets.phantom.plan import PhantomOptions, plan_subject, subject_rng
from wsbench.datasets.phantom.site import BodyFrame, Site


def as_ras(image: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine of ``image`` reoriented to RAS (raises on an oblique affine)."""
    ras = nib.as_closest_canonical(image)
    affine = np.asarray(ras.affine, float)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])), atol=1e-3):
        raise ValueError(f"{image.get_filename()}: oblique affine; resample it to RAS first")
    return np.asarray(ras.dataobj), affine


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


def insert_subject(files, index: int, options: PhantomOptions) -> SubjectVolumes:  # type: ignore[no-untyped-def]
    """Lesions and mimics inserted into one real subject (``files``: in-house subject files)."""
    if "subreg" not in files.masks:
        raise ValueError(f"{files.where}: insert needs a subregion mask (seg-subreg or seg-spine)")
    ct_data, affine = as_ras(nib.load(files.ct))
    ct = ct_data.astype(np.float32)
    arrays = {
        "vert": as_ras(nib.load(files.masks["vert"]))[0].astype(np.uint8),
        "subreg": as_ras(nib.load(files.masks["subreg"]))[0].astype(np.uint8),
    }
    arrays["lesion"] = np.zeros(ct.shape, np.uint8)
    arrays["mimic"] = np.zeros(ct.shape, np.uint8)
    plan = plan_subject(options, index)
    fields = Fields.make(subject_rng(options.seed, index, 1))
    numbers = [n for n in sorted(np.unique(arrays["vert"]).tolist()) if n in LEVEL_NAMES]
    labels = []
    for number, vplan in zip(numbers, _cycle(plan.vertebrae, len(numbers)), strict=True):
        site = body_site(ct, arrays, affine, number, fields)
        if site is None:
            continue
        for mimic in vplan.mimics:
            paint_mimic(site, mimic)
        for lesion in vplan.lesions:
            paint_lesion(site, lesion)
        labels.append(VertebraLabel(LEVEL_NAMES[number], vplan.label, vplan.phenotype))
    return SubjectVolumes(
        subject=files.subject,
        session=files.session,
        ct=np.clip(np.rint(ct), -1024, 3071).astype(np.int16),
        affine=affine,
        vert=arrays["vert"],
        vertebrae=labels,
        subreg=arrays["subreg"],
        lesion=arrays["lesion"],
        split=plan.split if options.test_fraction < 1 else Split.TEST,
        extra={"mimic": arrays["mimic"]},
    )


def _cycle(items, n: int):  # type: ignore[no-untyped-def]
    """``n`` items taken cyclically."""
    return [items[i % len(items)] for i in range(n)]


def insert_dataset(source: Path, out: Path, seed: int = 0) -> list[str]:
    """Insert lesions and mimics into every subject of the in-house folder ``source`` and write
    the result to ``out`` (must not exist); returns the subjects written. All source subjects
    are test subjects; lesion plans follow the phantom's test-patient cycle."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new folder")
    subjects, _ = find_subjects(Path(source))
    if not subjects:
        raise FileNotFoundError(f"no usable subjects (CT + vert mask) in {source}")
    options = PhantomOptions(subjects=len(subjects), seed=seed, test_fraction=1.0)
    written = [insert_subject(files, index, options) for index, files in enumerate(subjects)]
    write_inhouse(out, written)
    for volumes in written:
        write_mimic_map(out, volumes)
    return [v.subject for v in written]
