"""A third-party wsbench method that learns: pixels brighter than healthy bone ever is.

Training (``wsbench train --method brightest``) reads the weak training view only: the HU of
every body pixel of the healthy training vertebrae, whose ``quantile`` becomes the threshold,
stored in the user's model store with a model card. ``fit`` loads it (a run never trains);
``segment`` marks the body pixels above it, a phenotype-blind foreground.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsbench.api import (
    Method,
    ModelKey,
    ModelStore,
    TrainingSet,
    TrainOptions,
    VertebraSample,
    WeakLabel,
    file_identity,
    write_card,
)

STORE = ModelStore()


class BrightestTail(Method):
    """Body pixels brighter than the ``quantile`` of healthy training bone."""

    name = "brightest"
    version = "1"
    distinguishes_phenotype = False

    def __init__(self, quantile: float = 0.99) -> None:
        self.quantile = float(quantile)
        self.threshold: float | None = None
        self.weights: Path | None = None

    def key(self, training: TrainingSet) -> ModelKey:
        """The stored threshold's identity: this dataset and this quantile."""
        return ModelKey("brightest", training.fingerprint, {"quantile": self.quantile})

    def train(
        self, training: TrainingSet, options: TrainOptions, *, max_vertebrae: int = 10_000
    ) -> list[Path]:
        """Learn the threshold from (at most ``max_vertebrae``) healthy training vertebrae."""
        healthy = training.where(WeakLabel.HEALTHY)[:max_vertebrae]
        if not healthy:
            raise ValueError(f"training split of {training.name!r} has no healthy vertebra")
        values = np.concatenate([v.slices[v.body].ravel() for v in healthy])
        key = self.key(training)
        path = STORE.new_path(key, ".npy")
        np.save(path, np.array([np.quantile(values, self.quantile)]))
        write_card(path, key, "brightest-tail threshold", {"vertebrae": len(healthy)})
        return [path]

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        """Load the threshold trained for this dataset and quantile."""
        key = self.key(training)
        self.weights = STORE.find(key.kind, key.dataset_fingerprint, key.config)
        if self.weights is None:
            raise FileNotFoundError(
                f"no brightest threshold for {training.name!r}: run `wsbench train --method "
                f"brightest --dataset {training.name}` first"
            )
        self.threshold = float(np.load(self.weights)[0])

    def models(self) -> dict[str, str]:
        return {"threshold": file_identity(self.weights)} if self.weights else {}

    def segment(self, sample: VertebraSample) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("brightest: call fit() first")
        return ((sample.image > self.threshold) & sample.body_mask).astype(np.uint8)
