"""What must a "semantic" ``z_sem`` beat? The latent AUC next to a floor, two simple features and
a supervised ceiling, all on the quality report's hold-out.

    python benchmarks/dae_latent_baselines.py [DAE.pt ...] [--dataset phantom] [--no-supervised]

The DAE quality report fits the latent classifier on 70 % of the training subjects and scores
the held-out 30 % (:func:`wsbench.dae_train.latent_auc`). Here the same classifier (standardised,
balanced logistic regression, C by grouped CV) and the same split are applied to:

- ``z_sem`` of each DAE given (default: the dataset's Hide-and-Seek DAE);
- ``z_sem`` of an untrained DAE of the first one's config (random convolutional features);
- a HU histogram of the whole crop, and one of the vertebral body only (30 bins over the
  network's HU window, as fractions of the pixels): features with no learning at all;
- a supervised ResNet-18 (the CAM baselines' network and recipe,
  :func:`wsbench.nets.classifier.fit_resnet`) trained on the fitted subjects' labels: what the
  labels and this data allow (its probability is scored directly, no logistic regression).

Prints one row per feature: held-out ROC-AUC, chosen C, and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from sklearn.metrics import roc_auc_score
from wsbench.plugins.hideseek import dae_checkpoint

from wsbench.dae_train import (
    holdout_classifier,
    holdout_fit,
    latent_auc_split,
    mid_slices,
    untrained_twin,
)
from wsbench.intensity import HU_WINDOW
from wsbench.nets.classifier import ClassifierConfig, fit_resnet, malignancy
from wsbench.nets.dae import DiffusionAutoencoder
from wsbench.runner import RunConfig, prepare_dataset
from wsbench.types import TrainingSet, TrainingVertebra

HISTOGRAM_BINS = 30
"""Bins of the HU histogram features, spread evenly over the HU window."""

app = typer.Typer(add_completion=False, help=__doc__)

Features = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(slices (N, H, W) in HU, body masks (N, H, W)) → (N, d)`` feature rows."""


def hu_histogram(slices: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fraction of each slice's masked pixels in each of :data:`HISTOGRAM_BINS` HU bins (values
    outside the window fall in the end bins)."""
    edges = np.linspace(*HU_WINDOW, HISTOGRAM_BINS + 1)
    rows = []
    for image, mask in zip(slices, masks, strict=True):
        values = np.clip(image[mask], edges[0], edges[-1])
        rows.append(np.histogram(values, edges)[0] / max(values.size, 1))
    return np.asarray(rows)


def crop_histogram(slices: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`hu_histogram` over the whole crop."""
    return hu_histogram(slices, np.ones_like(masks, dtype=bool))


def body_histogram(slices: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """:func:`hu_histogram` over the vertebral body."""
    return hu_histogram(slices, masks.astype(bool))


def probe_auc(
    features: Features, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[float, float]:
    """Held-out ROC-AUC and C of the latent-classifier recipe on hand-made ``features``."""
    mid = len(fit[0].slices) // 2
    x_fit = features(np.concatenate([v.slices for v in fit]), np.concatenate([v.body for v in fit]))
    x_held = features(mid_slices(held), np.stack([v.body[mid] for v in held]))
    classifier, auc = holdout_fit(x_fit, x_held, fit, held)
    return auc, classifier.C


def latent_auc_row(
    dae: DiffusionAutoencoder, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[float, float]:
    """Held-out ROC-AUC and C of the latent classifier on ``dae``'s ``z_sem``."""
    classifier, auc = holdout_classifier(dae, fit, held)
    return auc, classifier.C


def supervised_auc(fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]) -> float:
    """Held-out ROC-AUC of a ResNet-18 trained on ``fit``'s labels (CAM baselines' recipe)."""
    model = fit_resnet(fit, ClassifierConfig(), progress=False)
    return float(
        roc_auc_score(TrainingSet("", "", held).labels(), malignancy(model, mid_slices(held)))
    )


def timed_row(name: str, run: Callable[[], tuple[float, float | None]]) -> dict[str, object]:
    """Run one baseline and return its table row."""
    start = time.perf_counter()
    auc, c = run()
    print(f"{name}: AUC {auc:.3f}", flush=True)
    return {"features": name, "AUC": auc, "C": c, "seconds": time.perf_counter() - start}


@app.command()
def main(
    checkpoints: Annotated[
        list[Path] | None, typer.Argument(help="DAEs (default: dataset's)")
    ] = None,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    seed: Annotated[int, typer.Option(help="hold-out and untrained-weights seed")] = 0,
    supervised: Annotated[bool, typer.Option(help="also train the ResNet-18 ceiling")] = True,
) -> None:
    """Print the table."""
    torch.set_num_threads(1)
    _, data = prepare_dataset(RunConfig("hideseek", dataset))
    training = data.training_set()
    fit, held = latent_auc_split(training, seed)
    paths = checkpoints or [dae_checkpoint(training)]
    daes = [DiffusionAutoencoder.load(p).eval() for p in paths]
    print(f"{len(fit)} training vertebrae fitted, {len(held)} held out "
          f"({int(TrainingSet('', '', held).labels().sum())} malignant)", flush=True)  # fmt: skip
    jobs: list[tuple[str, Callable[[], tuple[float, float | None]]]] = [
        (f"z_sem {p.stem}", lambda d=d: latent_auc_row(d, fit, held))
        for p, d in zip(paths, daes, strict=True)
    ]
    twin = untrained_twin(daes[0], seed)
    jobs += [
        ("z_sem untrained", lambda: latent_auc_row(twin, fit, held)),
        ("HU histogram, crop", lambda: probe_auc(crop_histogram, fit, held)),
        ("HU histogram, body", lambda: probe_auc(body_histogram, fit, held)),
    ]
    if supervised:
        jobs.append(("supervised ResNet-18", lambda: (supervised_auc(fit, held), None)))
    rows = [timed_row(name, run) for name, run in jobs]
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    app()
