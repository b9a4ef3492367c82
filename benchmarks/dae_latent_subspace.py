"""Where does the malignancy signal sit in ``z_sem``? Latent AUC on the top-k principal components.

    python benchmarks/dae_latent_subspace.py [--checkpoint DAE.pt] [--dataset phantom]

Hide-and-Seek's healthy edit moves ``z_sem`` along the latent classifier's normal; it can only
change the decoded image if that direction is one the decoder reads. The decoder reads what varies
between images' latents, i.e. the leading principal components. For the DAE (default: the dataset's
Hide-and-Seek DAE) and for an untrained DAE of the same config (the level random convolutional
features reach), this prints the cumulative variance of the leading components and the held-out
ROC-AUC of the latent classifier fitted on the top k components only, with exactly the quality
report's protocol (:func:`wsbench.plugins.shared.dae.training.latent_auc`: all central slices of 70
% of the training subjects, standardised, balanced logistic regression with C by grouped CV, AUC on
the held-out subjects' mid slices).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from wsbench.plugins.hideseek import dae_checkpoint
from wsbench.plugins.hideseek.latent_classifier import encode_slices, fit_latent_classifier
from wsbench.plugins.shared.dae.network import DiffusionAutoencoder
from wsbench.plugins.shared.dae.training import latent_auc_split, mid_slices, untrained_twin

from wsbench.contract import TrainingSet, TrainingVertebra
from wsbench.harness.runner import RunConfig, prepare_dataset

COMPONENTS = (1, 2, 4, 8, 16, 32, 64, 128, 512)
"""Numbers of leading principal components tried."""

app = typer.Typer(add_completion=False, help=__doc__)


def subspace_rows(
    dae: DiffusionAutoencoder,
    fit: list[TrainingVertebra],
    held: list[TrainingVertebra],
    name: str,
) -> list[dict[str, object]]:
    """Cumulative variance and held-out AUC of the classifier on the top-k components."""
    per = len(fit[0].slices)
    z_fit = encode_slices(dae, np.concatenate([v.slices for v in fit]))
    z_held = encode_slices(dae, mid_slices(held))
    labels = np.repeat(TrainingSet("", "", fit).labels(), per)
    groups = np.repeat(np.arange(len(fit)), per)
    y_held = TrainingSet("", "", held).labels()
    pca = PCA().fit(z_fit)
    variance = np.cumsum(pca.explained_variance_ratio_)
    rows = []
    for k in (k for k in COMPONENTS if k <= len(variance)):
        classifier = fit_latent_classifier(pca.transform(z_fit)[:, :k], labels, groups)
        p_held = classifier.probability(pca.transform(z_held)[:, :k])
        rows.append({"model": name, "components": k, "variance": float(variance[k - 1]),
                     "C": classifier.C, "AUC": float(roc_auc_score(y_held, p_held))})  # fmt: skip
    return rows


@app.command()
def main(
    checkpoint: Annotated[Path | None, typer.Option(help="DAE (default: the dataset's)")] = None,
    dataset: Annotated[str, typer.Option(help="registered dataset")] = "phantom",
    seed: Annotated[int, typer.Option(help="hold-out and untrained-weights seed")] = 0,
) -> None:
    """Print the table for the DAE and its untrained twin."""
    torch.set_num_threads(1)
    _, data = prepare_dataset(RunConfig("hideseek", dataset))
    fit, held = latent_auc_split(data.training_set(), seed)
    path = checkpoint or dae_checkpoint(data.training_set())
    dae = DiffusionAutoencoder.load(path).eval()
    rows = subspace_rows(dae, fit, held, path.stem)
    rows += subspace_rows(untrained_twin(dae, seed), fit, held, "untrained")
    print(f"{len(fit)} training vertebrae fitted, {len(held)} held out "
          f"({int(TrainingSet('', '', held).labels().sum())} malignant)")  # fmt: skip
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    app()
