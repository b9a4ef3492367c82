"""Hide-and-Seek maths on constructed inputs: Eq. 1–3, candidates, scoring, latent classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from wsbench.contract import BLASTIC, LYTIC
from wsbench.plugins.common.dae.candidates import (
    Candidate,
    binarise,
    extract_candidates,
    polarity_maps,
)
from wsbench.plugins.common.dae.latent import (
    Hyperplane,
    LatentClassifier,
    fit_latent_classifier,
    hyperplane_from_standardised,
)
from wsbench.plugins.hideseek.attribution import (
    P_TARGET,
    delta_score,
    healthy_latent,
    hidden_probabilities,
    hide_others,
    image_boundaries,
    image_boundary,
    probability_logit,
    project,
    scored_candidates,
)
from wsbench.plugins.hideseek.latent_classifier import (
    C_GRID,
    RECIPE,
    TARGET_EDIT_SD,
    classifier_for,
    classifier_key,
    edit_lengths,
    fit_edit_classifier,
    latent_classifier,
    regression,
)


class LinearAutoencoder:
    """A 'DAE' whose encoder is a fixed linear map with orthonormal rows ``W``.

    ``stochastic_encode`` is the identity and ``decode(x, z) = x + Wᵀ(z − W x)``, so
    ``encode(decode(x, z)) == z``, a reconstruction is exact and the projection of Algorithm 1
    gives ``z_hide = W · I_hide``: every quantity of Eq. 1–3 is computable by hand.
    """

    def __init__(self, size: int = 8, latent: int = 4, seed: int = 0, rows=None) -> None:
        if rows is None:
            q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(size * size, latent)))
            rows = q.T
        self.W = torch.as_tensor(np.asarray(rows), dtype=torch.float64)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1).double() @ self.W.T).float()

    def stochastic_encode(self, x: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor:
        return x.clone()

    def decode(self, x_t: torch.Tensor, z_sem: torch.Tensor, steps: int) -> torch.Tensor:
        flat = x_t.reshape(len(x_t), -1).double()
        flat = flat + (z_sem.double() - flat @ self.W.T) @ self.W
        return flat.reshape(x_t.shape).float()


# Eq. (1) and the standardisation algebra ---------------------------------------------------


def test_standardised_hyperplane_matches_the_standardised_logit():
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=5), 0.7
    mean, scale = rng.normal(size=5), rng.uniform(0.5, 2.0, size=5)
    plane = hyperplane_from_standardised(w, b, mean, scale)
    z = rng.normal(size=(10, 5))
    np.testing.assert_allclose(plane.logit(z), ((z - mean) / scale) @ w + b, rtol=1e-12)
    np.testing.assert_allclose(plane.normal, w / scale)
    assert plane.bias == pytest.approx(b - np.sum(w * mean / scale))


def test_healthy_edit_moves_the_logit_exactly_to_the_target_by_hand():
    plane = Hyperplane(normal=np.array([3.0, 4.0]), bias=1.0)
    z = np.array([1.0, 1.0])  # logit 8, ‖n‖ = 5
    d_target = np.log(1e-4 / (1 - 1e-4))
    z_healthy = healthy_latent(z, plane, p_target=1e-4)
    # Eq. (1) written literally, with the distance target d_target / ‖n‖:
    expected = z - (8.0 / 5.0 - d_target / 5.0) * np.array([3.0, 4.0]) / 5.0
    np.testing.assert_allclose(z_healthy, expected, rtol=1e-12)
    assert plane.logit(z_healthy) == pytest.approx(d_target, abs=1e-12)
    assert plane.probability(z_healthy) == pytest.approx(1e-4, rel=1e-9)
    assert plane.distance(z_healthy) == pytest.approx(d_target / 5.0, abs=1e-12)


def test_healthy_edit_through_a_fitted_standardised_classifier():
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.normal(0, 1, (40, 6)), rng.normal(0.8, 2, (40, 6))]) * 3 + 5
    labels = np.repeat([0, 1], 40)
    clf = fit_latent_classifier(z, labels, groups=np.arange(80))
    reference = LogisticRegression(C=clf.C, class_weight="balanced", solver="newton-cholesky")
    scaler = StandardScaler().fit(z)
    reference.fit(scaler.transform(z), labels)
    np.testing.assert_allclose(
        clf.probability(z), reference.predict_proba(scaler.transform(z))[:, 1], rtol=1e-6
    )
    edited = healthy_latent(z, clf.plane, p_target=1e-4)
    np.testing.assert_allclose(clf.probability(edited), 1e-4, rtol=1e-8)
    np.testing.assert_allclose(
        reference.predict_proba(scaler.transform(edited))[:, 1], 1e-4, rtol=1e-5
    )


def test_probability_logit_rejects_impossible_targets():
    with pytest.raises(ValueError, match="strictly between"):
        probability_logit(0.0)


# candidates ----------------------------------------------------------------------------------


def test_polarity_maps_use_the_physical_sign():
    image = np.array([[0.0, 5.0, 2.0]])
    healthy = np.array([[3.0, 1.0, 2.0]])
    maps = polarity_maps(image, healthy)
    np.testing.assert_array_equal(maps[LYTIC], [[3.0, 0.0, 0.0]])  # healthy brighter: lytic
    np.testing.assert_array_equal(maps[BLASTIC], [[0.0, 4.0, 0.0]])  # image brighter: blastic


def test_binarise_at_the_mean_over_all_body_pixels():
    diff = np.array([[0.0, 1.0, 2.0, 9.0], [0.0, 0.0, 3.0, 6.0]])
    body = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    # body values 0,1,2,0,0,3,6: mean 12/7 ≈ 1.714 → 2, 3, 6 pass; 9 lies outside the body
    expected = np.array([[0, 0, 1, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(binarise(diff, body), expected)
    assert not binarise(np.zeros((2, 4)), body).any()


def test_binarise_at_the_median_of_the_positive_body_pixels():
    diff = np.array([[0.0, 1.0, 2.0, 9.0], [0.0, 0.0, 3.0, 6.0]])
    body = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    # positive body values 1, 2, 3, 6: median 2.5 → 3 and 6 pass (strict); 9 is outside
    expected = np.array([[0, 0, 0, 0], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(binarise(diff, body, "positive-median"), expected)
    assert not binarise(np.zeros((2, 4)), body, "positive-median").any()
    with pytest.raises(ValueError, match="positive-median"):
        binarise(diff, body, "otsu")


def test_four_connected_candidates_split_a_diagonal_neighbour():
    image, healthy, body = np.zeros((6, 6)), np.zeros((6, 6)), np.ones((6, 6), bool)
    image[1:3, 1:3] = -4.0
    image[3, 3] = -4.0  # touches the square only at a corner
    eight = extract_candidates(image, healthy, body)
    four = extract_candidates(image, healthy, body, connectivity=1)
    assert [c.size for c in eight] == [5]
    assert [c.size for c in four] == [4, 1] and four[1].mask[3, 3]


def test_image_boundaries_redraw_a_haloed_blastic_candidate_exactly():
    image = np.full((24, 24), 200.0)
    image[:2, :] = 1500.0  # cortex-bright rim of the body, outside the eroded body
    image[2:6, 8:12] = 800.0  # the lesion, touching the eroded body's edge
    image[3:5, 14:16] = 800.0  # a bright blob in reach of the dilation, not touching the candidate
    labels = np.zeros((24, 24), np.uint8)
    labels[0:7, 7:13] = BLASTIC  # the difference map's blurred candidate, reaching the rim
    body = np.ones((24, 24), bool)
    lesion = np.zeros((24, 24), np.uint8)
    lesion[2:6, 8:12] = BLASTIC
    np.testing.assert_array_equal(image_boundaries(labels, image, body, dilation_px=2), lesion)


def test_image_boundary_fills_holes_and_falls_back_to_the_candidate():
    image = np.full((20, 20), 200.0)
    image[8:14, 8:14] = -100.0  # lytic square ...
    image[10, 10] = 200.0  # ... with a pixel of ordinary bone inside
    inside = np.ones((20, 20), bool)
    candidate = np.zeros((20, 20), bool)
    candidate[9:13, 9:13] = True  # too small: the dilation lets it grow to the lesion
    square = np.zeros((20, 20), bool)
    square[8:14, 8:14] = True
    np.testing.assert_array_equal(image_boundary(image, inside, candidate, LYTIC, 2), square)
    flat = np.full((20, 20), 200.0)
    np.testing.assert_array_equal(image_boundary(flat, inside, candidate, LYTIC, 2), candidate)
    speck = flat.copy()
    speck[10, 10] = -100.0  # the only dark pixel: a 1-pixel result is below MIN_COMPONENT_PX
    np.testing.assert_array_equal(image_boundary(speck, inside, candidate, LYTIC, 0), candidate)


def test_extract_candidates_exact_on_a_constructed_difference_map():
    healthy = np.zeros((8, 8))
    image = np.zeros((8, 8))
    image[1:3, 1:3] = -4.0  # lytic square
    image[3, 3] = -4.0  # diagonal neighbour: same 8-connected lytic component
    image[6, 6] = -4.0  # a separate lytic pixel
    image[1:3, 5:7] = 5.0  # blastic square
    image[5, 1] = 0.1  # tiny blastic deviation, below the blastic mean
    body = np.ones((8, 8), bool)
    found = extract_candidates(image, healthy, body)
    assert [c.label for c in found] == [LYTIC, LYTIC, BLASTIC]
    first = np.zeros((8, 8), bool)
    first[1:3, 1:3] = True
    first[3, 3] = True
    np.testing.assert_array_equal(found[0].mask, first)
    assert found[0].size == 5
    assert found[1].mask[6, 6] and found[1].size == 1
    square = np.zeros((8, 8), bool)
    square[1:3, 5:7] = True
    np.testing.assert_array_equal(found[2].mask, square)


# Eq. (2) and Eq. (3) ---------------------------------------------------------------------------


def test_hide_others_composes_eq2():
    image = np.arange(6.0).reshape(2, 3)
    healthy = -np.ones((2, 3))
    keep = np.array([[1, 0, 0], [0, 0, 0]], bool)
    suspects = np.array([[1, 1, 0], [0, 1, 0]], bool)
    expected = np.array([[0.0, -1.0, 2.0], [3.0, -1.0, 5.0]])
    np.testing.assert_array_equal(hide_others(image, healthy, keep, suspects), expected)


def test_delta_score_and_the_epsilon_case():
    assert delta_score(0.6, 0.9, 0.1) == pytest.approx(0.625, rel=1e-6)
    assert delta_score(0.1, 0.9, 0.1) == pytest.approx(0.0)
    np.testing.assert_allclose(delta_score(np.array([0.9, 0.5]), 0.9, 0.1), [1.0, 0.5], rtol=1e-6)
    # c(z) == c(z_healthy): ε keeps Δ finite; equal probabilities give 0
    assert delta_score(0.3, 0.3, 0.3) == 0.0
    assert delta_score(0.3 + 1e-9, 0.3, 0.3, eps=1e-8) == pytest.approx(0.1, rel=1e-4)


# DAE round trip ------------------------------------------------------------------------------


def test_hidden_probabilities_by_hand_and_independent_of_batching():
    dae = LinearAutoencoder()
    rng = np.random.default_rng(4)
    plane = Hyperplane(normal=rng.normal(size=4), bias=-0.2)
    images = rng.normal(size=(5, 8, 8))
    expected = expit(images.reshape(5, -1) @ dae.W.numpy().T @ plane.normal + plane.bias)
    for batch in (1, 2, 5):
        got = hidden_probabilities(dae, plane, images, True, (3, 3), batch_size=batch)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


class CountingAutoencoder(LinearAutoencoder):
    """The linear 'DAE', counting its DDIM passes."""

    def __init__(self) -> None:
        super().__init__()
        self.passes = 0

    def stochastic_encode(self, x, z_sem, steps):
        self.passes += 1
        return super().stochastic_encode(x, z_sem, steps)

    def decode(self, x_t, z_sem, steps):
        self.passes += 1
        return super().decode(x_t, z_sem, steps)


@pytest.mark.parametrize(("invert", "passes"), [(True, 2), (False, 0)])
def test_projection_equals_encoding_on_an_exact_autoencoder_and_skips_its_passes(invert, passes):
    dae = CountingAutoencoder()
    x = torch.as_tensor(np.random.default_rng(6).normal(size=(3, 1, 8, 8)), dtype=torch.float32)
    torch.testing.assert_close(project(dae, x, invert, (3, 3)), dae.encode(x))
    assert dae.passes == passes


def test_scored_candidates_filter_by_polarity_and_size_but_hide_every_candidate():
    healthy = np.zeros((8, 8))
    image = np.zeros((8, 8))
    image[1:3, 1:3] = -4.0  # lytic, 4 px
    image[5:8, 5:8] = 5.0  # blastic, 9 px
    image[0, 7] = 5.0  # blastic, 1 px: hidden in the others' images, never scored
    body = np.ones((8, 8), bool)
    scored, images = scored_candidates(image, healthy, body, (BLASTIC,), min_px=2)
    assert [(c.label, c.size) for c in scored] == [(BLASTIC, 9)]
    expected = image.copy()
    expected[1:3, 1:3] = 0.0
    expected[0, 7] = 0.0
    np.testing.assert_array_equal(images[0], expected)


# classifier persistence ----------------------------------------------------------------------


def test_classifier_round_trip_and_key_check(tmp_path):
    clf = LatentClassifier(np.array([1.0, -2.0]), 0.5, np.array([0.1, 0.2]), np.array([1.5, 2.0]),
                           C=0.1)  # fmt: skip
    key = classifier_key("dae-abc", "fp1")
    path = tmp_path / "clf.pt"
    clf.save(path, key, {"n_train": 2})
    back = LatentClassifier.load(path, key)
    np.testing.assert_array_equal(back.weights, clf.weights)
    assert (back.bias, back.C) == (clf.bias, clf.C)
    assert path.with_suffix(".md").exists()
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        LatentClassifier.load(path, classifier_key("dae-abc", "other"))


def test_classifier_needs_two_vertebrae_per_class():
    with pytest.raises(ValueError, match="at least two"):
        fit_latent_classifier(np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))


def test_candidate_size():
    assert Candidate(np.eye(3, dtype=bool), LYTIC).size == 3


def test_classifier_for_fits_once_then_reloads_from_the_model_store():
    from fakes import TinyDataset

    from wsbench.plugins.hideseek import STORE

    training = TinyDataset().prepare().training_set()
    dae = LinearAutoencoder(size=32, latent=4)
    first, _ = classifier_for(dae, "dae-test", training, STORE, P_TARGET)
    key = classifier_key("dae-test", training.fingerprint)
    stored = STORE.find(key.kind, key.dataset_fingerprint, key.config)
    assert stored is not None and stored.with_suffix(".json").exists()
    card = json.loads(stored.with_suffix(".json").read_text())
    assert card["recipe"] == RECIPE and card["weights_norm"] == pytest.approx(
        float(np.linalg.norm(first.weights))
    )
    again, _ = classifier_for(dae, "dae-test", training, STORE, P_TARGET)
    np.testing.assert_array_equal(again.weights, first.weights)
    assert again.C in C_GRID


def test_a_phenotype_direction_is_fitted_on_healthy_against_that_hint_only():
    from wsbench.contract import Phenotype, Split, TrainingSet
    from wsbench.plugins.hideseek import STORE
    from wsbench.testing import synthetic_vertebra

    plan = [(f"h{i}", None, None) for i in range(6)]
    plan += [(f"l{i}", Phenotype.LYTIC, Phenotype.LYTIC) for i in range(5)]
    plan += [(f"b{i}", Phenotype.BLASTIC, Phenotype.BLASTIC) for i in range(4)]
    plan += [("h0", None, Phenotype.LYTIC)]  # a healthy vertebra of a lytic patient: still healthy
    views = [synthetic_vertebra(subject, f"L{i}", Split.TRAIN, kind, seed=i).training_view(hint)
             for i, (subject, kind, hint) in enumerate(plan)]  # fmt: skip
    training = TrainingSet("directions", "directions-fingerprint", views)
    dae = LinearAutoencoder(size=32, latent=4)
    lytic, path = classifier_for(
        dae, "dae-test", training, STORE, P_TARGET, phenotype=Phenotype.LYTIC
    )
    card = json.loads(path.with_suffix(".json").read_text())
    assert (card["direction"], card["vertebrae"], card["malignant"]) == ("lytic hint", 12, 5)
    assert card["config"]["phenotype"] == "lytic"
    assert (
        classifier_for(dae, "dae-test", training, STORE, P_TARGET, phenotype=Phenotype.BLASTIC)
        is None
    )
    pooled, pooled_path = classifier_for(dae, "dae-test", training, STORE, P_TARGET)
    assert json.loads(pooled_path.with_suffix(".json").read_text())["malignant"] == 9
    assert pooled_path != path and not np.array_equal(pooled.weights, lytic.weights)


def test_the_edit_classifier_takes_the_weakest_regularisation_that_edits_far_enough():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    z = rng.normal(size=(120, 6)) + labels[:, None] * np.array([1.5, 0, 0, 0, 0, 0])
    groups = np.arange(120) // 4
    classifier, facts = fit_edit_classifier(z, labels, groups, P_TARGET)
    median = np.median(edit_lengths(classifier, z[labels == 1], P_TARGET))
    assert facts["C"] == classifier.C and facts["edit_length_sd_median"] == pytest.approx(median)
    assert median >= TARGET_EDIT_SD
    weaker = [c for c in C_GRID if c > classifier.C]
    assert weaker, "the data should need some regularisation to edit far enough"
    looser = latent_classifier(regression(weaker[-1]).fit(z, labels), weaker[-1])
    assert np.median(edit_lengths(looser, z[labels == 1], P_TARGET)) < TARGET_EDIT_SD
    assert 0.5 < facts["cv_auc"] <= 1.0
