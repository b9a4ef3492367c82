"""Pseudo-healthy anomaly detection (AD) baseline (paper A.1.3).

A diffusion autoencoder trained on healthy vertebrae only (``wsbench train --method ad``)
reconstructs each slice: ``x̂ = decode(stochastic_encode(x, z), z)`` with ``z = encode(x)``. As
it has never seen a lesion, ``x̂`` is a pseudo-healthy version of ``x``. Candidates come from the
residual exactly as in Hide-and-Seek (:mod:`wsbench.plugins.common.dae.candidates`): lytic where
the reconstruction is brighter than the image, blastic where it is darker, each polarity
binarised at its per-image mean inside the body and split into 8-connected components. Every
component is kept (no attribution step); the phenotype hint selects the polarities (none/mixed:
both). The score map is ``|x − x̂|`` (network units).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsbench.api import (
    BLASTIC,
    LYTIC,
    LesionScore,
    ModelStore,
    Phenotype,
    Segmentation,
    TrainedOn,
    TrainingSet,
    VertebraSample,
    file_identity,
    module_device,
    torch_device,
    trained_on,
)
from wsbench.plugins.common.dae.candidates import extract_candidates, polarity_maps
from wsbench.plugins.common.dae.method import DiffusionMethod
from wsbench.plugins.common.dae.network import DiffusionAutoencoder, to_array, to_tensor
from wsbench.plugins.common.dae.training import train_config

STORE = ModelStore(Path(__file__).parent / "weights")
"""The healthy-only DAE shipped for the default phantom, then the user cache."""
DAE_RECIPE = train_config("cpu", healthy_only=True)
"""The healthy-only DAE ``wsbench train --method ad`` trains (the shipped phantom one's recipe)."""
HINTED = {Phenotype.LYTIC: (LYTIC,), Phenotype.BLASTIC: (BLASTIC,)}


class AnomalyDetection(DiffusionMethod):
    """Residuals of a healthy-only DAE reconstruction, split by polarity."""

    name = "ad"
    version = "1"
    dae_recipe = DAE_RECIPE
    dae_hours = "the shipped phantom recipe takes about 30 min on one CPU core"
    store = STORE

    def __init__(
        self,
        checkpoint: str | None = None,
        model: str | None = None,
        steps_stochastic: int = 20,
        steps_decode: int = 20,
        device: str = "cpu",
    ) -> None:
        self.checkpoint = checkpoint
        self.model = model
        self.steps_stochastic, self.steps_decode = int(steps_stochastic), int(steps_decode)
        self.device = str(torch_device(device))
        self.dae: DiffusionAutoencoder | None = None
        self.dae_identity: str | None = None
        self.origin: TrainedOn | None = None

    def models(self) -> dict[str, str]:
        """The healthy-only DAE ``fit`` loaded, as ``<file stem>-<sha256[:12]>``; ``{}`` before
        fit or when built by :meth:`from_dae`."""
        return {"dae": self.dae_identity} if self.dae_identity else {}

    def trained_on(self) -> dict[str, TrainedOn]:
        """The data the DAE ``fit`` loaded was trained on; ``{}`` before fit."""
        return {"dae": self.origin} if self.origin else {}

    @classmethod
    def from_dae(cls, dae: DiffusionAutoencoder, **params: Any) -> AnomalyDetection:
        """A ready method around a loaded DAE (or any object with its ``to_unit``, ``encode``,
        ``stochastic_encode`` and ``decode``)."""
        method = cls(**params)
        method.dae = dae
        return method

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        """Load the healthy-only DAE :meth:`dae_path` names."""
        path = self.dae_path(training)
        self.dae = DiffusionAutoencoder.load(path, device=self.device)
        self.dae_identity = file_identity(path)
        self.origin = trained_on(path)

    def pseudo_healthy(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x, x̂)``: the HU slice in network units and its healthy-DAE reconstruction."""
        if self.dae is None:
            raise RuntimeError("ad has no DAE yet: call fit() or from_dae()")
        x = to_tensor(self.dae.to_unit(image)[None], module_device(self.dae))
        with torch.inference_mode():
            z = self.dae.encode(x)
            x_t = self.dae.stochastic_encode(x, z, self.steps_stochastic)
            recon = self.dae.decode(x_t, z, self.steps_decode)
        return to_array(x[0, 0]), to_array(recon[0, 0])

    def segment(self, sample: VertebraSample) -> Segmentation:
        """Lytic/blastic residual components of the hinted polarities; score ``|x − x̂|``."""
        image = sample.image
        x, healthy = self.pseudo_healthy(image)
        body = np.asarray(sample.body_mask, dtype=bool)
        wanted = HINTED.get(sample.phenotype, (LYTIC, BLASTIC))
        residual = {k: v for k, v in polarity_maps(x, healthy).items() if k in wanted}
        labels = np.zeros(image.shape, np.uint8)
        instances, lesions = np.zeros(image.shape, np.int32), []
        for candidate in extract_candidates(x, healthy, body):
            if candidate.label not in wanted:
                continue
            labels[candidate.mask] = candidate.label
            instances[candidate.mask] = len(lesions) + 1
            strength = float(residual[candidate.label][candidate.mask].mean())
            lesions.append(LesionScore(candidate.label, candidate.size, strength, True))
        scores = np.abs(x - healthy).astype(np.float32)
        return Segmentation(labels, scores, lesions, instances)
