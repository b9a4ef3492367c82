"""Does the healthy edit of Eq. (1) survive decoding? Per latent-classifier C, on training data.

    python benchmarks/hideseek_edit_retention.py [--checkpoint DAE.pt] [--vertebrae 24]

Hide-and-Seek needs an edit of ``z_sem`` that the decoder turns into a visibly healthier image: Δ
(Eq. 3) compares re-encoded images with ``c(z_healthy)``. For each ``C`` of the latent classifier's
grid (standardised ``z_sem``, balanced logistic regression fitted on all central slices of the
labelled training vertebrae, exactly as :mod:`wsbench.plugins.hideseek.latent_classifier` does but
with ``C`` fixed) and for both edit directions (``normal`` in raw ``z``, ``standardised``), it takes
a seeded sample of malignant **training** vertebrae (labels only, no lesion mask), edits each mid
slice's ``z`` to ``c = p_target`` and reports:

* the edit's length in standardised units, and the mean |HU| change it makes to the decoded image
  (``decode(x_T, z_healthy)`` against ``decode(x_T, z)``, the same stochastic code ``x_T``);
* ``c`` of the original latents, of the re-encoded reconstruction and of the re-encoded healthy
  edit, and the fraction of edits whose re-encoding the classifier calls healthy (< 0.5).

An edit that "survives" drops ``c(encode(I_healthy))`` towards ``p_target``; one that does not
leaves it where ``c(encode(reconstruction))`` is. Figures are printed as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from wsbench.plugins.hideseek import DEFAULT_STEPS, dae_checkpoint
from wsbench.plugins.hideseek.attribution import P_TARGET, healthy_latent
from wsbench.plugins.hideseek.latent_classifier import C_GRID, encode_slices, fit_latent_classifier
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder

from wsbench.contract import N_CENTRAL_SLICES, WeakLabel
from wsbench.harness.runner import RunConfig, prepare_dataset

app = typer.Typer(add_completion=False, help=__doc__)


def decoded_hu(dae: DiffusionAutoencoder, x_t: torch.Tensor, z: np.ndarray, steps: int):
    """``decode(x_T, z)`` in HU."""
    with torch.inference_mode():
        out = dae.decode(x_t, torch.as_tensor(z, dtype=torch.float32), steps)
    return dae.to_hu(out[:, 0].numpy())


@app.command()
def main(
    checkpoint: Annotated[Path | None, typer.Option(help="DAE (default: the dataset's)")] = None,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    vertebrae: Annotated[int, typer.Option(help="malignant training vertebrae sampled")] = 24,
    seed: Annotated[int, typer.Option(help="sample seed")] = 1,
) -> None:
    """Print the retention table for every C of the grid and both edit directions."""
    torch.set_num_threads(1)
    _, data = prepare_dataset(RunConfig("hideseek", dataset))
    training = data.training_set().labelled()
    path = checkpoint or dae_checkpoint(training)
    dae = DiffusionAutoencoder.load(path).eval()
    z_all = encode_slices(dae, np.concatenate([v.slices for v in training]))
    labels = np.repeat(training.labels(), N_CENTRAL_SLICES)
    groups = np.repeat(np.arange(len(training)), N_CENTRAL_SLICES)
    malignant = list(training.where(WeakLabel.MALIGNANT))
    rng = np.random.default_rng(seed)
    picked = [malignant[i] for i in rng.choice(len(malignant), vertebrae, replace=False)]
    mids = np.stack([v.slices[N_CENTRAL_SLICES // 2] for v in picked])
    z = encode_slices(dae, mids)
    steps_stochastic, steps_decode = DEFAULT_STEPS
    with torch.inference_mode():
        x = torch.from_numpy(dae.to_unit(mids)).unsqueeze(1)
        x_t = dae.stochastic_encode(x, torch.as_tensor(z, dtype=torch.float32), steps_stochastic)
    reconstruction = decoded_hu(dae, x_t, z, steps_decode)
    z_reconstruction = encode_slices(dae, reconstruction)
    rows = []
    for c in C_GRID:
        classifier = fit_latent_classifier(z_all, labels, groups, c_grid=(c,), seed=seed)
        plane = classifier.plane
        directions = {"normal": None, "standardised": classifier.standardised_direction()}
        for name, direction in directions.items():
            z_healthy = healthy_latent(z, plane, P_TARGET, direction)
            healthy = decoded_hu(dae, x_t, z_healthy, steps_decode)
            p_reencoded = plane.probability(encode_slices(dae, healthy))
            rows.append({
                "C": c,
                "direction": name,
                "edit (SD units)": float(np.median(
                    np.linalg.norm((z_healthy - z) / classifier.scale, axis=1))),
                "edit |HU|": float(np.abs(healthy - reconstruction).mean()),
                "c(z)": float(plane.probability(z).mean()),
                "c(enc(recon))": float(plane.probability(z_reconstruction).mean()),
                "c(enc(healthy))": float(p_reencoded.mean()),
                "called healthy": float(np.mean(p_reencoded < 0.5)),
            })  # fmt: skip
    print(f"DAE {path.name}; {vertebrae} malignant training vertebrae; "
          f"{steps_stochastic}/{steps_decode} DDIM steps")  # fmt: skip
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    app()
