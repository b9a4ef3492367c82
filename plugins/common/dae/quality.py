"""Quality report of a trained diffusion autoencoder, written into its model card.

On the training split only (methods never see the test split): a seeded :data:`AUC_HOLDOUT` of
the training subjects is held out. Reported: SSIM/PSNR (network units, data range 2) of
``decode(stochastic_encode(x, z), z)`` on the held-out vertebrae's mid-sagittal slices at stated
step counts (these subjects were in the DAE's unsupervised training data, so this measures how
well it reproduces images, not how it generalises); the held-out ROC-AUC of the latent probe
(:mod:`wsbench.plugins.common.dae.latent`) fitted on the kept subjects, also for an untrained
encoder (the level random features reach); how much the decoder uses ``z_sem``
(:func:`latent_swap_hu`); and a figure (original / reconstruction / |difference|).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import roc_auc_score

from wsbench.api import (
    N_CENTRAL_SLICES,
    ModelKey,
    TrainingSet,
    TrainingVertebra,
    WeakLabel,
    module_device,
    subject_holdout,
    write_card,
)
from wsbench.plugins.common.dae.latent import LatentClassifier, encode_slices, fit_latent_classifier
from wsbench.plugins.common.dae.network import DiffusionAutoencoder, to_array, to_tensor

EVAL_STEPS = (20, 20)
"""(stochastic encode, decode) DDIM steps of the quality report: Hide-and-Seek's default."""
AUC_HOLDOUT = 0.3
"""Fraction of training subjects held out for the report."""
SWAP_IMAGES = 64
"""Held-out slices (a seeded sample) on which :func:`latent_swap_hu` is measured."""


def mid_slices(vertebrae: Sequence[Any]) -> np.ndarray:
    """Mid-sagittal HU slices ``(N, H, W)`` of prepared or training vertebrae."""
    return np.stack([v.slices[N_CENTRAL_SLICES // 2] for v in vertebrae]).astype(np.float32)


@torch.inference_mode()
def reconstruct_slices(
    dae: DiffusionAutoencoder, slices_hu: np.ndarray, steps: tuple[int, int], batch_size: int = 64
) -> np.ndarray:
    """``decode(stochastic_encode(x, z), z)`` of HU slices, returned in network units."""
    x = to_tensor(dae.to_unit(slices_hu), module_device(dae))
    out = [dae.reconstruct(part, *steps) for part in x.split(batch_size)]
    return torch.cat(out)[:, 0].float().cpu().numpy()


def report_sample(slices: np.ndarray, seed: int) -> np.ndarray:
    """The quality report's seeded sample of :data:`SWAP_IMAGES` of ``slices``."""
    return slices[np.random.default_rng(seed).permutation(len(slices))[:SWAP_IMAGES]]


@torch.inference_mode()
def latent_swap_hu(
    dae: DiffusionAutoencoder, slices_hu: np.ndarray, steps: tuple[int, int]
) -> float:
    """How much the decoder uses ``z_sem``: mean |HU| change of ``decode(x_T, z)`` when each
    slice's ``z`` is replaced by the next slice's, ``x_T`` (its own stochastic code) fixed.

    Zero means the decoder ignores ``z_sem`` (an edit of ``z`` cannot change the image).
    """
    x = to_tensor(dae.to_unit(slices_hu), module_device(dae))
    z = dae.encode(x)
    x_t = dae.stochastic_encode(x, z, steps[0])
    own = to_array(dae.decode(x_t, z, steps[1])[:, 0])
    swapped = to_array(dae.decode(x_t, z.roll(1, dims=0), steps[1])[:, 0])
    return float(np.abs(dae.to_hu(swapped) - dae.to_hu(own)).mean())


def similarity(original: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image SSIM and PSNR of ``(N, H, W)`` arrays in network units (data range 2)."""
    ssim = [
        structural_similarity(a, b, data_range=2.0) for a, b in zip(original, other, strict=True)
    ]
    psnr = [
        peak_signal_noise_ratio(a, b, data_range=2.0) for a, b in zip(original, other, strict=True)
    ]
    return np.asarray(ssim), np.asarray(psnr)


def latent_auc_split(
    training: TrainingSet, seed: int
) -> tuple[list[TrainingVertebra], list[TrainingVertebra]]:
    """The labelled training vertebrae ``(fitted, held out)`` of the latent AUC (seeded,
    :data:`AUC_HOLDOUT` of the subjects held out whole)."""
    labelled = training.labelled()
    fit_rows, held_rows = subject_holdout(labelled, AUC_HOLDOUT, seed)
    return [labelled[i] for i in fit_rows], [labelled[i] for i in held_rows]


def holdout_fit(
    x_fit: np.ndarray,
    x_held: np.ndarray,
    fit: Sequence[TrainingVertebra],
    held: Sequence[TrainingVertebra],
) -> tuple[LatentClassifier, float]:
    """The latent-classifier recipe fitted on feature rows ``x_fit`` (every slice of ``fit``, in
    order) and its ROC-AUC on ``x_held`` (one row per ``held`` vertebra's mid slice)."""
    per = len(fit[0].slices)
    labels = np.repeat(TrainingSet("", "", fit).labels(), per)
    classifier = fit_latent_classifier(x_fit, labels, np.repeat(np.arange(len(fit)), per))
    y_held = TrainingSet("", "", held).labels()
    p_held = classifier.probability(x_held)
    auc = roc_auc_score(y_held, p_held) if len(set(y_held.tolist())) == 2 else float("nan")
    return classifier, float(auc)


def holdout_latents(
    dae: DiffusionAutoencoder, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[np.ndarray, np.ndarray]:
    """``z_sem`` of every slice of ``fit`` (in order) and of ``held``'s mid slices."""
    z_fit = encode_slices(dae, np.concatenate([v.slices for v in fit]))
    return z_fit, encode_slices(dae, mid_slices(held))


def holdout_classifier(
    dae: DiffusionAutoencoder, fit: Sequence[TrainingVertebra], held: Sequence[TrainingVertebra]
) -> tuple[LatentClassifier, float]:
    """The latent classifier fitted on ``fit``'s slices and its ROC-AUC on ``held``'s mid slices."""
    return holdout_fit(*holdout_latents(dae, fit, held), fit, held)


def untrained_twin(dae: DiffusionAutoencoder, seed: int) -> DiffusionAutoencoder:
    """A freshly initialised DAE of ``dae``'s config and HU window (weights from ``seed``)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DiffusionAutoencoder(dae.config, dae.hu_window).to(module_device(dae)).eval()


def latent_auc(dae: DiffusionAutoencoder, training: TrainingSet, seed: int) -> dict[str, Any]:
    """ROC-AUC of the latent logistic regression on held-out training subjects, and the same
    for an untrained encoder (``latent_auc_untrained``, the chance level of random features).

    Fitted (standardised, C by grouped CV:
    :func:`~wsbench.plugins.common.dae.latent.fit_latent_classifier`) on all central slices of the
    kept subjects' labelled vertebrae, scored on the held-out vertebrae's mid-sagittal slices. Too
    few labelled subjects give ``latent_auc: None`` and the reason (``latent_auc_error``) instead of
    a number.
    """
    try:
        fit, held = latent_auc_split(training, seed)
        classifier, auc = holdout_classifier(dae, fit, held)
    except ValueError as exc:
        return {"latent_auc": None, "latent_auc_error": str(exc)}
    _, untrained = holdout_classifier(untrained_twin(dae, seed), fit, held)
    return {
        "latent_auc": round(auc, 4),
        "latent_auc_untrained": round(untrained, 4),
        "latent_auc_n_fit": len(fit),
        "latent_auc_n_heldout": len(held),
        "latent_auc_heldout_malignant": int(TrainingSet("", "", held).labels().sum()),
        "latent_C": classifier.C,
    }


def reconstruction_figure(
    originals: np.ndarray, recons: np.ndarray, titles: Sequence[str], path: Path
) -> None:
    """Rows of original / reconstruction / |difference| (network units) saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(originals)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows), squeeze=False)
    for row, (a, b, title) in enumerate(zip(originals, recons, titles, strict=True)):
        panels = [(a, "gray", (-1, 1)), (b, "gray", (-1, 1)), (np.abs(a - b), "magma", (0, 0.5))]
        for col, (img, cmap, (lo, hi)) in enumerate(panels):
            axes[row, col].imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            axes[row, col].set_axis_off()
        axes[row, 0].text(0, 1.02, title, fontsize=7, transform=axes[row, 0].transAxes)
    for col, name in enumerate(["original", "reconstruction", "|difference| (0-0.5)"]):
        axes[0, col].set_title(name, fontsize=8, pad=14)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_vertebrae(training: TrainingSet, seed: int) -> list[TrainingVertebra]:
    """The vertebrae the reconstruction is measured on: the held-out subjects' labelled
    vertebrae (:func:`latent_auc_split`), or every training vertebra when there are too few
    labelled subjects to hold any out."""
    try:
        return latent_auc_split(training, seed)[1]
    except ValueError:
        return list(training)


def quality_report(
    dae: DiffusionAutoencoder,
    training: TrainingSet,
    steps: tuple[int, int] = EVAL_STEPS,
    seed: int = 0,
    figure: Path | None = None,
    figure_rows: int = 6,
) -> dict[str, Any]:
    """Reconstruction SSIM/PSNR, the decoder's use of ``z_sem`` and the latent AUC on held-out
    training subjects (see the module docstring)."""
    held = report_vertebrae(training, seed)
    if not held:
        raise ValueError(f"training split of {training.name!r} is empty: nothing to evaluate")
    started = time.perf_counter()
    slices = mid_slices(held)
    recon = reconstruct_slices(dae, slices, steps)
    original = dae.to_unit(slices)
    ssim, psnr = similarity(original, recon)
    seconds = time.perf_counter() - started
    malignant = np.array([v.label == WeakLabel.MALIGNANT for v in held])
    healthy = np.array([v.label == WeakLabel.HEALTHY for v in held])
    report: dict[str, Any] = {
        "eval_steps_stochastic_decode": list(steps),
        "evaluated_on": "held-out training subjects (seeded)",
        "heldout_n": len(held),
        "ssim_mean": round(float(ssim.mean()), 4),
        "ssim_sd": round(float(ssim.std()), 4),
        "psnr_mean_db": round(float(psnr.mean()), 2),
        "psnr_sd_db": round(float(psnr.std()), 2),
        "ssim_mean_healthy": round(float(ssim[healthy].mean()), 4) if healthy.any() else None,
        "ssim_mean_malignant": round(float(ssim[malignant].mean()), 4) if malignant.any() else None,
        "eval_seconds_per_image": round(seconds / len(held), 3),
    }
    report["latent_swap_hu"] = round(latent_swap_hu(dae, report_sample(slices, seed), steps), 2)
    report.update(latent_auc(dae, training, seed))
    if figure is not None:
        picks = np.random.default_rng(seed).choice(len(held), min(figure_rows, len(held)), False)
        titles = [f"{held[i].key.id} {held[i].label.value if held[i].label else ''} "
                  f"SSIM {ssim[i]:.3f}" for i in picks]  # fmt: skip
        reconstruction_figure(original[picks], recon[picks], titles, figure)
        report["figure"] = figure.name
    return report


def evaluate_and_card(
    path: Path, training: TrainingSet, steps: tuple[int, int], seed: int, device: str = "cpu"
) -> dict[str, Any]:
    """Run :func:`quality_report` on ``device`` on the checkpoint at ``path`` and add it to its
    model card."""
    dae = DiffusionAutoencoder.load(path, device=device)
    report = quality_report(dae, training, steps, seed, figure=path.with_suffix(".png"))
    card = path.with_suffix(".json")
    record = json.loads(card.read_text())
    key = ModelKey(record["kind"], record["dataset_fingerprint"], record["config"])
    facts = {k: v for k, v in record.items() if k not in ("title", *key.as_dict())}
    write_card(path, key, record["title"], {**facts, **report})
    return report
