"""Does the healthy edit of Eq. (1) remove the lesions, and only them? Held-out training subjects.

Usage:

    python benchmarks/experiment.py hideseek-edit-localisation [DAE.pt ...] [--p-target P] \
        [--steps S D] [--vertebrae N]

Hide-and-Seek needs a healthy edit ``I_healthy`` that differs from the image *on the lesions*:
brighter where bone was destroyed (lytic), darker where it was added (blastic). This measures it
directly with the phantom's lesion masks, which no method sees. Per DAE (default: the dataset's):

* the latent classifier is fitted exactly as the method fits it (standardised ``z_sem``, C by
  grouped CV) on the labelled training vertebrae of the subjects the DAE quality report keeps
  (``wsbench.plugins.common.dae.quality.latent_auc_split``); its held-out AUC is printed;
* on the held-out subjects' malignant vertebrae with a lesion on the mid slice (all of them, or
  the first ``--vertebrae`` for a quick look; the method's default DDIM steps unless
  ``--steps``) each ``z`` is edited to ``p_target`` (the method's 1e-4 unless ``--p-target``);
  ``R = decode(x_T, z)``, ``H = decode(x_T, z_healthy)``;
* over body pixels, the ROC-AUC with which each signed map finds lytic pixels (``H − I`` and the
  edit alone ``H − R``) and blastic pixels (``I − H``, ``R − H``), each against non-lesion body
  pixels; the reconstruction error (``R − I``, ``I − R``) is the no-edit reference;
* the mean |HU| the edit changes on lesion and on other body pixels, and ``c(encode(H))`` against
  ``c(encode(R))``.

An edit that works has edit-alone AUCs well above 0.5 and changes lesion pixels more than the
rest; an edit the decoder ignores leaves ``H ≈ R``, and the ``H − I`` AUCs then only restate the
reconstruction error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from sklearn.metrics import roc_auc_score

from wsbench.contract import BLASTIC, LYTIC, PreparedDataset, Split, WeakLabel
from wsbench.plugins.common.dae.latent import encode_slices
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.common.dae.quality import holdout_classifier, latent_auc_split, mid_slices
from wsbench.plugins.hideseek import HideAndSeek
from wsbench.plugins.hideseek.attribution import P_TARGET, healthy_latent

from .common import MID, dae_path, prepared, threads

DEFAULT_STEPS = (HideAndSeek().steps_stochastic, HideAndSeek().steps_decode)

app = typer.Typer(add_completion=False, help=__doc__)


def decoded_hu(
    dae: DiffusionAutoencoder, x_t: torch.Tensor, z: np.ndarray, steps: int
) -> np.ndarray:
    """``decode(x_T, z)`` in HU at ``steps`` decoding steps."""
    with torch.inference_mode():
        out = dae.decode(x_t, torch.as_tensor(z, dtype=torch.float32), steps)
    return dae.to_hu(out[:, 0].numpy())


def pixel_auc(score: np.ndarray, lesions: np.ndarray, body: np.ndarray, label: int) -> float:
    """ROC-AUC of ``score`` for pixels of lesion ``label`` against non-lesion body pixels."""
    positive = lesions == label
    negative = body & (lesions == 0)
    chosen = positive | negative
    return float(roc_auc_score(positive[chosen], score[chosen]))


def localisation(
    dae: DiffusionAutoencoder,
    data: PreparedDataset,
    p_target: float,
    steps: tuple[int, int],
    limit: int | None = None,
) -> dict[str, float]:
    """One row of the table for ``dae`` on ``data``: edits to ``p_target``, ``steps`` =
    (stochastic encoding, decoding) DDIM steps, on the first ``limit`` held-out malignant
    vertebrae (all when ``None``)."""
    fit, held = latent_auc_split(data.training_set(), 0)
    classifier, auc = holdout_classifier(dae, fit, held)
    plane = classifier.plane
    held_keys = {v.key for v in held}
    prepared = [
        v
        for v in data.split(Split.TRAIN)
        if v.key in held_keys and v.label == WeakLabel.MALIGNANT and v.reference.any()
    ][:limit]
    image = mid_slices(prepared)
    lesions = np.stack([v.reference for v in prepared])
    body = np.stack([v.body[MID] for v in prepared]).astype(bool)
    z = encode_slices(dae, image)
    with torch.inference_mode():
        x = torch.from_numpy(dae.to_unit(image)).unsqueeze(1)
        x_t = dae.stochastic_encode(x, torch.as_tensor(z, dtype=torch.float32), steps[0])
    recon = decoded_hu(dae, x_t, z, steps[1])
    healthy = decoded_hu(dae, x_t, healthy_latent(z, plane, p_target), steps[1])
    image = image.clip(*dae.hu_window)
    edit = np.abs(healthy - recon)
    on_lesion = lesions > 0
    off_lesion = body & ~on_lesion
    return {
        "C": classifier.C,
        "held-out AUC": float(auc),
        "vertebrae": len(prepared),
        "lytic AUC H−I": pixel_auc(healthy - image, lesions, body, LYTIC),
        "lytic AUC H−R": pixel_auc(healthy - recon, lesions, body, LYTIC),
        "lytic AUC R−I": pixel_auc(recon - image, lesions, body, LYTIC),
        "blastic AUC I−H": pixel_auc(image - healthy, lesions, body, BLASTIC),
        "blastic AUC R−H": pixel_auc(recon - healthy, lesions, body, BLASTIC),
        "blastic AUC I−R": pixel_auc(image - recon, lesions, body, BLASTIC),
        "edit |HU| lesion": float(edit[on_lesion].mean()),
        "edit |HU| other body": float(edit[off_lesion].mean()),
        "c(enc(R))": float(plane.probability(encode_slices(dae, recon)).mean()),
        "c(enc(H))": float(plane.probability(encode_slices(dae, healthy)).mean()),
    }


@app.command()
def main(
    checkpoints: Annotated[list[Path] | None, typer.Argument(help="DAE checkpoints")] = None,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    p_target: Annotated[float, typer.Option(help="Eq. (1) target probability")] = P_TARGET,
    steps: Annotated[
        tuple[int, int], typer.Option(help="DDIM steps: stochastic encoding, decoding")
    ] = DEFAULT_STEPS,
    vertebrae: Annotated[
        int | None, typer.Option(help="first held-out malignant vertebrae only (default: all)")
    ] = None,
) -> None:
    """Print one localisation row per DAE."""
    threads(1)
    data = prepared(dataset)
    paths = checkpoints or [dae_path(data)]
    rows = []
    for path in paths:
        dae = DiffusionAutoencoder.load(path)
        row = {"DAE": path.name, **localisation(dae, data, p_target, steps, vertebrae)}
        rows.append(row)
        print(pd.Series(row).to_string(), flush=True)
    print(f"{steps[0]}/{steps[1]} DDIM steps; p_target {p_target}")
    print(pd.DataFrame(rows).round(3).T.to_string(header=False))
