"""Training helpers shared by the learned methods (classifier, diffusion autoencoder).

* :func:`augmentations` — the seeded MONAI 2D augmentation pipeline of paper Table 3;
* :func:`sample_slices` — one random slice of the central five per vertebra, in network units;
* :func:`subject_holdout` — a seeded validation split by subject;
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Compose, RandFlip, RandGaussianNoise, RandRotate, RandZoom
from monai.utils import convert_to_tensor

from wsbench.contract import TrainingVertebra
from wsbench.data.intensity import hu_to_unit

AUGMENT_PROB = 0.5
ROTATION_DEG = 33.0
ZOOM_RANGE = (0.85, 1.15)
NOISE_STD = 0.015


def augmentations(seed: int) -> Compose:
    """Paper Table 3 augmentations for one ``(1, H, W)`` slice in network units, seeded.

    Each transform fires with p = 0.5: in-plane rotation within ±33° (border padding), flip of
    the image's horizontal (last) axis, zoom 0.85–1.15 (size kept), Gaussian noise μ = 0,
    σ = 0.015. The same seed gives the same sequence of augmented slices.
    """
    angle = math.radians(ROTATION_DEG)
    transform = Compose(
        [
            RandRotate(range_x=angle, prob=AUGMENT_PROB, keep_size=True, padding_mode="border"),
            RandFlip(prob=AUGMENT_PROB, spatial_axis=1),
            RandZoom(
                prob=AUGMENT_PROB,
                min_zoom=ZOOM_RANGE[0],
                max_zoom=ZOOM_RANGE[1],
                keep_size=True,
                padding_mode="edge",
            ),
            RandGaussianNoise(prob=AUGMENT_PROB, mean=0.0, std=NOISE_STD),
        ],
        lazy=False,
    )
    transform.set_random_state(seed=seed)
    return transform


def sample_slices(vertebrae: Sequence[TrainingVertebra], rng: np.random.Generator) -> np.ndarray:
    """One slice per vertebra drawn uniformly from its central five, as ``(N, 1, H, W)`` float32.

    Intensities go through :func:`wsbench.data.intensity.hu_to_unit`. All slices must share one
    shape (the 64³ crop of the preprocessing); a mismatch raises ValueError naming the vertebra.
    """
    if not vertebrae:
        raise ValueError("sample_slices got no vertebrae")
    shape = vertebrae[0].slices.shape[1:]
    picks = rng.integers(0, [v.slices.shape[0] for v in vertebrae])
    out = np.empty((len(vertebrae), 1, *shape), np.float32)
    for row, (vertebra, pick) in enumerate(zip(vertebrae, picks, strict=True)):
        if vertebra.slices.shape[1:] != shape:
            raise ValueError(
                f"vertebra {vertebra.key.id} has slices of shape {vertebra.slices.shape[1:]}, "
                f"expected {shape} like the others; re-prepare the dataset"
            )
        out[row, 0] = hu_to_unit(vertebra.slices[pick])
    return out


def augment_batch(batch: np.ndarray, transform: Compose) -> torch.Tensor:
    """Apply ``transform`` to every ``(1, H, W)`` item of a ``(N, 1, H, W)`` batch."""
    items = [convert_to_tensor(transform(item), track_meta=False) for item in batch]
    return torch.stack(items).float()


def subject_holdout(
    vertebrae: Sequence[TrainingVertebra], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``: a seeded ``fraction`` of subjects is held out whole.

    At least one subject stays on each side when there are two or more subjects.
    """
    subjects = sorted({(v.key.subject, v.key.session) for v in vertebrae})
    if len(subjects) < 2:
        raise ValueError(f"need at least two subjects to hold some out, got {len(subjects)}")
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_held = min(max(1, round(fraction * len(subjects))), len(subjects) - 1)
    held = {subjects[i] for i in order[:n_held]}
    train = [i for i, v in enumerate(vertebrae) if (v.key.subject, v.key.session) not in held]
    valid = [i for i, v in enumerate(vertebrae) if (v.key.subject, v.key.session) in held]
    return train, valid
