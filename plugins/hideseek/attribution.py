"""Hide-and-Seek Attribution (Atad et al.), the pure pieces: Eq. 1–3, candidates, scoring.

Everything here is plain maths on arrays, except :func:`project` and
:func:`hidden_probabilities`, which run an :class:`Autoencoder` (any object with the diffusion
autoencoder's three batched methods) on ``(B, 1, H, W)`` tensors in network units.

Sign convention (differs from the paper's text): on CT a lytic lesion is hypodense, so its
healthy edit is *brighter*; lytic candidates are where ``healthy > image`` and blastic
candidates where ``image > healthy`` (:mod:`wsbench.plugins.common.dae.candidates`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import binary_dilation, binary_fill_holes
from scipy.special import logit as _logit
from skimage.filters import threshold_otsu
from skimage.morphology import disk

from wsbench.api import (
    BLASTIC,
    CONNECTIVITY,
    LYTIC,
    MIN_COMPONENT_PX,
    components,
    eroded_body,
    module_device,
)
from wsbench.plugins.common.dae.candidates import Candidate, Threshold, extract_candidates
from wsbench.plugins.common.dae.latent import Hyperplane
from wsbench.plugins.common.dae.network import Autoencoder, to_array, to_tensor

P_TARGET = 1e-4
"""Target malignancy probability of the healthy edit (paper Table 3, ``p_healthy``)."""
TAU = 0.5
"""Δ cut-off above which a candidate is kept (paper §4)."""
EPSILON = 1e-8
"""ε of Eq. (3)."""


def probability_logit(p: float) -> float:
    """``log(p / (1 − p))``: the logit ``d_target`` of a probability."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"target probability {p} must lie strictly between 0 and 1")
    return float(_logit(p))


def healthy_latent(z: np.ndarray, plane: Hyperplane, p_target: float = P_TARGET) -> np.ndarray:
    """Eq. (1): move ``z`` along the plane's edit direction ``v`` until ``c(z) == p_target``.

    This is ``z − (n·z + b − d_target) v / (n·v)``; along the normal (``v = n``) it is the
    paper's ``z − (dist(z) − d_target/‖n‖) n/‖n‖``, where the paper writes ``d_target`` (a logit)
    for the distance ``d_target/‖n‖``.
    """
    z = np.asarray(z, dtype=np.float64)
    direction = np.asarray(plane.edit_direction, dtype=np.float64)
    along = float(plane.normal @ direction)
    if along < 1e-12:
        raise ValueError(
            "the latent classifier's edit direction does not raise its logit (n·v ≤ 0): it "
            "cannot edit z"
        )
    step = (plane.logit(z) - probability_logit(p_target)) / along
    return z - np.asarray(step)[..., None] * direction


def image_boundary(
    image: np.ndarray, inside: np.ndarray, lesion: np.ndarray, label: int, dilation_px: int
) -> np.ndarray:
    """``lesion`` redrawn along the image's own edges.

    Within ``lesion`` dilated by ``dilation_px`` (a disk) and restricted to ``inside``, the
    pixels on the lesion's side of Otsu's threshold of their HU (above it for blastic, below
    for lytic), the connected pieces of them that touch ``lesion``, holes filled. ``lesion``
    itself is returned when that region is uniform or the redrawn mask is smaller than
    ``MIN_COMPONENT_PX``."""
    lesion = np.asarray(lesion, dtype=bool)
    grown = binary_dilation(lesion, disk(dilation_px)) if dilation_px > 0 else lesion
    region = grown & np.asarray(inside, dtype=bool)
    values = image[region]
    if np.unique(values).size < 2:
        return lesion
    cut = threshold_otsu(values)
    side = region & ((image > cut) if label == BLASTIC else (image < cut))
    pieces = components(side)
    touching = np.unique(pieces[lesion & side])
    redrawn = binary_fill_holes(np.isin(pieces, touching[touching > 0]))
    return redrawn if redrawn.sum() >= MIN_COMPONENT_PX else lesion


def image_boundaries(
    labels: np.ndarray, image: np.ndarray, body: np.ndarray, dilation_px: int
) -> np.ndarray:
    """Label map with every lesion component redrawn by :func:`image_boundary` inside the
    eroded body (the region the harness scores); lytic first, each pixel claimed once."""
    inside = eroded_body(body)
    image = np.asarray(image, dtype=np.float64)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for label in (LYTIC, BLASTIC):
        found = components(labels == label)
        for k in range(1, int(found.max()) + 1):
            lesion = image_boundary(image, inside, found == k, label, dilation_px)
            out[lesion & (out == 0)] = label
    return out


def hide_others(
    image: np.ndarray, healthy: np.ndarray, keep: np.ndarray, suspects: np.ndarray
) -> np.ndarray:
    """Eq. (2): ``healthy`` on the suspects outside ``keep``, ``image`` everywhere else."""
    others = np.asarray(suspects, dtype=bool) & ~np.asarray(keep, dtype=bool)
    return np.where(others, healthy, image)


def delta_score(
    p_hide: np.ndarray | float, p_orig: float, p_healthy: float, eps: float = EPSILON
) -> np.ndarray:
    """Eq. (3): ``(c(z_hide) − c(z_healthy)) / (c(z) − c(z_healthy) + ε)``."""
    return (np.asarray(p_hide, dtype=np.float64) - p_healthy) / (p_orig - p_healthy + eps)


@torch.inference_mode()
def project(
    dae: Autoencoder, x: torch.Tensor, invert: bool, steps: tuple[int, int]
) -> torch.Tensor:
    """``z_hide`` of images ``x``: with ``invert``, Algorithm 1's projection (encode, DDIM-invert
    in ``steps[0]`` steps, decode in ``steps[1]``, re-encode); without, ``encode(x)``."""
    z = dae.encode(x)
    if not invert:
        return z
    x_t = dae.stochastic_encode(x, z, steps[0])
    return dae.encode(dae.decode(x_t, z, steps[1]))


def hidden_probabilities(
    dae: Autoencoder,
    plane: Hyperplane,
    images: Sequence[np.ndarray],
    invert: bool,
    steps: tuple[int, int],
    batch_size: int,
) -> np.ndarray:
    """``c(z_hide)`` of each ``(H, W)`` image in ``images`` (``batch_size`` per DAE pass;
    :func:`project` with ``invert`` and ``steps``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(np.asarray(images[start : start + batch_size]), module_device(dae))
        out.append(plane.probability(to_array(project(dae, x, invert, steps))))
    return np.concatenate(out) if out else np.zeros(0)


def union(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Pixel-wise OR of ``masks`` (all False when there are none)."""
    return np.logical_or.reduce(list(masks), axis=0) if len(masks) else np.zeros(shape, bool)


def scored_candidates(
    image: np.ndarray,
    healthy: np.ndarray,
    body: np.ndarray,
    wanted: Sequence[int],
    min_px: int,
    rule: Threshold = "body-mean",
    connectivity: int = CONNECTIVITY,
) -> tuple[list[Candidate], list[np.ndarray]]:
    """The candidates Hide-and-Seek scores on one slice, and the Eq. (2) image of each.

    Candidates (:func:`extract_candidates` with ``rule`` and ``connectivity``) of the ``wanted``
    polarities with at least ``min_px`` pixels are scored; every candidate (any polarity or
    size) is hidden in the others' images.
    """
    found = extract_candidates(image, healthy, body, rule, connectivity)
    suspects = union([c.mask for c in found], body.shape)
    scored = [c for c in found if c.label in wanted and c.size >= min_px]
    return scored, [hide_others(image, healthy, c.mask, suspects) for c in scored]
