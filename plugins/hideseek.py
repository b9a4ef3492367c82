"""Hide-and-Seek Attribution (Atad et al., §4 and Algorithm 1).

1. Encode the slice, ``z``; edit it to ``z_healthy`` with ``c(z_healthy) = p_target`` (Eq. 1);
   decode the original's stochastic code with ``z_healthy``: ``I_healthy``.
2. Lytic candidates where ``I_healthy > I``, blastic where ``I > I_healthy``; each polarity
   binarised at its body mean, split into 8-connected components.
3. For each candidate ``M``: keep ``I`` on ``M``, put ``I_healthy`` on every other candidate
   (Eq. 2), project through the DAE, re-encode, and score ``Δ(M)`` (Eq. 3); keep ``Δ ≥ τ``.

``faithful=True`` is the paper's algorithm exactly: ``I`` in ``D`` and Eq. (2), every
``I_hide`` projected (inverted, decoded, re-encoded) one at a time, 250/100 DDIM steps. The
default, chosen on the training split, differs in five ways: ``D`` and Eq. (2) use the DAE's
reconstruction of ``I`` (as the authors' demo does), ``z_hide`` is ``encode(I_hide)`` without
projection, the steps are 20/20, only candidates of at least 25 pixels (not 5) are scored and
can be kept, and each kept lesion's outline is redrawn from the input's HU (Otsu's threshold
near the lesion) instead of the blurred difference map. See docs/hideseek.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsbench import attribution as hs
from wsbench.intensity import hu_to_unit
from wsbench.latent_classifier import LatentClassifier, classifier_for
from wsbench.modelstore import SHIPPED_DIR, cache_root, file_identity
from wsbench.nets.device import module_device, torch_device
from wsbench.postprocess import MIN_COMPONENT_PX
from wsbench.types import (
    BLASTIC,
    LYTIC,
    N_CENTRAL_SLICES,
    LesionScore,
    Method,
    Phenotype,
    Segmentation,
    TrainingSet,
)

FAITHFUL_STEPS = (250, 100)
"""(stochastic encoding, decoding) DDIM steps of the paper (T_semantic, T_stochastic)."""
DEFAULT_STEPS = (20, 20)
"""Chosen from the speed/accuracy curve on the training split (docs/hideseek.md)."""
FAITHFUL_MIN_CANDIDATE_PX = MIN_COMPONENT_PX
"""Smallest scored candidate in the authors' code: the paper's 5-pixel evaluation threshold."""
DEFAULT_MIN_CANDIDATE_PX = 25
"""Smallest scored candidate by default: a size prior chosen on the training split and confirmed
on a disjoint training subset (docs/hideseek.md, "A candidate-size prior")."""
DEFAULT_BOUNDARY_PX = 2
"""How far (pixels) ``boundary=image`` may grow a kept lesion; chosen on the training split
(docs/hideseek.md, "Image boundaries")."""
BOTH = (LYTIC, BLASTIC)
HINTED = {Phenotype.LYTIC: (LYTIC,), Phenotype.BLASTIC: (BLASTIC,), Phenotype.MIXED: BOTH}


def dae_checkpoint(training: TrainingSet) -> Path:
    """The DAE of kind ``dae`` (shipped, then cached; :func:`find_dae`) trained on this dataset,
    never the AD baseline's healthy-only ``dae-healthy`` model."""
    from wsbench.nets.dae import find_dae

    path = find_dae(training.fingerprint, "dae")
    if path is None:
        raise FileNotFoundError(
            f"no trained DAE for dataset {training.name!r} (fingerprint {training.fingerprint}) in "
            f"{SHIPPED_DIR} or {cache_root() / 'models'}; train one with `wsbench train --model "
            f"dae --dataset {training.name}` (add the same --root; the shipped phantom recipe is "
            "`--config cpu --steps 26000 --lr-decay-from 20000 --threads 1`, about 3 h on one CPU "
            "core) or pass --checkpoint PATH"
        )
    return path


@dataclass
class Attribution:
    """Everything Hide-and-Seek computed for the mid slice of one vertebra."""

    p_orig: float
    p_base: float = float("nan")
    p_healthy: float = float("nan")
    image: np.ndarray | None = None
    healthy: np.ndarray | None = None
    candidates: tuple[hs.Candidate, ...] = ()
    deltas: tuple[float, ...] = ()
    p_hide: tuple[float, ...] = ()
    polarities: tuple[int, ...] = ()
    tau: float = hs.TAU

    def kept(self, index: int) -> bool:
        """Whether candidate ``index`` is in the result."""
        return self.candidates[index].label in self.polarities and self.deltas[index] >= self.tau

    def segmentation(self, shape: tuple[int, ...]) -> Segmentation:
        """Label map, Δ map, candidate map and one :class:`LesionScore` per scored candidate."""
        labels, scores = np.zeros(shape, np.uint8), np.zeros(shape, np.float32)
        instances, lesions = np.zeros(shape, np.int32), []
        for i, (candidate, delta) in enumerate(zip(self.candidates, self.deltas, strict=True)):
            kept = self.kept(i)
            labels[candidate.mask & kept] = candidate.label
            scores[candidate.mask], instances[candidate.mask] = delta, i + 1
            extra = {"c_z": self.p_orig, "c_base": self.p_base, "c_hide": self.p_hide[i],
                     "c_healthy": self.p_healthy}  # fmt: skip
            lesions.append(LesionScore(candidate.label, candidate.size, delta, kept, extra))
        return Segmentation(labels, scores, lesions, instances)


class HideAndSeek(Method):
    """Weakly supervised lytic/blastic segmentation by Hide-and-Seek Attribution."""

    name = "hideseek"
    version = "6"

    def __init__(
        self,
        checkpoint: str | None = None,
        faithful: bool = False,
        steps_stochastic: int | None = None,
        steps_decode: int | None = None,
        batch_size: int = 8,
        p_target: float = hs.P_TARGET,
        tau: float = hs.TAU,
        binarisation: hs.Binarisation = "mean",
        reference: str = "reconstruction",
        edit_direction: str = "normal",
        phenotype: str = "hint",
        slices: int = 1,
        only_malignant: bool = True,
        min_candidate_px: int = DEFAULT_MIN_CANDIDATE_PX,
        opening_px: int = 0,
        eq3_floor: str = "target",
        projection: hs.Projection = "none",
        boundary: str = "image",
        boundary_px: int = DEFAULT_BOUNDARY_PX,
        device: str = "cpu",
    ) -> None:
        steps = FAITHFUL_STEPS if faithful else DEFAULT_STEPS
        self.checkpoint, self.faithful = checkpoint, faithful
        self.steps_stochastic = int(steps_stochastic or steps[0])
        self.steps_decode = int(steps_decode or steps[1])
        self.batch_size = 1 if faithful else int(batch_size)
        self.p_target, self.tau, self.binarisation = p_target, tau, binarisation
        self.reference = "input" if faithful else reference
        self.edit_direction, self.phenotype = edit_direction, phenotype
        self.slices, self.only_malignant = int(slices), only_malignant
        self.min_candidate_px = FAITHFUL_MIN_CANDIDATE_PX if faithful else int(min_candidate_px)
        self.opening_px = 0 if faithful else int(opening_px)
        self.eq3_floor = "target" if faithful else eq3_floor
        self.projection = "invert" if faithful else projection
        self.boundary = "difference" if faithful else boundary
        self.boundary_px = int(boundary_px)
        self.device = str(torch_device(device))
        for value, allowed, what in [
            (reference, ("input", "reconstruction"), "reference"),
            (edit_direction, ("normal", "standardised"), "edit_direction"),
            (phenotype, ("hint", "auto"), "phenotype"),
            (self.eq3_floor, ("target", "reencoded"), "eq3_floor"),
            (self.boundary, ("difference", "image"), "boundary"),
            (projection, hs.PROJECTIONS, "projection"),
            (self.slices, (1, N_CENTRAL_SLICES), "slices"),
        ]:
            if value not in allowed:
                raise ValueError(f"{what}={value!r} is not one of {allowed}")
        self.dae: hs.Autoencoder | None = None
        self.classifier: LatentClassifier | None = None
        self.fitted_models: dict[str, str] = {}

    def params(self) -> dict[str, Any]:
        return {
            k: v for k, v in vars(self).items() if k not in ("dae", "classifier", "fitted_models")
        }

    @classmethod
    def from_parts(cls, dae: hs.Autoencoder, classifier: LatentClassifier, **params: Any):
        """A ready method around an already loaded DAE and classifier."""
        method = cls(**params)
        method.dae, method.classifier = dae, classifier
        return method

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        """Load the dataset's DAE; fit (or reload) the latent classifier on its latents."""
        from wsbench.nets.dae import DiffusionAutoencoder

        path = Path(self.checkpoint) if self.checkpoint else dae_checkpoint(training)
        self.dae = DiffusionAutoencoder.load(path, device=self.device)
        dae_identity = file_identity(path)
        self.classifier, stored = classifier_for(self.dae, dae_identity, training)
        self.fitted_models = {"dae": dae_identity, "classifier": file_identity(stored)}

    def models(self) -> dict[str, str]:
        """The DAE and the latent classifier ``fit`` loaded, each as ``<file stem>-<sha256[:12]>``
        of its weights file; ``{}`` before fit or when built by :meth:`from_parts`."""
        return dict(self.fitted_models)

    def segment(self, image: np.ndarray, body_mask: np.ndarray, **context: Any) -> Segmentation:
        """Hide-and-Seek on the mid slice (or the central five, fused into the mid slice); with
        ``boundary=image`` the kept lesions are then redrawn along the input's own edges."""
        if self.slices == 1:
            stack, bodies = image[None], body_mask[None]
        else:
            stack, bodies = context["stack"], context["stack_body"]
        return self.result_segmentation(
            self.attribute(stack, bodies, context.get("phenotype")), image, body_mask
        )

    def result_segmentation(
        self, result: Attribution, image: np.ndarray, body_mask: np.ndarray
    ) -> Segmentation:
        """The method's output for one attributed mid slice (HU ``image``): the kept candidates,
        redrawn along the image's own edges when ``boundary=image``."""
        seg = result.segmentation(image.shape)
        if self.boundary == "image":
            seg.labels = hs.image_boundaries(seg.labels, image, body_mask, self.boundary_px)
        return seg

    def attribute(
        self, stack: np.ndarray, bodies: np.ndarray, phenotype: Phenotype | None
    ) -> Attribution:
        """Run Hide-and-Seek on ``S`` slices (HU); the result describes the mid slice."""
        if self.dae is None or self.classifier is None:
            raise RuntimeError("hideseek has no DAE/classifier yet: call fit() or from_parts()")
        dae, plane, mid = self.dae, self.classifier.plane, len(stack) // 2
        bodies = np.asarray(bodies, dtype=bool)
        with torch.inference_mode():
            x = hs.to_tensor(hu_to_unit(stack), module_device(dae))
            z = dae.encode(x)
            p_orig = plane.probability(hs.to_array(z))
            gated = self.only_malignant and p_orig.mean() < 0.5
            if gated or p_orig.min() <= self.p_target:  # at or below p_target Eq. 1 adds malignancy
                return Attribution(p_orig=float(p_orig[mid]))
            direction = None
            if self.edit_direction == "standardised":
                direction = self.classifier.standardised_direction()
            z_healthy = hs.healthy_latent(hs.to_array(z), plane, self.p_target, direction)
            x_t = dae.stochastic_encode(x, z, self.steps_stochastic)
            z_edit = torch.as_tensor(z_healthy, dtype=z.dtype, device=z.device)
            if self.reference == "input":
                healthy, base = dae.decode(x_t, z_edit, self.steps_decode), x
            else:  # I_healthy and the reconstruction in one DDIM pass
                both = dae.decode(torch.cat([x_t, x_t]), torch.cat([z_edit, z]), self.steps_decode)
                healthy, base = both.split(len(x))
            # Eq. (3) compares each I_hide with the image it was built from: c(encode(base))
            p_base = p_orig if base is x else plane.probability(hs.to_array(dae.encode(base)))
            p_floor = None  # Eq. (3)'s c(z_healthy) when it is not p_target
            if self.eq3_floor == "reencoded":  # what hiding everything actually reaches
                p_floor = plane.probability(hs.to_array(dae.encode(healthy)))
        if p_base.min() <= self.p_target:
            return Attribution(p_orig=float(p_orig[mid]), p_base=float(p_base[mid]))
        healthy, base = hs.to_array(healthy[:, 0]), hs.to_array(base[:, 0])
        image = base[mid]
        p_healthy = plane.probability(z_healthy) if p_floor is None else p_floor
        wanted = BOTH if self.phenotype == "auto" else HINTED.get(phenotype, BOTH)

        auto = self.phenotype == "auto"
        jobs = [hs.slice_jobs(base[s], healthy[s], bodies[s], wanted, self.min_candidate_px,
                              self.binarisation, auto, self.opening_px)
                for s in range(len(stack))]  # fmt: skip
        tests = [
            (s, label, im) for s, j in enumerate(jobs) for label, im in j.polarity_images.items()
        ]
        images = [im for j in jobs for im in j.images] + [t[2] for t in tests]
        counts = [len(j.scored) for j in jobs]
        slice_of = np.repeat(np.arange(len(jobs)), counts)
        codes = x_t[np.concatenate([slice_of, [t[0] for t in tests]]).astype(int)]
        p_all = hs.hidden_probabilities(dae, plane, np.asarray(images), self.steps_stochastic,
                                        self.steps_decode, self.batch_size, self.projection,
                                        codes)  # fmt: skip
        p_hide, p_tests = p_all[: len(slice_of)], p_all[len(slice_of) :]
        deltas = hs.delta_score(p_hide, p_base[slice_of], p_healthy[slice_of])
        per_slice = np.split(deltas, np.cumsum(counts)[:-1])
        p_hide = np.split(p_hide, np.cumsum(counts)[:-1])[mid]

        polarities = wanted
        if auto:  # median over slices of each polarity's revealed-together Δ
            by_label = {label: [] for label in BOTH}
            for (s, label, _), p in zip(tests, p_tests, strict=True):
                by_label[label].append(hs.delta_score(p, p_base[s], p_healthy[s]))
            fused = {k: float(np.median(v)) if v else -np.inf for k, v in by_label.items()}
            polarities = hs.choose_polarities(fused, self.tau)
        deltas = per_slice[mid]
        if len(stack) > 1:  # 2.5D: median over slices of each mid-slice candidate's mean Δ
            maps = {lab: [hs.delta_map(image.shape, j.scored, d, lab) for j, d in
                          zip(jobs, per_slice, strict=True)] for lab in BOTH}  # fmt: skip
            deltas = [hs.fused_delta(c.mask, maps[c.label]) for c in jobs[mid].scored]
        return Attribution(
            p_orig=float(p_orig[mid]),
            p_base=float(p_base[mid]),
            p_healthy=float(p_healthy[mid]),
            image=image,
            healthy=healthy[mid],
            candidates=tuple(jobs[mid].scored),
            deltas=tuple(float(d) for d in deltas),
            p_hide=tuple(float(p) for p in p_hide),
            polarities=polarities,
            tau=self.tau,
        )


class HideAndSeekUngated(HideAndSeek):
    """Hide-and-Seek on every vertebra: the paper's gate off (``only_malignant=false``).

    Published beside the gated default so that the leaderboard shows both sides of the gate's
    trade-off: vertebrae the latent classifier misses (most lytic ones here) against false
    positives on healthy vertebrae (docs/hideseek.md, "The gate on the leaderboard")."""

    name = "hideseek-ungated"

    def __init__(self, only_malignant: bool = False, **params: Any) -> None:
        super().__init__(only_malignant=only_malignant, **params)
