"""How visible are the phantom's lesions? Contrast against the bone around them, per polarity.

Usage:

    python benchmarks/experiment.py phantom-lesion-contrast [--split train] [--ring-px 4]

On the mid-sagittal slice of every malignant vertebra of the prepared default phantom (the
split's), each polarity's lesion pixels inside the body (at least 10) are compared with a ring
around them: body pixels within ``ring-px`` pixels of the lesion that belong to no lesion. Per
polarity it prints percentiles of the contrast (mean HU of the lesion minus mean HU of the ring;
negative = darker), the median lesion area and the median SD of the ring's HU (texture and
noise), i.e. what a detector has to see a lesion against. Lesion masks are read only here; no
method sees them.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import typer
from scipy.ndimage import binary_dilation

from wsbench.contract import BLASTIC, LYTIC, PreparedVertebra, Split

from .common import MID, prepared

MIN_PX = 10
PERCENTILES = (10, 25, 50, 75, 90)

app = typer.Typer(add_completion=False, help=__doc__)


def lesion_contrast(
    vertebra: PreparedVertebra, label: int, ring_px: int
) -> tuple[float, int, float] | None:
    """``(lesion − ring mean HU, lesion pixels, ring HU SD)`` of one polarity on the mid slice;
    ``None`` when the lesion or its ring has fewer than :data:`MIN_PX` pixels."""
    image, body = vertebra.slices[MID], vertebra.body[MID].astype(bool)
    lesions = vertebra.lesions[MID]
    lesion = (lesions == label) & body
    ring = binary_dilation(lesion, iterations=ring_px) & body & (lesions == 0)
    if lesion.sum() < MIN_PX or ring.sum() < MIN_PX:
        return None
    contrast = float(image[lesion].mean() - image[ring].mean())
    return contrast, int(lesion.sum()), float(image[ring].std())


@app.command()
def main(
    split: Annotated[Split, typer.Option(help="split of the dataset")] = Split.TRAIN,
    ring_px: Annotated[int, typer.Option(min=1, help="ring width around a lesion (px)")] = 4,
    dataset: Annotated[str, typer.Option(help="registered dataset with lesion masks")] = "phantom",
) -> None:
    """Print lesion contrast percentiles per polarity."""
    data = prepared(dataset)
    malignant = [v for v in data.split(split) if v.lesions is not None and v.phenotype]
    for label, name in ((LYTIC, "lytic"), (BLASTIC, "blastic")):
        rows = [r for v in malignant if (r := lesion_contrast(v, label, ring_px)) is not None]
        if not rows:
            print(f"{name}: no lesion of at least {MIN_PX} px on a mid slice")
            continue
        contrast, area, ring_sd = (np.array(column) for column in zip(*rows, strict=True))
        pct = " / ".join(f"{v:+.0f}" for v in np.percentile(contrast, PERCENTILES))
        levels = "/".join(map(str, PERCENTILES))
        print(
            f"{name}: {len(rows)} vertebrae; contrast HU (p{levels}) {pct}; median area "
            f"{np.median(area):.0f} px; median ring SD {np.median(ring_sd):.0f} HU"
        )
