"""Can a cycle-trained re-encoder read a visible healthy edit back? Edit survival, training split.

Usage:

    python benchmarks/experiment.py hideseek-reencoder [--pairs 150] [--vertebrae 40] \
        [--epochs 30]

Eq. (3) needs ``c(encode(·))`` to fall when lesions are replaced by their healthy edit, but only
a few per cent of the logit shift of Eq. (1) survive decoding and re-encoding with the DAE's own
semantic encoder ``E``. This experiment fine-tunes a copy ``E'`` of ``E`` (decoder, ``E`` and
the classifier frozen) so that ``E'(decode(x_T, z_a)) ≈ z_a`` along the edit, ``z_a = z +
a·(z_healthy − z)`` for ``a`` in {0, 0.5, 1}, and ``E'(x) ≈ E(x)`` on the real slice (loss: mean
squared error of the standardised latents plus 0.1 × that of the classifier's logit), then
compares ``E`` and ``E'`` on held-out vertebrae.

Everything is split as in the DAE quality report (``latent_auc_split``): the latent classifier
(the shipped recipe) is fitted on the kept subjects' mid slices, ``E'`` is trained on
``--pairs`` malignant and ``--pairs`` healthy vertebrae of those subjects, and the figures come
from the first ``--vertebrae`` malignant vertebrae of the **held-out** training subjects:
``c`` of the real slice through each encoder, ``c`` of the re-encoded reconstruction ``R`` and
healthy edit ``H``, the median edit survival ``(logit c(enc R) − logit c(enc H)) / (logit c(z)
− logit p_target)``, and how well each encoder orders the half-way edit (Spearman correlation
of ``a`` with the fall of the re-encoded logit from ``R``'s, per vertebra, median: 1 = the
further the edit, the lower ``c``). 20/20 DDIM steps, one thread.
"""

from __future__ import annotations

import copy
import time
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from scipy.special import logit
from scipy.stats import spearmanr

from wsbench.contract import TrainingSet, WeakLabel
from wsbench.plugins.common.dae.latent import Hyperplane, encode_slices
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.common.dae.quality import latent_auc_split, mid_slices
from wsbench.plugins.hideseek.attribution import P_TARGET, healthy_latent
from wsbench.plugins.hideseek.latent_classifier import fit_edit_classifier

from .common import dae_path, prepared, threads

STEPS = 20
FRACTIONS = (0.0, 0.5, 1.0)
"""Where along the edit the decoded training images lie (0 = reconstruction, 1 = healthy)."""
LOGIT_WEIGHT = 0.1

app = typer.Typer(add_completion=False, help=__doc__)


def edit_images(
    dae: DiffusionAutoencoder, images_hu: np.ndarray, plane: Hyperplane
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The real slices (unit range) and, per fraction of :data:`FRACTIONS`, their decoding at
    that point of the healthy edit, with the latent each image should encode to: images
    ``(N·(1+F), 1, H, W)``, targets ``(N·(1+F), d)``, fractions ``(N·(1+F),)`` (−1 = real)."""
    z = encode_slices(dae, images_hu)
    z_healthy = healthy_latent(z, plane, P_TARGET)
    x = torch.from_numpy(dae.to_unit(images_hu)).unsqueeze(1)
    images, targets, fractions = [x], [z], [np.full(len(z), -1.0)]
    with torch.inference_mode():
        x_t = dae.stochastic_encode(x, torch.as_tensor(z, dtype=torch.float32), STEPS)
        for a in FRACTIONS:
            z_a = z + a * (z_healthy - z)
            images.append(dae.decode(x_t, torch.as_tensor(z_a, dtype=torch.float32), STEPS))
            targets.append(z_a)
            fractions.append(np.full(len(z), a))
    target = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
    return torch.cat(images), target, np.concatenate(fractions)


def train_reencoder(
    dae: DiffusionAutoencoder,
    images: torch.Tensor,
    targets: torch.Tensor,
    plane: Hyperplane,
    scale: np.ndarray,
    epochs: int,
) -> torch.nn.Module:
    """``E'``: a copy of the DAE's semantic encoder fitted to ``images`` → ``targets``."""
    encoder = copy.deepcopy(dae.encoder).train()
    sigma = torch.as_tensor(scale, dtype=torch.float32)
    normal = torch.as_tensor(plane.normal, dtype=torch.float32)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for batch in order.split(32):
            z = encoder(images[batch])
            latent = (((z - targets[batch]) / sigma) ** 2).mean()
            logit_error = (((z - targets[batch]) @ normal) ** 2).mean()
            loss = latent + LOGIT_WEIGHT * logit_error
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f}", flush=True)
    return encoder.eval()


def encoder_row(
    encode, images: torch.Tensor, fractions: np.ndarray, plane: Hyperplane, z: np.ndarray
) -> dict[str, float]:
    """Figures of one encoder (``encode``: unit images → latents) on held-out edit images."""
    with torch.inference_mode():
        logits = plane.logit(encode(images).double().numpy())
    n = len(z)
    real, recon, half, healthy = (logits[fractions == a] for a in (-1.0, 0.0, 0.5, 1.0))
    shift = plane.logit(z) - logit(P_TARGET)
    drops = [[0.0, recon[i] - half[i], recon[i] - healthy[i]] for i in range(n)]
    orders = [spearmanr(FRACTIONS, drop).statistic for drop in drops]
    return {
        "c(enc I) mean": float(np.mean(1 / (1 + np.exp(-real)))),
        "c(enc R) mean": float(np.mean(1 / (1 + np.exp(-recon)))),
        "c(enc H) mean": float(np.mean(1 / (1 + np.exp(-healthy)))),
        "survival (median)": float(np.median((recon - healthy) / shift)),
        "edit order ρ (median)": float(np.nanmedian(orders)),
    }


@app.command()
def main(
    pairs: Annotated[int, typer.Option(help="malignant and healthy training vertebrae each")] = 150,
    vertebrae: Annotated[int, typer.Option(help="held-out malignant vertebrae scored")] = 40,
    epochs: Annotated[int, typer.Option(help="training epochs of E'")] = 30,
) -> None:
    """Train ``E'`` on the kept subjects, print ``E`` against ``E'`` on held-out ones."""
    threads(1)
    torch.manual_seed(0)
    data = prepared("phantom")
    dae = DiffusionAutoencoder.load(dae_path(data))
    fit, held = latent_auc_split(data.training_set(), 0)
    fit_set = TrainingSet("", "", fit)
    labels = fit_set.labels()
    patients = np.unique([str(v.key.patient) for v in fit], return_inverse=True)[1]
    classifier, facts = fit_edit_classifier(
        encode_slices(dae, mid_slices(fit)), labels, patients, P_TARGET
    )
    plane = classifier.plane
    print(f"classifier on {len(fit)} kept vertebrae: C {facts['C']}, ‖w‖ "
          f"{facts['weights_norm']:.2f}", flush=True)  # fmt: skip
    chosen = ([v for v in fit if v.label == WeakLabel.MALIGNANT][:pairs]
              + [v for v in fit if v.label == WeakLabel.HEALTHY][:pairs])  # fmt: skip
    start = time.perf_counter()
    images, targets, _ = edit_images(dae, mid_slices(chosen), plane)
    print(f"{len(images)} training images in {time.perf_counter() - start:.0f} s", flush=True)
    start = time.perf_counter()
    reencoder = train_reencoder(dae, images, targets, plane, classifier.scale, epochs)
    print(f"E' trained in {time.perf_counter() - start:.0f} s", flush=True)
    scored = [v for v in held if v.label == WeakLabel.MALIGNANT][:vertebrae]
    test_images, _, fractions = edit_images(dae, mid_slices(scored), plane)
    z = encode_slices(dae, mid_slices(scored))
    rows = {
        "E (the DAE's encoder)": encoder_row(dae.encoder, test_images, fractions, plane, z),
        "E' (cycle-trained)": encoder_row(reencoder, test_images, fractions, plane, z),
    }
    print(f"{len(scored)} held-out malignant vertebrae, {STEPS}/{STEPS} steps, "
          f"{pairs} + {pairs} training vertebrae, {epochs} epochs")  # fmt: skip
    print(pd.DataFrame(rows).round(3).to_string())
