"""Which latent-classifier recipe makes Eq. (1) a visible, surviving healthy edit? Training split.

Usage:

    python benchmarks/experiment.py hideseek-classifier-recipe compare [--vertebrae 40] \
        [--sweep 0.01 ...]
    python benchmarks/experiment.py hideseek-classifier-recipe card [--vertebrae 60] \
        [--direction lytic]
    python benchmarks/experiment.py hideseek-classifier-recipe phenotype [--kind lytic]

The healthy edit moves ``z`` by ``Δlogit / ‖w‖`` standard deviations (``w``: the logistic
regression's weights on standardised latents), so the classifier's regularisation sets how far
the edit goes. Each recipe is fitted on the labelled training vertebrae of the subjects the DAE
quality report keeps (``latent_auc_split``); everything else is measured on the **held-out**
training subjects:

* ``C``, class weights, ``‖w‖``, held-out ROC-AUC and F1 at 0.5, and the share of held-out
  malignant / healthy vertebrae the gate (``c(z) ≥ 0.5``) passes;
* on the first ``--vertebrae`` held-out malignant vertebrae with a lesion on the mid slice
  (the phantom's lesion masks, read here only): the edit length in SD units, the mean
  ``|H − R|`` in HU on lesion and on other body pixels (``R = decode(x_T, z)``, ``H =
  decode(x_T, z_healthy)``), the pixel ROC-AUC of the edit alone for blastic (``R − H``) and
  lytic (``H − R``) pixels against non-lesion body pixels, and the **edit survival**: the share
  of the logit shift ``logit c(z) − logit p_target`` still there after decoding and re-encoding,
  ``(logit c(enc R) − logit c(enc H)) / (logit c(z) − logit p_target)`` (median over vertebrae).

``compare`` fits these recipes: ``former (raw normal)`` (five central slices per vertebra,
balanced classes, ``C`` by grouped-CV log-loss, edit along the raw-space normal), ``recipe``
(Hide-and-Seek's: the mid slice, balanced, ``C`` by edit length), ``authors`` (the authors'
notebook: the mid slice, ``C`` and class weights by CV F1) and, with ``--sweep``, the mid slice
at each given ``C``, balanced and unweighted; all but the first edit in standardised space.
``card`` measures the stored classifier's (or a phenotype direction's) edit on training
vertebrae and records it in its model card. ``phenotype`` compares, on held-out vertebrae of
patients with the lytic (or another) hint, the recipe fitted on all malignant vertebrae with
the phenotype direction (the recipe fitted on healthy vertebrae against the malignant ones of
patients with that hint), and the share of held-out healthy vertebrae each gate passes.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
import torch
import typer
from scipy.special import logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wsbench.api import ModelKey, read_card, write_card
from wsbench.contract import BLASTIC, LYTIC, Phenotype, Split, TrainingSet, WeakLabel
from wsbench.plugins.common.dae.latent import (
    Hyperplane,
    LatentClassifier,
    encode_slices,
    fit_latent_classifier,
)
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.common.dae.quality import latent_auc_split, mid_slices
from wsbench.plugins.hideseek.attribution import P_TARGET, healthy_latent
from wsbench.plugins.hideseek.latent_classifier import TARGET_EDIT_SD, fit_edit_classifier

from .common import MID, dae_path, fitted, hints, prepared, seeded_vertebrae, threads
from .hideseek_edit_localisation import decoded_hu, pixel_auc

AUTHORS_GRID = {"logisticregression__C": [1e-3, 1e-2, 1e-1, 1.0, 10.0],
                "logisticregression__class_weight": [None, "balanced"]}  # fmt: skip

app = typer.Typer(add_completion=False, help=__doc__)


def authors_classifier(z: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> LatentClassifier:
    """The authors' recipe on one row per vertebra: ``C`` and class weights by 5-fold CV F1
    (folds grouped by patient)."""
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky"))
    search = GridSearchCV(pipeline, AUTHORS_GRID, scoring="f1",
                          cv=StratifiedGroupKFold(5, shuffle=True, random_state=0))  # fmt: skip
    search.fit(z, labels, groups=groups)
    print(f"authors: best {search.best_params_}, CV F1 {search.best_score_:.3f}", flush=True)
    return fixed_classifier(z, labels, search.best_params_["logisticregression__C"],
                            search.best_params_["logisticregression__class_weight"])  # fmt: skip


def fixed_classifier(
    z: np.ndarray, labels: np.ndarray, c: float, class_weight: str | None
) -> LatentClassifier:
    """Standardised logistic regression with a given ``C`` and class weights."""
    scaler = StandardScaler().fit(z)
    regression = LogisticRegression(C=c, class_weight=class_weight, solver="newton-cholesky")
    regression.fit(scaler.transform(z), labels)
    return LatentClassifier(regression.coef_.ravel().copy(), float(regression.intercept_[0]),
                            scaler.mean_.copy(), scaler.scale_.copy(), c)  # fmt: skip


def raw_plane(classifier: LatentClassifier) -> Hyperplane:
    """The classifier's hyperplane editing along the raw-space normal (the former default)."""
    plane = classifier.plane
    return Hyperplane(plane.normal, plane.bias)


def edit_row(
    dae: DiffusionAutoencoder,
    plane: Hyperplane,
    weights_norm: float,
    image: np.ndarray,
    lesions: np.ndarray,
    body: np.ndarray,
    steps: tuple[int, int],
) -> dict[str, float]:
    """Edit length, HU change on/off lesions, pixel AUCs and survival of one recipe's edit."""
    z = encode_slices(dae, image)
    with torch.inference_mode():
        x = torch.from_numpy(dae.to_unit(image)).unsqueeze(1)
        x_t = dae.stochastic_encode(x, torch.as_tensor(z, dtype=torch.float32), steps[0])
    z_h = healthy_latent(z, plane, P_TARGET)
    recon, healthy = decoded_hu(dae, x_t, z, steps[1]), decoded_hu(dae, x_t, z_h, steps[1])
    edit = np.abs(healthy - recon)
    on, off = lesions > 0, body & (lesions == 0)
    shift = plane.logit(z) - logit(P_TARGET)
    kept = plane.logit(encode_slices(dae, recon)) - plane.logit(encode_slices(dae, healthy))
    return {
        "edit length (SD)": float(np.median(shift) / weights_norm),
        "edit |HU| lesion": float(edit[on].mean()),
        "edit |HU| other body": float(edit[off].mean()),
        "blastic AUC R−H": pixel_auc(recon - healthy, lesions, body, BLASTIC),
        "lytic AUC H−R": pixel_auc(healthy - recon, lesions, body, LYTIC),
        "survival (median)": float(np.median(kept / shift)),
        "c(enc R)": float(plane.probability(encode_slices(dae, recon)).mean()),
        "c(enc H)": float(plane.probability(encode_slices(dae, healthy)).mean()),
    }


@app.command()
def compare(
    vertebrae: Annotated[int, typer.Option(help="held-out malignant vertebrae edited")] = 40,
    steps: Annotated[tuple[int, int], typer.Option(help="DDIM steps")] = (20, 20),
    sweep: Annotated[
        list[float] | None, typer.Option(help="also each C (mid slice, both class weightings)")
    ] = None,
) -> None:
    """Print one row per recipe."""
    threads(1)
    data = prepared("phantom")
    dae = DiffusionAutoencoder.load(dae_path(data))
    fit, held = latent_auc_split(data.training_set(), 0)
    fit_set, held_set = TrainingSet("", "", fit), TrainingSet("", "", held)
    y_fit, y_held = fit_set.labels(), held_set.labels()
    z_all = encode_slices(dae, np.concatenate([v.slices for v in fit]))
    per = len(fit[0].slices)
    z_mid, z_held = z_all[MID::per], encode_slices(dae, mid_slices(held))
    groups = np.repeat(np.arange(len(fit)), per)
    current = fit_latent_classifier(z_all, np.repeat(y_fit, per), groups)
    patients = np.unique([str(v.key.patient) for v in fit], return_inverse=True)[1]
    authors = authors_classifier(z_mid, y_fit, patients)
    shipped, _ = fit_edit_classifier(z_mid, y_fit, patients, P_TARGET)
    recipes = {
        "former (raw normal)": (current, raw_plane(current)),
        "authors": (authors, authors.plane),
        f"recipe (≥ {TARGET_EDIT_SD:g} SD)": (shipped, shipped.plane),
    }
    for c in sweep or []:
        for weights in ("balanced", None):
            fixed = fixed_classifier(z_mid, y_fit, c, weights)
            recipes[f"mid C={c:g} {weights or 'unweighted'}"] = (fixed, fixed.plane)
    held_keys = {v.key for v in held}
    chosen = [v for v in data.split(Split.TRAIN) if v.key in held_keys
              and v.label == WeakLabel.MALIGNANT and v.reference.any()][:vertebrae]  # fmt: skip
    image = mid_slices(chosen)
    lesions = np.stack([v.reference for v in chosen])
    body = np.stack([v.body[MID] for v in chosen]).astype(bool)
    rows = {}
    for name, (classifier, plane) in recipes.items():
        p_held = plane.probability(z_held)
        row = {
            "C": classifier.C,
            "‖w‖": float(np.linalg.norm(classifier.weights)),
            "held-out AUC": float(roc_auc_score(y_held, p_held)),
            "held-out F1 @0.5": float(f1_score(y_held, p_held >= 0.5)),
            "gate passes malignant": float((p_held[y_held == 1] >= 0.5).mean()),
            "gate passes healthy": float((p_held[y_held == 0] >= 0.5).mean()),
        }
        row |= edit_row(dae, plane, row["‖w‖"], image, lesions, body, steps)
        rows[name] = row
        print(name, pd.Series(row).round(3).to_dict(), flush=True)
    print(f"{len(chosen)} held-out malignant vertebrae, {steps[0]}/{steps[1]} steps")
    print(pd.DataFrame(rows).round(3).to_string())


@app.command()
def card(
    vertebrae: Annotated[int, typer.Option(help="malignant training vertebrae edited")] = 60,
    steps: Annotated[tuple[int, int], typer.Option(help="DDIM steps")] = (20, 20),
    direction: Annotated[
        str | None, typer.Option(help="a phenotype direction (default: all malignant)")
    ] = None,
) -> None:
    """Measure the stored latent classifier's healthy edit (or that of one phenotype
    ``direction``) on the first ``vertebrae`` malignant training vertebrae with a lesion on the
    mid slice (one seeded order, the curve's; of patients with that hint for a direction) and
    add the figures to its model card (``edit_*``)."""
    threads(1)
    data = prepared("phantom")
    method = fitted(data)
    kind = Phenotype(direction) if direction else None
    role = "classifier" if kind is None else f"classifier-{kind.value}"
    path = method.store.resolve(method.fitted_models[role])
    classifier = method.classifier_of(kind)
    patient = hints(data)
    pool = [v for v in data.split(Split.TRAIN) if kind is None or patient[v.key.patient] == kind]
    chosen = seeded_vertebrae(pool, vertebrae, 0, WeakLabel.MALIGNANT)
    image = mid_slices(chosen)
    lesions = np.stack([v.reference for v in chosen])
    body = np.stack([v.body[MID] for v in chosen]).astype(bool)
    norm = float(np.linalg.norm(classifier.weights))
    row = edit_row(method.dae, classifier.plane, norm, image, lesions, body, steps)
    of = "" if kind is None else f" of patients with the {kind.value} hint"
    facts = {
        "edit_measured_on": f"{len(chosen)} malignant training vertebrae{of} with a lesion on "
        f"the mid slice, {steps[0]}/{steps[1]} DDIM steps (benchmarks/experiment.py "
        "hideseek-classifier-recipe card)",
        "edit_hu_lesion": round(row["edit |HU| lesion"], 2),
        "edit_hu_other_body": round(row["edit |HU| other body"], 2),
        "edit_pixel_auc_blastic": round(row["blastic AUC R−H"], 3),
        "edit_pixel_auc_lytic": round(row["lytic AUC H−R"], 3),
        "edit_survival_median": round(row["survival (median)"], 4),
    }
    facts = {name: value for name, value in facts.items() if value == value}  # no NaN: no pixels
    record = read_card(path)
    key = ModelKey(record["kind"], record["dataset_fingerprint"], record["config"])
    kept = {k: v for k, v in record.items() if k not in ("title", "kind", "dataset_fingerprint",
                                                         "config", "file")}  # fmt: skip
    write_card(path, key, record["title"], {**kept, **facts})
    print(pd.Series(facts).to_string())
    print(f"card: {path.with_suffix('.md')}")


@app.command()
def phenotype(
    kind: Annotated[str, typer.Option(help="phenotype whose own direction is fitted")] = "lytic",
    vertebrae: Annotated[int, typer.Option(help="held-out vertebrae of that phenotype")] = 40,
    steps: Annotated[tuple[int, int], typer.Option(help="DDIM steps")] = (20, 20),
) -> None:
    """A phenotype direction (the paper's suggested extension): the recipe fitted on healthy
    vertebrae against those of patients with the ``kind`` hint only, against the recipe on all,
    both measured on held-out vertebrae of that hint with a lesion on the mid slice and on the
    held-out healthy ones."""
    threads(1)
    data = prepared("phantom")
    dae = DiffusionAutoencoder.load(dae_path(data))
    fit, held = latent_auc_split(data.training_set(), 0)
    fit_keys, held_keys = {v.key for v in fit}, {v.key for v in held}
    train = [v for v in data.split(Split.TRAIN) if v.label is not None]
    wanted, patient = Phenotype(kind), hints(data)

    def rows(keys: set, only: bool) -> list:
        return [v for v in train if v.key in keys and (v.label == WeakLabel.HEALTHY or not only
                or patient[v.key.patient] == wanted)]  # fmt: skip

    held_kind = [v for v in rows(held_keys, True)
                 if v.label == WeakLabel.MALIGNANT and v.reference.any()][:vertebrae]  # fmt: skip
    image = mid_slices(held_kind)
    lesions = np.stack([v.reference for v in held_kind])
    body = np.stack([v.body[MID] for v in held_kind]).astype(bool)
    scored = rows(held_keys, True)
    z_scored = encode_slices(dae, mid_slices(scored))
    y_scored = np.array([v.label == WeakLabel.MALIGNANT for v in scored], dtype=int)
    table = {}
    for name, only in (("all malignant", False), (f"{kind} only", True)):
        chosen = rows(fit_keys, only)
        labels = np.array([v.label == WeakLabel.MALIGNANT for v in chosen], dtype=int)
        patients = np.unique([str(v.key.patient) for v in chosen], return_inverse=True)[1]
        z = encode_slices(dae, mid_slices(chosen))
        classifier, _ = fit_edit_classifier(z, labels, patients, P_TARGET)
        p = classifier.probability(z_scored)
        row = {"C": classifier.C, "fitted malignant": int(labels.sum()),
               f"held-out AUC healthy vs {kind}": float(roc_auc_score(y_scored, p)),
               f"gate passes {kind}": float((p[y_scored == 1] >= 0.5).mean()),
               "gate passes healthy": float((p[y_scored == 0] >= 0.5).mean())}  # fmt: skip
        norm = float(np.linalg.norm(classifier.weights))
        row |= edit_row(dae, classifier.plane, norm, image, lesions, body, steps)
        table[name] = row
        print(name, pd.Series(row).round(3).to_dict(), flush=True)
    print(f"{len(held_kind)} held-out {kind} vertebrae")
    print(pd.DataFrame(table).round(3).to_string())
