"""What storing a model's weights in float16 or bfloat16 changes in what it computes (the figures
of docs/notes/weights-log.md, by which `wsbench compact --dtype` is chosen).

Usage:

    python benchmarks/experiment.py weights-precision CHECKPOINT [--images 16] [--seed 0]
        [--probe LATENT_CLASSIFIER]

``CHECKPOINT`` is a DAE (card kind ``dae`` or ``dae-healthy``) or CAM classifier (``classifier``)
weights file as trained, beside its card; its weights are the float32 reference. Each storage
dtype goes through the real path: :func:`~wsbench.models.store.save_weights` to a temporary
safetensors file, then :func:`~wsbench.models.store.load_weights` (which computes in float32).
Per dtype:

- DAE: on ``--images`` seeded mid slices of the quality report's held-out training vertebrae,
  SSIM/PSNR of the reconstruction (the report's 20/20 steps) against the original and SSIM against
  the float32 reconstruction (mean and minimum); on all held-out mid slices, max |Δz_sem| / max
  |z_sem|, and with ``--probe`` (a latent classifier fitted on this DAE), the largest change of its
  probability and its ROC-AUC there (in-sample: the probe was fitted on the whole split).
- classifier: on the test split's mid slices, the largest logit change, the ROC-AUC and how many
  predictions (p ≥ 0.5) differ from the reference's.

Prints one Markdown table; the largest absolute weight (float16 overflows past 65 504) heads it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import torch
import typer
from sklearn.metrics import roc_auc_score

from wsbench.contract import Split, TrainingSet
from wsbench.models.store import COMPACT_DTYPES, ModelKey, load_weights, read_card, save_weights
from wsbench.plugins.cam.classifier import build_resnet18, slices_tensor
from wsbench.plugins.common.dae.latent import LatentClassifier, encode_slices
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.common.dae.quality import (
    EVAL_STEPS,
    mid_slices,
    reconstruct_slices,
    report_vertebrae,
    similarity,
)

from .common import markdown, prepared, threads

REFERENCE = "float32"
DAE_KINDS = ("dae", "dae-healthy")

app = typer.Typer(add_completion=False, help=__doc__)


def float32_record(path: Path) -> dict[str, Any]:
    """The record stored in ``path`` with every half-precision tensor of its state dict as
    float32 (the reference the storage dtypes are compared with)."""
    record = load_weights(path)
    state = record["state_dict"]
    record["state_dict"] = {k: t.float() if t.is_floating_point() else t for k, t in state.items()}
    return record


def stored_as(record: dict[str, Any], dtype: str, folder: Path) -> Path:
    """``record`` written with its float32 tensors as ``dtype`` (``float32``: as they are)."""
    path = folder / f"{dtype}.safetensors"
    save_weights(record, path, None if dtype == REFERENCE else dtype)
    return path


def dae_rows(
    path: Path, images: int, seed: int, probe: Path | None, folder: Path
) -> list[dict[str, Any]]:
    """One row per storage dtype of the DAE at ``path`` (see the module docstring)."""
    data = prepared()
    held = report_vertebrae(data.training_set(), seed)
    slices = mid_slices(held)
    picked = slices[np.random.default_rng(seed).permutation(len(slices))[:images]]
    labels = TrainingSet("", "", held).labels()
    classifier = None
    if probe is not None:
        card = read_card(probe)
        key = ModelKey(card["kind"], card["dataset_fingerprint"], card["config"])
        classifier = LatentClassifier.load(probe, key)
    record = float32_record(path)
    rows, reference = [], {}
    for dtype in (REFERENCE, *COMPACT_DTYPES):
        dae = DiffusionAutoencoder.load(stored_as(record, dtype, folder))
        recon = reconstruct_slices(dae, picked, EVAL_STEPS)
        z = encode_slices(dae, slices)
        reference = reference or {"recon": recon, "z": z}
        ssim, psnr = similarity(dae.to_unit(picked), recon)
        agreement, _ = similarity(reference["recon"], recon)
        row = {
            "dtype": dtype,
            "SSIM": round(float(ssim.mean()), 4),
            "PSNR dB": round(float(psnr.mean()), 2),
            "SSIM vs fp32 mean": round(float(agreement.mean()), 4),
            "SSIM vs fp32 min": round(float(agreement.min()), 4),
            "max|Δz|/max|z|": float(f"{np.abs(z - reference['z']).max() / np.abs(z).max():.2g}"),
        }
        if classifier is not None:
            p = classifier.probability(z)
            reference.setdefault("p", p)
            row["max|Δp| probe"] = float(f"{np.abs(p - reference['p']).max():.2g}")
            row["probe AUC (in-sample)"] = round(float(roc_auc_score(labels, p)), 4)
        rows.append(row)
    return rows


@torch.no_grad()
def classifier_rows(path: Path, folder: Path) -> list[dict[str, Any]]:
    """One row per storage dtype of the CAM classifier at ``path`` (see the module docstring)."""
    test = prepared().split(Split.TEST)
    labelled = [v for v in test if v.label is not None]
    labels = TrainingSet("", "", [v.training_view() for v in labelled]).labels()
    batch = slices_tensor(np.stack([v.slices[v.mid] for v in labelled]))
    record = float32_record(path)
    rows, reference = [], None
    for dtype in (REFERENCE, *COMPACT_DTYPES):
        model = build_resnet18()
        model.load_state_dict(load_weights(stored_as(record, dtype, folder))["state_dict"])
        logits = torch.cat([model.eval()(part) for part in batch.split(128)]).flatten().numpy()
        reference = logits if reference is None else reference
        rows.append({
            "dtype": dtype,
            "max|Δlogit|": float(f"{np.abs(logits - reference).max():.2g}"),
            "AUC (test)": round(float(roc_auc_score(labels, logits)), 4),
            "predictions changed": int(((logits >= 0) != (reference >= 0)).sum()),
            "n": len(labels),
        })  # fmt: skip
    return rows


@app.command()
def weights_precision(
    checkpoint: Annotated[Path, typer.Argument(help="A DAE or classifier weights file (card).")],
    images: Annotated[int, typer.Option(help="DAE: slices reconstructed per dtype.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed of the held-out split and the slices.")] = 0,
    probe: Annotated[
        Path | None, typer.Option(help="DAE: a latent classifier fitted on it.")
    ] = None,
    torch_threads: Annotated[int, typer.Option("--threads", help="Torch CPU threads.")] = 2,
) -> None:
    """Compare the float32 weights of CHECKPOINT with their float16 and bfloat16 storage."""
    threads(torch_threads)
    kind = read_card(checkpoint).get("kind")
    largest = max(
        float(t.abs().max()) for t in load_weights(checkpoint)["state_dict"].values()
        if t.is_floating_point() and t.numel()
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        if kind in DAE_KINDS:
            rows = dae_rows(checkpoint, images, seed, probe, Path(folder))
        elif kind == "classifier":
            rows = classifier_rows(checkpoint, Path(folder))
        else:
            raise typer.BadParameter(f"{checkpoint} has card kind {kind!r}: give a DAE or "
                                     "classifier weights file with its card")  # fmt: skip
    typer.echo(f"{checkpoint.name} ({kind}): largest |weight| {largest:.4g}\n")
    typer.echo(markdown(pd.DataFrame(rows).set_index("dtype")))
