"""What must a "semantic" ``z_sem`` beat? The latent AUC next to a floor, two simple features and
a supervised ceiling, all on the quality report's hold-out.

    python benchmarks/dae_latent_baselines.py [DAE.pt ...] [--dataset phantom] [--no-supervised]

The DAE quality report fits the latent classifier on 70 % of the training subjects and scores the
held-out 30 % (:func:`wsbench.plugins.shared.dae.training.latent_auc`). Here the same classifier
(standardised, balanced logistic regression, C by grouped CV) and the same split are applied to:

- ``z_sem`` of each DAE given (default: the dataset's Hide-and-Seek DAE);
- ``z_sem`` of an untrained DAE of the first one's config (random convolutional features);
- a HU histogram of the whole crop, and one of the vertebral body only (30 bins over the
  network's HU window, as fractions of the pixels): features with no learning at all;
- a supervised ResNet-18 (the CAM baselines' network and recipe,
  :func:`wsbench.plugins.cam.classifier.fit_resnet`) trained on the fitted subjects' labels: what
  the labels and this data allow (its probability is scored directly, no logistic regression).

Prints one row per feature: held-out ROC-AUC and chosen C; then, per phenotype (read from the
dataset's ground truth, which the DAE and the classifier never see), the AUC of that classifier
between the held-out vertebrae of the phenotype and the healthy ones ("one"), and the AUC of a
classifier of the same recipe fitted on healthy vs that phenotype only ("own": what a classifier
per phenotype would give Hide-and-Seek's gate); and seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from sklearn.metrics import roc_auc_score
from wsbench.plugins.cam.classifier import ClassifierConfig, fit_resnet, malignancy
from wsbench.plugins.hideseek import dae_checkpoint
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder
from wsbench.plugins.shared.dae.training import (
    holdout_fit,
    holdout_latents,
    latent_auc_split,
    mid_slices,
    untrained_twin,
)

from wsbench.contract import Phenotype, TrainingSet, TrainingVertebra, VertebraKey, WeakLabel
from wsbench.data.intensity import HU_WINDOW
from wsbench.harness.runner import RunConfig, prepare_dataset

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


Matrices = tuple[np.ndarray, np.ndarray]
"""Feature rows of the fitted vertebrae (every slice, in order) and of the held-out mid slices."""


def histogram_rows(
    features: Features, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> Matrices:
    """Hand-made ``features`` of the fitted slices and of the held-out mid slices."""
    mid = len(fit[0].slices) // 2
    x_fit = features(np.concatenate([v.slices for v in fit]), np.concatenate([v.body for v in fit]))
    return x_fit, features(mid_slices(held), np.stack([v.body[mid] for v in held]))


def phenotype_auc(
    scores: np.ndarray, kinds: Sequence[Phenotype | None], phenotype: Phenotype
) -> float:
    """ROC-AUC of ``scores`` between the vertebrae of ``phenotype`` and the healthy ones."""
    rows = [i for i, kind in enumerate(kinds) if kind in (None, phenotype)]
    return float(roc_auc_score([kinds[i] is phenotype for i in rows], scores[rows]))


def one_classifier_columns(
    scores: np.ndarray,
    held: Sequence[TrainingVertebra],
    phenotypes: Mapping[VertebraKey, Phenotype | None],
) -> dict[str, float]:
    """``"<phenotype> one"``: the AUC of one classifier's held-out ``scores`` per phenotype."""
    kinds = [phenotypes[v.key] for v in held]
    return {f"{p.value} one": phenotype_auc(scores, kinds, p) for p in Phenotype}


def own_classifier_auc(
    x: Matrices,
    fit: Sequence[TrainingVertebra],
    held: Sequence[TrainingVertebra],
    phenotypes: Mapping[VertebraKey, Phenotype | None],
    phenotype: Phenotype,
) -> float:
    """Held-out AUC of the recipe fitted on the healthy and ``phenotype`` vertebrae only."""
    per = len(fit[0].slices)
    keep_fit = [i for i, v in enumerate(fit) if phenotypes[v.key] in (None, phenotype)]
    keep_held = [i for i, v in enumerate(held) if phenotypes[v.key] in (None, phenotype)]
    rows = np.concatenate([np.arange(i * per, (i + 1) * per) for i in keep_fit])
    _, auc = holdout_fit(
        x[0][rows], x[1][keep_held], [fit[i] for i in keep_fit], [held[i] for i in keep_held]
    )
    return auc


def feature_row(
    x: Matrices,
    fit: Sequence[TrainingVertebra],
    held: Sequence[TrainingVertebra],
    phenotypes: Mapping[VertebraKey, Phenotype | None],
) -> dict[str, float]:
    """AUC and C of the recipe on features ``x``, and its per-phenotype AUCs (one and own)."""
    classifier, auc = holdout_fit(*x, fit, held)
    row = {"AUC": auc, "C": classifier.C}
    row |= one_classifier_columns(classifier.probability(x[1]), held, phenotypes)
    for phenotype in Phenotype:
        row[f"{phenotype.value} own"] = own_classifier_auc(x, fit, held, phenotypes, phenotype)
    return row


def supervised_row(
    fit: Sequence[TrainingVertebra],
    held: Sequence[TrainingVertebra],
    phenotypes: Mapping[VertebraKey, Phenotype | None],
) -> dict[str, float]:
    """Held-out AUCs of a ResNet-18 trained on ``fit``'s labels (CAM baselines' recipe)."""
    model = fit_resnet(fit, ClassifierConfig(), progress=False)
    scores = malignancy(model, mid_slices(held))
    row = {"AUC": float(roc_auc_score(TrainingSet("", "", held).labels(), scores))}
    return row | one_classifier_columns(scores, held, phenotypes)


def timed_row(name: str, run: Callable[[], dict[str, float]]) -> dict[str, object]:
    """Run one baseline and return its table row."""
    start = time.perf_counter()
    row = run()
    print(f"{name}: AUC {row['AUC']:.3f}", flush=True)
    return {"features": name, **row, "seconds": time.perf_counter() - start}


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
    phenotypes = {
        v.key: v.phenotype if v.label is WeakLabel.MALIGNANT else None for v in data.vertebrae
    }

    def row_of(x: Callable[[], Matrices]) -> Callable[[], dict[str, float]]:
        return lambda: feature_row(x(), fit, held, phenotypes)

    jobs = [(f"z_sem {p.stem}", row_of(lambda d=d: holdout_latents(d, fit, held)))
            for p, d in zip(paths, daes, strict=True)]  # fmt: skip
    twin = untrained_twin(daes[0], seed)
    jobs += [
        ("z_sem untrained", row_of(lambda: holdout_latents(twin, fit, held))),
        ("HU histogram, crop", row_of(lambda: histogram_rows(crop_histogram, fit, held))),
        ("HU histogram, body", row_of(lambda: histogram_rows(body_histogram, fit, held))),
    ]
    if supervised:
        jobs.append(("supervised ResNet-18", lambda: supervised_row(fit, held, phenotypes)))
    rows = [timed_row(name, run) for name, run in jobs]
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    app()
