"""Hide-and-Seek's latent classifier ``c(·)``: the DAE's latent probe fitted on the training
split's weak labels, stored beside the DAE it belongs to (keyed by that checkpoint's identity and
the dataset fingerprint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsbench.api import ModelKey, ModelStore, TrainedOn, TrainingSet
from wsbench.plugins.common.dae.latent import (
    MAX_FOLDS,
    LatentClassifier,
    encode_slices,
    fit_latent_classifier,
)
from wsbench.plugins.common.dae.network import Autoencoder

KIND = "hideseek-classifier"


def classifier_key(dae_identity: str, dataset_fingerprint: str) -> ModelKey:
    """Model-store key of the classifier belonging to one DAE checkpoint and one dataset."""
    return ModelKey(KIND, dataset_fingerprint, {"dae": dae_identity})


def bundled_classifier(
    dae_identity: str, dae_origin: TrainedOn, store: ModelStore
) -> tuple[LatentClassifier, Path]:
    """The classifier fitted with the DAE ``dae_identity`` on the DAE's own training data
    (``dae_origin``), with its file: what a transfer run uses."""
    key = classifier_key(dae_identity, dae_origin.fingerprint)
    stored = store.find(key.kind, key.dataset_fingerprint, key.config)
    if stored is None:
        raise FileNotFoundError(
            f"no latent classifier stored for DAE {dae_identity} (trained on "
            f"{dae_origin.dataset}) in {' or '.join(map(str, store.folders))}; run Hide-and-Seek "
            f"once on {dae_origin.dataset} to fit it there, or pass -p refit_classifier=true to "
            "fit one on this dataset's labelled training split"
        )
    return LatentClassifier.load(stored, key), stored


def classifier_for(
    dae: Autoencoder,
    dae_identity: str,
    training: TrainingSet,
    store: ModelStore,
    refit: bool = False,
) -> tuple[LatentClassifier, Path]:
    """The classifier of this DAE and training set found in ``store``, or a new one fitted and
    stored, with the file it is stored in.

    Every labelled training vertebra contributes its central slices (all with its label), so
    cross-validation groups them by vertebra. A ``refit`` for a DAE trained elsewhere needs at
    least :data:`MAX_FOLDS` labelled training vertebrae of each class, so that the
    regularisation is chosen by full cross-validation.
    """
    key = classifier_key(dae_identity, training.fingerprint)
    stored = store.find(key.kind, key.dataset_fingerprint, key.config)
    if stored is not None:
        return LatentClassifier.load(stored, key), stored
    labelled = training.labelled()
    if not len(labelled):
        raise ValueError(
            f"training split of {training.name!r} has no labelled vertebra: the latent "
            "classifier is fitted on the training split's healthy/malignant labels; give some "
            "vertebrae split 'train' and a label (docs/datasets.md), or run with a DAE and "
            "classifier trained elsewhere (`-p model=NAME`, docs/hideseek.md)"
        )
    counts = np.bincount(labelled.labels(), minlength=2)
    if refit and counts.min() < MAX_FOLDS:
        raise ValueError(
            f"refit_classifier needs at least {MAX_FOLDS} labelled training vertebrae of each "
            f"class; {training.name!r} has {counts[0]} healthy and {counts[1]} malignant: "
            "drop -p refit_classifier=true to use the classifier fitted with the DAE"
        )
    z = encode_slices(dae, np.concatenate([v.slices for v in labelled]))
    per_vertebra = len(labelled[0].slices)
    labels = np.repeat(labelled.labels(), per_vertebra)
    groups = np.repeat(np.arange(len(labelled)), per_vertebra)
    classifier = fit_latent_classifier(z, labels, groups)
    facts = {
        "dataset": training.name,
        "dae": dae_identity,
        "vertebrae": len(labelled),
        "malignant": int(labelled.labels().sum()),
        "slices_per_vertebra": per_vertebra,
        "cv_log_loss": classifier.cv_log_loss,
    }
    path = store.new_path(key)
    classifier.save(path, key, facts)
    return classifier, path
