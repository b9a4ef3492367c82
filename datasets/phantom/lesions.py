"""Malignant lesion models (the ground truth): lytic, blastic and mixed (interwoven).

A lesion is an irregular blob (ellipsoid whose boundary is perturbed by a smooth random field)
inside the vertebral body. Its mask is where the perturbed normalised radius is below 1; its
intensity blends in over ``margin`` mm around that boundary (sharp for most lytic lesions, ill
defined for blastic ones). Lytic tissue replaces bone (cortex included: large lytic lesions break
the cortex); blastic tissue adds density with a nodular texture.
"""

from __future__ import annotations

import numpy as np

from wsbench.contract import BLASTIC, LYTIC
from wsbench.datasets.phantom.fields import occupancy, smoothstep
from wsbench.datasets.phantom.plan import LesionSpec
from wsbench.datasets.phantom.site import Site


def normalised_radius(
    site: Site, box: tuple[slice, slice, slice], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    """Ellipsoidal normalised radius (1 on the surface) on a box of the site."""
    x, y, z = site.coords(box)
    q2 = sum(((c - o) / r) ** 2 for c, o, r in zip((x, y, z), centre, radii, strict=True))
    return np.sqrt(q2)


def paint_lesion(site: Site, spec: LesionSpec) -> int:
    """Render one lesion into the site; returns the number of voxels added to the lesion mask."""
    centre = site.frame.world(spec.centre)
    reach = max(spec.radii) * (1.0 + spec.irregularity) + 2.0 * spec.margin + 1.0
    box = site.box(centre, (reach, reach, reach))
    x, y, z = site.coords(box)
    mean_r = float(np.mean(spec.radii))
    q = normalised_radius(site, box, centre, spec.radii)
    q = q + spec.irregularity * site.fields.rough.sample(x, y, z)
    in_body = site.sd_body[box] < 0
    weight = smoothstep(((1.0 - q) * mean_r / spec.margin) + 0.5) * occupancy(
        site.sd_body[box], site.voxel_mm
    )
    inside = (q < 1.0) & in_body
    ct = site.ct[box]
    fine = site.fields.fine.sample(x, y, z)
    texture = site.fields.texture.sample(x, y, z)
    if spec.kind == "lytic":
        ct += weight * (spec.contrast + 12.0 * texture - ct)
        labels = np.where(inside, LYTIC, 0)
    elif spec.kind == "blastic":
        ct += weight * spec.contrast * (0.8 + 0.2 * np.clip(fine, -2.0, 2.0))
        labels = np.where(inside, BLASTIC, 0)
    elif spec.kind == "mixed":
        blastic_share = smoothstep(fine * 1.5 + 0.5)
        ct += weight * (1.0 - blastic_share) * (spec.contrast + 12.0 * texture - ct)
        ct += weight * blastic_share * spec.contrast_blastic
        labels = np.where(inside, np.where(fine > 0.0, BLASTIC, LYTIC), 0)
    else:
        raise ValueError(f"unknown lesion kind {spec.kind!r}; known: lytic, blastic, mixed")
    lesion = site.lesion[box]
    new = labels > 0
    lesion[new] = labels[new]
    site.mimic[box][new] = 0
    return int(new.sum())
