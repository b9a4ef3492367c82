"""Hide-and-Seek's latent classifier ``c(·)``: a logistic regression on the DAE's standardised
``z_sem`` of each labelled training vertebra's mid slice, regularised so that the healthy edit of
Eq. (1) is long enough to show in the image, and stored beside the DAE it belongs to (keyed by
that checkpoint's identity, the dataset fingerprint and the recipe).

Eq. (1) moves a latent by ``(logit c(z) − logit p_target) / ‖w‖`` standard deviations (``w``: the
weights on standardised latents; the edit steps in standardised space, as the authors' code
does). A classifier chosen for prediction alone (by log-loss or F1) has a large ``‖w‖`` and
edits by a fraction of one standard deviation, which the decoder barely renders. So ``C`` is
the weakest regularisation of :data:`C_GRID` whose median edit over the malignant training
vertebrae is at least :data:`TARGET_EDIT_SD`; docs/hideseek.md gives the figures behind it.

A phenotype *direction* is the same recipe fitted on the healthy training vertebrae against the
malignant ones of patients with one phenotype hint only (the paper's suggested phenotype-aware
edit); it exists where the training split has at least :data:`MAX_FOLDS` such vertebrae.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wsbench.api import (
    N_CENTRAL_SLICES,
    ModelKey,
    ModelStore,
    Phenotype,
    TrainedOn,
    TrainingSet,
    WeakLabel,
)
from wsbench.plugins.common.dae.latent import MAX_FOLDS, LatentClassifier, encode_slices
from wsbench.plugins.common.dae.network import Autoencoder

KIND = "hideseek-classifier"
RECIPE = "mid-slice, standardised, C by edit length, v2"
"""Names the fitting recipe in the model-store key: classifiers of another recipe are not reused."""
C_GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
"""Regularisation strengths tried, weakest first."""
TARGET_EDIT_SD = 10.0
"""Median length (standard deviations of ``z_sem``) the healthy edit must reach."""
CLASS_WEIGHT = "balanced"
"""Class weights of the regression (so that ``c(z) ≥ 0.5``, the gate, means the same on
imbalanced training sets)."""
MID = N_CENTRAL_SLICES // 2


def classifier_key(
    dae_identity: str, dataset_fingerprint: str, phenotype: Phenotype | None = None
) -> ModelKey:
    """Model-store key of the classifier belonging to one DAE checkpoint and one dataset: the
    one fitted on all malignant vertebrae, or the ``phenotype`` direction."""
    config: dict[str, Any] = {"dae": dae_identity, "recipe": RECIPE,
                              "target_edit_sd": TARGET_EDIT_SD}  # fmt: skip
    if phenotype is not None:
        config["phenotype"] = phenotype.value
    return ModelKey(KIND, dataset_fingerprint, config)


def direction_set(training: TrainingSet, phenotype: Phenotype | None) -> TrainingSet:
    """The labelled training vertebrae a classifier is fitted on: every healthy one and the
    malignant ones of patients whose hint is ``phenotype`` (every malignant one for ``None``)."""
    labelled = training.labelled()
    kept = [v for v in labelled if phenotype is None or v.label == WeakLabel.HEALTHY
            or v.hint == phenotype]  # fmt: skip
    return TrainingSet(training.name, training.fingerprint, kept)


def edit_lengths(classifier: LatentClassifier, z: np.ndarray, p_target: float) -> np.ndarray:
    """How far Eq. (1) moves each latent of ``z`` to ``p_target``, in standard deviations."""
    shift = classifier.plane.logit(z) - logit(p_target)
    return shift / np.linalg.norm(classifier.weights)


def regression(c: float) -> Any:
    """The standardise-then-regress pipeline at regularisation ``c``."""
    model = LogisticRegression(C=c, class_weight=CLASS_WEIGHT, solver="newton-cholesky")
    return make_pipeline(StandardScaler(), model)


def fit_edit_classifier(
    z: np.ndarray, labels: np.ndarray, groups: np.ndarray, p_target: float
) -> tuple[LatentClassifier, dict[str, Any]]:
    """The classifier of the recipe on latents ``z`` (one row per vertebra; ``labels`` 0/1,
    ``groups`` the patient of each row), with the facts its model card records: ``C``, ``‖w‖``,
    the median edit length of the malignant rows, and the grouped-CV ROC-AUC and F1 at that
    ``C``."""
    z, labels = np.asarray(z, dtype=np.float64), np.asarray(labels)
    if set(np.unique(labels).tolist()) != {0, 1}:
        raise ValueError("the latent classifier needs healthy (0) and malignant (1) examples")
    for c in C_GRID:
        fitted = regression(c).fit(z, labels)
        classifier = latent_classifier(fitted, c)
        median = float(np.median(edit_lengths(classifier, z[labels == 1], p_target)))
        if median >= TARGET_EDIT_SD:
            break
    folds = min(MAX_FOLDS, *(len(np.unique(groups[labels == k])) for k in (0, 1)))
    facts: dict[str, Any] = {
        "recipe": RECIPE,
        "C": c,
        "class_weight": CLASS_WEIGHT,
        "weights_norm": float(np.linalg.norm(classifier.weights)),
        "edit_length_sd_median": median,
        "target_edit_sd": TARGET_EDIT_SD,
    }
    if folds >= 2:
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
        p = cross_val_predict(regression(c), z, labels, groups=groups, cv=cv,
                              method="predict_proba")[:, 1]  # fmt: skip
        facts |= {"cv_auc": float(roc_auc_score(labels, p)),
                  "cv_f1": float(f1_score(labels, p >= 0.5)), "cv_folds": folds}  # fmt: skip
    return classifier, facts


def latent_classifier(fitted: Any, c: float) -> LatentClassifier:
    """The :class:`LatentClassifier` of a fitted :func:`regression` pipeline."""
    scaler, model = fitted[0], fitted[1]
    return LatentClassifier(weights=model.coef_.ravel().copy(), bias=float(model.intercept_[0]),
                            mean=scaler.mean_.copy(), scale=scaler.scale_.copy(),
                            C=float(c))  # fmt: skip


def stored_classifier(store: ModelStore, key: ModelKey) -> tuple[LatentClassifier, Path] | None:
    """The classifier ``store`` holds under ``key``, with its file; ``None`` when it holds none."""
    stored = store.find(key.kind, key.dataset_fingerprint, key.config)
    return None if stored is None else (LatentClassifier.load(stored, key), stored)


def bundled_classifier(
    dae_identity: str, dae_origin: TrainedOn, store: ModelStore
) -> tuple[LatentClassifier, Path]:
    """The classifier fitted with the DAE ``dae_identity`` on the DAE's own training data
    (``dae_origin``), with its file: what a transfer run uses."""
    found = stored_classifier(store, classifier_key(dae_identity, dae_origin.fingerprint))
    if found is None:
        raise FileNotFoundError(
            f"no latent classifier stored for DAE {dae_identity} (trained on "
            f"{dae_origin.dataset}) in {' or '.join(map(str, store.folders))}; run Hide-and-Seek "
            f"once on {dae_origin.dataset} to fit it there, or pass -p refit_classifier=true to "
            "fit one on this dataset's labelled training split"
        )
    return found


def bundled_direction(
    dae_identity: str, dae_origin: TrainedOn, store: ModelStore, phenotype: Phenotype
) -> tuple[LatentClassifier, Path] | None:
    """The ``phenotype`` direction fitted with the DAE on its own training data, with its file;
    ``None`` when none was (too few vertebrae of that hint there)."""
    return stored_classifier(store, classifier_key(dae_identity, dae_origin.fingerprint, phenotype))


def classifier_for(
    dae: Autoencoder,
    dae_identity: str,
    training: TrainingSet,
    store: ModelStore,
    p_target: float,
    refit: bool = False,
    phenotype: Phenotype | None = None,
) -> tuple[LatentClassifier, Path] | None:
    """The classifier of this DAE and training set (the ``phenotype`` direction, or the one of
    all malignant vertebrae) found in ``store``, or a new one fitted on the mid slices of
    :func:`direction_set` (edits to ``p_target``) and stored, with the file it is stored in.
    A ``phenotype`` direction with fewer than :data:`MAX_FOLDS` malignant vertebrae of that
    hint is ``None``. A ``refit`` for a DAE trained elsewhere needs at least :data:`MAX_FOLDS`
    labelled training vertebrae of each class."""
    key = classifier_key(dae_identity, training.fingerprint, phenotype)
    found = stored_classifier(store, key)
    if found is not None:
        return found
    labelled = direction_set(training, phenotype)
    if not len(labelled):
        raise ValueError(
            f"training split of {training.name!r} has no labelled vertebra: the latent "
            "classifier is fitted on the training split's healthy/malignant labels; give some "
            "vertebrae split 'train' and a label (docs/datasets.md), or run with a DAE and "
            "classifier trained elsewhere (`-p model=NAME`, docs/hideseek.md)"
        )
    counts = np.bincount(labelled.labels(), minlength=2)
    if phenotype is not None and counts.min() < MAX_FOLDS:
        return None
    if refit and counts.min() < MAX_FOLDS:
        raise ValueError(
            f"refit_classifier needs at least {MAX_FOLDS} labelled training vertebrae of each "
            f"class; {training.name!r} has {counts[0]} healthy and {counts[1]} malignant: "
            "drop -p refit_classifier=true to use the classifier fitted with the DAE"
        )
    z = encode_slices(dae, np.stack([v.slices[MID] for v in labelled]))
    patients = np.unique([str(v.key.patient) for v in labelled], return_inverse=True)[1]
    classifier, facts = fit_edit_classifier(z, labelled.labels(), patients, p_target)
    direction = "all malignant" if phenotype is None else f"{phenotype.value} hint"
    facts = {"dataset": training.name, "dae": dae_identity, "direction": direction,
             "vertebrae": len(labelled), "malignant": int(counts[1]), "p_target": p_target,
             **facts}  # fmt: skip
    path = store.new_path(key)
    classifier.save(path, key, facts)
    return classifier, path
