"""Hide-and-Seek Attribution (Atad et al.), the pure pieces: Eq. 1–3, candidates, scoring.

Everything here is plain maths on arrays, except :func:`project` and
:func:`hidden_probabilities`, which run an :class:`Autoencoder` (any object with the diffusion
autoencoder's three batched methods) on ``(B, 1, H, W)`` tensors in network units.

Sign convention (differs from the paper's text, see docs/hideseek.md): on CT a lytic lesion is
hypodense, so its healthy edit is *brighter*; lytic candidates are where ``healthy > image`` and
blastic candidates where ``image > healthy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from scipy.ndimage import binary_dilation, binary_fill_holes
from scipy.special import expit
from scipy.special import logit as _logit
from skimage.filters import threshold_otsu
from skimage.morphology import disk, opening

from wsbench.nets.device import module_device
from wsbench.postprocess import MIN_COMPONENT_PX, components, eroded_body
from wsbench.types import BLASTIC, LYTIC

P_TARGET = 1e-4
"""Target malignancy probability of the healthy edit (paper Table 3, ``p_healthy``)."""
TAU = 0.5
"""Δ cut-off above which a candidate is kept (paper §4)."""
EPSILON = 1e-8
"""ε of Eq. (3)."""

Binarisation = Literal["mean", "median"]
Projection = Literal["invert", "original-code", "none"]
PROJECTIONS: tuple[Projection, ...] = ("invert", "original-code", "none")
"""How ``I_hide`` reaches ``z_hide``: ``invert`` (Algorithm 1: encode, DDIM-invert, decode,
re-encode), ``original-code`` (decode from the original's ``x_T`` instead of inverting
``I_hide``, then re-encode), ``none`` (``z_hide = encode(I_hide)``, no DDIM pass)."""


class Autoencoder(Protocol):
    """The diffusion-autoencoder interface Hide-and-Seek needs (batched, network units)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def stochastic_encode(
        self, x: torch.Tensor, z_sem: torch.Tensor, steps: int
    ) -> torch.Tensor: ...

    def decode(self, x_t: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class Hyperplane:
    """A linear classifier ``c(z) = σ(n·z + b)`` on raw semantic latents."""

    normal: np.ndarray
    bias: float

    def logit(self, z: np.ndarray) -> np.ndarray:
        """``n·z + b`` for ``z`` of shape ``(..., d)``."""
        return np.asarray(z, dtype=np.float64) @ self.normal + self.bias

    def probability(self, z: np.ndarray) -> np.ndarray:
        """Malignancy probability ``c(z)``."""
        return expit(self.logit(z))

    def distance(self, z: np.ndarray) -> np.ndarray:
        """Signed distance ``(n·z + b) / ‖n‖`` to the decision boundary."""
        return self.logit(z) / np.linalg.norm(self.normal)


def hyperplane_from_standardised(
    weights: np.ndarray, bias: float, mean: np.ndarray, scale: np.ndarray
) -> Hyperplane:
    """The raw-space hyperplane of a logistic regression fitted on ``(z − μ) / σ``.

    ``w·(z − μ)/σ + b = (w/σ)·z + (b − Σ w μ / σ)``, so ``n = w/σ`` and ``b' = b − Σ w μ/σ``.
    """
    weights = np.asarray(weights, dtype=np.float64).ravel()
    mean = np.asarray(mean, dtype=np.float64).ravel()
    scale = np.asarray(scale, dtype=np.float64).ravel()
    if not weights.shape == mean.shape == scale.shape:
        raise ValueError(
            f"weights {weights.shape}, mean {mean.shape} and scale {scale.shape} must have "
            "the same length (one per latent dimension)"
        )
    return Hyperplane(normal=weights / scale, bias=float(bias - np.sum(weights * mean / scale)))


def probability_logit(p: float) -> float:
    """``log(p / (1 − p))``: the logit ``d_target`` of a probability."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"target probability {p} must lie strictly between 0 and 1")
    return float(_logit(p))


def healthy_latent(
    z: np.ndarray,
    plane: Hyperplane,
    p_target: float = P_TARGET,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """Eq. (1): move ``z`` along ``n`` (or ``direction``) until ``c(z) == p_target``.

    With ``direction = n`` this is ``z − (dist(z) − d_target/‖n‖) n/‖n‖``: the paper writes
    ``d_target`` (a logit) where the distance ``d_target/‖n‖`` is meant. Any direction with
    ``n·direction ≠ 0`` lands on the same logit; the authors' code moves along ``w`` in
    standardised coordinates, i.e. ``direction = σ ⊙ w`` in raw space.
    """
    z = np.asarray(z, dtype=np.float64)
    step_dir = plane.normal if direction is None else np.asarray(direction, dtype=np.float64)
    along = float(plane.normal @ step_dir)
    if abs(along) < 1e-12:
        raise ValueError("the edit direction is parallel to the decision boundary")
    step = (plane.logit(z) - probability_logit(p_target)) / along
    return z - np.asarray(step)[..., None] * step_dir


def polarity_maps(image: np.ndarray, healthy: np.ndarray) -> dict[int, np.ndarray]:
    """Lytic (``healthy − image``)⁺ and blastic (``image − healthy``)⁺ difference maps."""
    difference = np.asarray(image, dtype=np.float64) - np.asarray(healthy, dtype=np.float64)
    return {LYTIC: np.maximum(-difference, 0.0), BLASTIC: np.maximum(difference, 0.0)}


def binarise(diff: np.ndarray, body: np.ndarray, rule: Binarisation = "mean") -> np.ndarray:
    """Body pixels whose difference exceeds the per-image threshold.

    ``mean`` (paper): the mean of ``diff`` over *all* body pixels (zeros included);
    ``median`` (authors' demo code): the median of the *positive* body values. A map without
    positive body values gives an empty mask.
    """
    body = np.asarray(body, dtype=bool)
    values = diff[body]
    if rule == "mean":
        cut = values.mean() if values.size else 0.0
    elif rule == "median":
        positive = values[values > 0]
        cut = np.median(positive) if positive.size else np.inf
    else:
        raise ValueError(f"binarisation rule {rule!r} is neither 'mean' nor 'median'")
    return body & (diff > cut)


@dataclass(frozen=True)
class Candidate:
    """One connected component of a polarity's binarised difference map."""

    mask: np.ndarray
    label: int

    @property
    def size(self) -> int:
        """Number of pixels."""
        return int(self.mask.sum())


def extract_candidates(
    image: np.ndarray,
    healthy: np.ndarray,
    body: np.ndarray,
    rule: Binarisation = "mean",
    opening_px: int = 0,
) -> list[Candidate]:
    """Lytic then blastic candidates (8-connected components, in label order).

    ``opening_px > 0`` first opens each binarised map with a disk of that radius, which removes
    structures thinner than the disk (speckle, one-pixel bridges and lines)."""
    found = []
    for label, diff in polarity_maps(image, healthy).items():
        mask = binarise(diff, body, rule)
        if opening_px > 0:
            mask = opening(mask, disk(opening_px))
        labelled = components(mask)
        found += [Candidate(labelled == k, label) for k in range(1, int(labelled.max()) + 1)]
    return found


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


def choose_polarities(delta_by_label: dict[int, float], tau: float = TAU) -> tuple[int, ...]:
    """Phenotype ``auto``: the polarities whose candidates, revealed together, explain ≥ τ.

    ``delta_by_label`` holds, per polarity, Δ of the image in which all that polarity's
    candidates are revealed and the other polarity's hidden (``-inf`` when it has none). Both
    ≥ τ → both (mixed); one → that one; none → the larger one (the vertebra was called
    malignant, so the polarity explaining more of it is the better guess).
    """
    passing = tuple(label for label in (LYTIC, BLASTIC) if delta_by_label[label] >= tau)
    if passing:
        return passing
    best = max((LYTIC, BLASTIC), key=lambda label: delta_by_label[label])
    return (best,) if np.isfinite(delta_by_label[best]) else ()


def to_tensor(
    images: np.ndarray | Sequence[np.ndarray], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(B, H, W)`` arrays as a float32 ``(B, 1, H, W)`` tensor on ``device``."""
    return torch.as_tensor(np.asarray(images, dtype=np.float32), device=device).unsqueeze(1)


def to_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a float64 NumPy array."""
    return tensor.detach().double().cpu().numpy()


@torch.inference_mode()
def project(
    dae: Autoencoder,
    x: torch.Tensor,
    projection: Projection,
    steps_stochastic: int,
    steps_decode: int,
    x_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """``z_hide`` of images ``x`` by ``projection`` (see :data:`PROJECTIONS`).

    ``x_t`` holds the originals' stochastic codes, one per image (``original-code`` only).
    """
    z = dae.encode(x)
    if projection == "none":
        return z
    if projection == "invert":
        x_t = dae.stochastic_encode(x, z, steps_stochastic)
    elif projection != "original-code":
        raise ValueError(f"projection {projection!r} is not one of {PROJECTIONS}")
    elif x_t is None:
        raise ValueError("projection 'original-code' needs the originals' codes x_t")
    return dae.encode(dae.decode(x_t, z, steps_decode))


def hidden_probabilities(
    dae: Autoencoder,
    plane: Hyperplane,
    images: np.ndarray,
    steps_stochastic: int,
    steps_decode: int,
    batch_size: int,
    projection: Projection = "invert",
    x_t: torch.Tensor | None = None,
) -> np.ndarray:
    """``c(z_hide)`` of each ``(H, W)`` image in ``images`` (``batch_size`` per DAE pass).

    ``x_t``, when given, holds one stochastic code per image (see :func:`project`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    out = []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size], module_device(dae))
        codes = None if x_t is None else x_t[start : start + batch_size]
        z = project(dae, x, projection, steps_stochastic, steps_decode, codes)
        out.append(plane.probability(to_array(z)))
    return np.concatenate(out) if out else np.zeros(0)


def delta_map(
    shape: tuple[int, ...], candidates: Sequence[Candidate], deltas: Sequence[float], label: int
) -> np.ndarray:
    """Map with each scored ``label`` candidate's Δ on its pixels and 0 elsewhere."""
    out = np.zeros(shape, dtype=np.float64)
    for candidate, delta in zip(candidates, deltas, strict=True):
        if candidate.label == label:
            out[candidate.mask] = delta
    return out


def fused_delta(mask: np.ndarray, maps: Sequence[np.ndarray]) -> float:
    """2.5D fusion: the median over slices of the mean Δ-map value under ``mask``."""
    return float(np.median([m[mask].mean() for m in maps]))


def union(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Pixel-wise OR of ``masks`` (all False when there are none)."""
    return np.logical_or.reduce(list(masks), axis=0) if len(masks) else np.zeros(shape, bool)


@dataclass(frozen=True)
class SliceJobs:
    """One slice's scored candidates, their Eq. (2) images and the polarity-test images."""

    scored: list[Candidate]
    images: list[np.ndarray]
    polarity_images: dict[int, np.ndarray]


def slice_jobs(
    base: np.ndarray,
    healthy: np.ndarray,
    body: np.ndarray,
    wanted: Sequence[int],
    min_px: int,
    rule: Binarisation = "mean",
    polarity_tests: bool = False,
    opening_px: int = 0,
) -> SliceJobs:
    """Candidates of one slice and the images Hide-and-Seek must score for it.

    Candidates of the ``wanted`` polarities with at least ``min_px`` pixels are scored; every
    candidate (any polarity or size) is hidden in the others' images. With ``polarity_tests``,
    each polarity present also gets one image revealing all its candidates, the rest hidden.
    """
    found = extract_candidates(base, healthy, body, rule, opening_px)
    suspects = union([c.mask for c in found], body.shape)
    scored = [c for c in found if c.label in wanted and c.size >= min_px]
    images = [hide_others(base, healthy, c.mask, suspects) for c in scored]
    polarity_images = {}
    for label in (LYTIC, BLASTIC) if polarity_tests else ():
        keep = union([c.mask for c in found if c.label == label], body.shape)
        if keep.any():
            polarity_images[label] = hide_others(base, healthy, keep, suspects)
    return SliceJobs(scored, images, polarity_images)
