"""The shipped Hide-and-Seek DAE and latent classifier on real phantom vertebrae: the healthy edit
of Eq. (1) is visible on the lesions and survives decoding and re-encoding.

The eight vertebrae (``tests/data/phantom_train_malignant.npz``) are malignant vertebrae of the
default phantom's *training* split with a lesion on the mid slice, the first eight of the seeded
order the Hide-and-Seek curve uses; their lesion masks are read here only to measure the edit.
The thresholds are set well under what the shipped models give (docs/hideseek.md: 106 HU on
lesions, 31 HU elsewhere over 60 such vertebrae), so that they catch a classifier or a DAE whose
edit the decoder ignores (the former classifier: under 5 HU) rather than small numeric drift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsbench.api import file_identity, trained_on
from wsbench.contract import Phenotype
from wsbench.plugins.common.dae.latent import encode_slices
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.hideseek import STORE, HideAndSeek
from wsbench.plugins.hideseek.attribution import P_TARGET, healthy_latent
from wsbench.plugins.hideseek.latent_classifier import KIND, bundled_classifier

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "phantom_train_malignant.npz"
MIN_EDIT_HU_ON_LESIONS = 40.0
"""The mean |I_healthy − R| on lesion pixels must exceed this."""
MIN_LESION_CONTRAST = 2.0
"""… and be at least this many times the mean change on the other body pixels."""
MIN_LOGIT_DROP = 0.5
"""``logit c(encode(R)) − logit c(encode(I_healthy))``, median over the vertebrae."""
STEPS = 20


@pytest.fixture(scope="module")
def shipped() -> tuple[DiffusionAutoencoder, object]:
    """The shipped phantom DAE and the latent classifier fitted with it."""
    torch.set_num_threads(1)
    dae_path = STORE.find("dae", str(np.load(DATA)["dataset_fingerprint"]))
    assert dae_path is not None, "the phantom's DAE must ship in plugins/hideseek/weights"
    dae = DiffusionAutoencoder.load(dae_path)
    method = HideAndSeek(checkpoint=str(dae_path), only_malignant=False)
    classifier, stored = bundled_classifier(file_identity(dae_path), trained_on(dae_path), STORE)
    assert stored.parent == STORE.shipped and KIND in stored.name
    method.dae, method.classifier = dae, classifier
    return dae, method


@pytest.fixture(scope="module")
def edited(shipped) -> dict[str, np.ndarray]:
    """``I``, ``R``, ``I_healthy`` (HU), lesion and body masks of the eight vertebrae."""
    dae, method = shipped
    data = np.load(DATA)
    image = data["image"].astype(np.float32)
    torch.manual_seed(0)
    z = encode_slices(dae, image)
    z_healthy = healthy_latent(z, method.classifier.plane, P_TARGET)
    with torch.inference_mode():
        x = torch.from_numpy(dae.to_unit(image)).unsqueeze(1)
        z_t = torch.as_tensor(z, dtype=torch.float32)
        x_t = dae.stochastic_encode(x, z_t, STEPS)
        both = dae.decode(torch.cat([x_t, x_t]), torch.cat([z_t, torch.as_tensor(
            z_healthy, dtype=torch.float32)]), STEPS)  # fmt: skip
    recon, healthy = (dae.to_hu(part[:, 0].numpy()) for part in both.split(len(image)))
    return {"image": image, "recon": recon, "healthy": healthy, "lesions": data["lesions"],
            "body": data["body"]}  # fmt: skip


def test_the_healthy_edit_changes_the_lesions_and_less_elsewhere(edited):
    change = np.abs(edited["healthy"] - edited["recon"])
    on = edited["lesions"] > 0
    off = edited["body"] & ~on
    assert change[on].mean() > MIN_EDIT_HU_ON_LESIONS
    assert change[on].mean() > MIN_LESION_CONTRAST * change[off].mean()


def test_the_edit_survives_decoding_and_re_encoding(shipped, edited):
    dae, method = shipped
    plane = method.classifier.plane
    drop = plane.logit(encode_slices(dae, edited["recon"])) - plane.logit(
        encode_slices(dae, edited["healthy"])
    )
    assert np.median(drop) > MIN_LOGIT_DROP
    assert (drop > 0).mean() >= 0.75


def test_delta_rejects_some_candidates_on_real_vertebrae(shipped):
    """With the re-encoded floor Δ is not ≥ τ for every scored candidate."""
    _, method = shipped
    data = np.load(DATA)
    deltas = []
    for image, body in zip(data["image"].astype(np.float32), data["body"], strict=True):
        torch.manual_seed(0)
        result = method.attribute(image, body, Phenotype.MIXED)
        deltas += list(result.deltas)
    assert method.floor == "reencoded" and deltas
    assert min(deltas) < method.tau <= max(deltas)
