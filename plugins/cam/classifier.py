"""The weakly trained ResNet-18 slice classifier behind the CAM baselines (paper A.1.3).

A torchvision ResNet-18 (``weights=None``: nothing is downloaded) with a one-channel stem and one
output logit (malignant vs healthy), trained on vertebra-level labels only. Each step sees one
random slice of each vertebra's central five, in :func:`wsbench.data.intensity.hu_to_unit` units,
augmented as in paper Table 3. The class imbalance is handled by the loss: ``BCEWithLogitsLoss``
with ``pos_weight = n_healthy / n_malignant`` of the training part. A seeded fraction of the
training split's subjects is held out; AUC and F1 (at p = 0.5) on their mid-sagittal slices are
written to the model card. Trained models live in the plugin's model store (:data:`STORE`).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn
from torchvision.models import resnet18

from wsbench.api import (
    HU_WINDOW,
    N_CENTRAL_SLICES,
    ModelKey,
    ModelStore,
    TrainingSet,
    TrainingVertebra,
    augment_batch,
    augmentations,
    hu_to_unit,
    load_weights,
    progress_bar,
    sample_slices,
    subject_holdout,
    write_card,
)

KIND = "classifier"
VERSION = 1
STORE = ModelStore(Path(__file__).parent / "weights")
"""The classifier shipped for the default phantom, then the user cache."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that changes the trained classifier (part of its model-store key)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form, with the architecture version and the intensity window."""
        return {
            **asdict(self),
            "arch": "resnet18-1ch-1logit",
            "version": VERSION,
            "hu_window": list(HU_WINDOW),
        }


def build_resnet18() -> nn.Module:
    """Untrained torchvision ResNet-18 with a one-channel 7×7 stem and a single logit."""
    model = resnet18(weights=None, num_classes=1)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def model_key(fingerprint: str, config: ClassifierConfig) -> ModelKey:
    """Model-store identity of a classifier trained on ``fingerprint`` with ``config``."""
    return ModelKey(KIND, fingerprint, config.as_dict())


def slices_tensor(images: np.ndarray) -> torch.Tensor:
    """HU slices ``(H, W)`` or ``(N, H, W)`` as a network batch ``(N, 1, H, W)``."""
    unit = hu_to_unit(images)
    return torch.from_numpy(unit.reshape(-1, 1, *unit.shape[-2:]))


@torch.no_grad()
def malignancy(model: nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Malignant probability of each HU slice of ``(N, H, W)``."""
    model.eval()
    batch = slices_tensor(images)
    starts = range(0, len(batch), batch_size)
    chunks = [torch.sigmoid(model(batch[i : i + batch_size])) for i in starts]
    return torch.cat(chunks).flatten().numpy()


def validation_scores(model: nn.Module, vertebrae: Sequence[TrainingVertebra]) -> dict[str, float]:
    """AUC and F1 (p ≥ 0.5) on the mid-sagittal slices of held-out vertebrae."""
    labels = TrainingSet("", "", vertebrae).labels()
    mid = np.stack([v.slices[N_CENTRAL_SLICES // 2] for v in vertebrae])
    prob = malignancy(model, mid)
    auc = float(roc_auc_score(labels, prob)) if len(set(labels.tolist())) == 2 else float("nan")
    f1 = float(f1_score(labels, prob >= 0.5, zero_division=0.0))
    return {
        "val_auc": round(auc, 4),
        "val_f1": round(f1, 4),
        "val_n": len(vertebrae),
        "val_malignant": int(labels.sum()),
    }


def fit_resnet(
    vertebrae: Sequence[TrainingVertebra], config: ClassifierConfig, progress: bool = True
) -> nn.Module:
    """Train a fresh ResNet-18 on labelled vertebrae (deterministic under ``config.seed``).

    Each epoch splits a seeded permutation into ``ceil(n / batch_size)`` near-equal batches, so
    no batch holds a single slice (batch normalisation needs two).
    """
    labels = TrainingSet("", "", vertebrae).labels()
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"the classifier needs healthy and malignant vertebrae; got {n_neg} healthy and "
            f"{n_pos} malignant in the training part"
        )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    transform = augmentations(config.seed)
    model = build_resnet18()
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, -(-len(vertebrae) // config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([n_neg / n_pos]))
    targets = torch.from_numpy(labels.astype(np.float32))
    with progress_bar(progress) as bar:
        task = bar.add_task("classifier", total=config.epochs * steps_per_epoch)
        for _ in range(config.epochs):
            model.train()
            for rows in np.array_split(rng.permutation(len(vertebrae)), steps_per_epoch):
                batch = augment_batch(sample_slices([vertebrae[i] for i in rows], rng), transform)
                loss = loss_fn(model(batch).flatten(), targets[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update(task, advance=1, description=f"classifier loss {loss.item():.3f}")
    return model.eval()


def save_classifier(path: Path, model: nn.Module, key: ModelKey) -> None:
    """Write the checkpoint: stored key, fp16 state dict and the intensity window."""
    state = {k: t.half() if t.is_floating_point() else t for k, t in model.state_dict().items()}
    torch.save({"key": key.as_dict(), "state_dict": state, "hu_window": list(HU_WINDOW)}, path)


def load_classifier(path: Path, expected: ModelKey | None = None) -> nn.Module:
    """Load a checkpoint (refused when ``expected`` is given and the stored key differs)."""
    record = load_weights(Path(path), "classifier checkpoint")
    if not isinstance(record, dict) or "state_dict" not in record or "key" not in record:
        raise ValueError(f"{path} is not a wsbench classifier checkpoint (no key/state_dict)")
    if expected is not None:
        expected.check(record["key"], path)
    if tuple(record.get("hu_window", HU_WINDOW)) != tuple(HU_WINDOW):
        raise ValueError(
            f"{path} was trained with HU window {record['hu_window']}, this wsbench uses "
            f"{list(HU_WINDOW)}; retrain with `wsbench train --method gradcam`"
        )
    model = build_resnet18()
    model.load_state_dict({name: t.float() for name, t in record["state_dict"].items()})
    return model.eval()


def train_classifier(
    training: TrainingSet, config: ClassifierConfig, progress: bool = True
) -> Path:
    """Train on ``training`` (held-out subjects for validation), save and card it; its path."""
    labelled = training.labelled()
    fit_rows, val_rows = subject_holdout(labelled, config.val_fraction, config.seed)
    started = time.perf_counter()
    model = fit_resnet([labelled[i] for i in fit_rows], config, progress)
    wall = time.perf_counter() - started
    key = model_key(training.fingerprint, config)
    path = STORE.new_path(key)
    save_classifier(path, model, key)
    facts = {
        "dataset": training.name,
        "seed": config.seed,
        "epochs": config.epochs,
        "n_train": len(fit_rows),
        "n_train_malignant": int(labelled.labels()[fit_rows].sum()),
        "imbalance": "BCEWithLogitsLoss pos_weight = n_healthy / n_malignant",
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        **validation_scores(model, [labelled[i] for i in val_rows]),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    write_card(path, key, "ResNet-18 weak slice classifier (CAM baselines)", facts)
    return path


def ensure_classifier(
    training: TrainingSet, config: ClassifierConfig, progress: bool = True
) -> tuple[Path, bool]:
    """The checkpoint for ``training`` and ``config``: reused when stored, else trained.

    Returns ``(path, trained)``.
    """
    key = model_key(training.fingerprint, config)
    stored = STORE.find(key.kind, key.dataset_fingerprint, key.config)
    if stored is not None:
        return stored, False
    return train_classifier(training, config, progress), True
