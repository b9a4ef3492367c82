"""The hideseek plugin on a hand-computable linear 'DAE' (and on the real tiny DAE)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit, logit
from test_attribution import LinearAutoencoder

from wsbench.contract import BLASTIC, LYTIC, Phenotype
from wsbench.data.intensity import hu_to_unit
from wsbench.plugins.hideseek import HideAndSeek, HideAndSeekPaper, HideAndSeekUngated
from wsbench.plugins.hideseek.latent_classifier import LatentClassifier
from wsbench.testing import sample_of

SIZE = 16
BLAST = (slice(2, 6), slice(2, 6))  # 16 px, 1000 HU
LYSIS = (slice(9, 13), slice(9, 13))  # 16 px, -100 HU
NORMAL = np.array([2.0, -0.5])  # the classifier weighs the blastic region most
BIAS = -3.0


def region_rows() -> np.ndarray:
    """Encoder rows: the normalised indicators of the blastic and the lytic region."""
    rows = np.zeros((2, SIZE, SIZE))
    rows[0][BLAST] = 0.25
    rows[1][LYSIS] = 0.25
    return rows.reshape(2, -1)


def vertebra(blastic: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((SIZE, SIZE), 300.0, np.float32)
    image[BLAST], image[LYSIS] = blastic, -100.0
    return image, np.ones((SIZE, SIZE), bool)


MEAN, SCALE = np.array([0.5, -0.2]), np.array([2.0, 0.5])
EDIT = SCALE * (NORMAL * SCALE)  # raw direction of a step along the standardised weights


def classifier() -> LatentClassifier:
    """Raw-space hyperplane (NORMAL, BIAS), written as a standardised classifier."""
    return LatentClassifier(NORMAL * SCALE, BIAS + NORMAL @ MEAN, MEAN, SCALE, 1.0)


def method(**params):
    """The plugin on the linear 'DAE'; the 16-pixel regions are scored (``min_candidate_px=5``)
    and Eq. (3)'s floor is ``p_target`` (computable by hand) unless a test says otherwise."""
    params = {"min_candidate_px": 5, "floor": "target", **params}
    return HideAndSeek.from_parts(LinearAutoencoder(rows=region_rows()), classifier(), **params)


def expected_deltas(image: np.ndarray) -> tuple[float, float]:
    """Δ of the blastic and of the lytic region, computed by hand from Eq. 1–3."""
    z = region_rows() @ hu_to_unit(image).ravel().astype(np.float64)
    p = expit(NORMAL @ z + BIAS)
    z_h = z - (NORMAL @ z + BIAS - logit(1e-4)) / (NORMAL @ EDIT) * EDIT
    p_blast = expit(NORMAL @ [z[0], z_h[1]] + BIAS)  # blastic revealed, lytic hidden
    p_lysis = expit(NORMAL @ [z_h[0], z[1]] + BIAS)
    return (p_blast - 1e-4) / (p - 1e-4 + 1e-8), (p_lysis - 1e-4) / (p - 1e-4 + 1e-8)


def test_blastic_hint_scores_and_keeps_the_blastic_region_exactly():
    image, body = vertebra()
    seg = method().segment(sample_of(image, body, phenotype=Phenotype.BLASTIC))
    d_blast, _ = expected_deltas(image)
    assert d_blast > 0.9
    assert [lesion.label for lesion in seg.lesions] == [BLASTIC]
    assert seg.lesions[0].score == pytest.approx(d_blast, rel=1e-4)
    assert seg.lesions[0].kept and seg.lesions[0].size == 16
    assert seg.lesions[0].extra["c_healthy"] == pytest.approx(1e-4, rel=1e-4)
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[BLAST] = BLASTIC
    np.testing.assert_array_equal(seg.labels, expected)
    np.testing.assert_allclose(seg.scores[BLAST], d_blast, rtol=1e-4)
    assert seg.labels.dtype == np.uint8 and seg.candidates.dtype == np.int32


def test_mixed_scores_both_polarities_and_keeps_only_the_explaining_one():
    image, body = vertebra()
    seg = method().segment(sample_of(image, body, phenotype=None))
    d_blast, d_lysis = expected_deltas(image)
    assert [lesion.label for lesion in seg.lesions] == [LYTIC, BLASTIC]
    assert [lesion.score for lesion in seg.lesions] == pytest.approx([d_lysis, d_blast], rel=1e-4)
    assert [lesion.kept for lesion in seg.lesions] == [False, True]
    assert set(np.unique(seg.candidates)) == {0, 1, 2}
    assert (seg.candidates[LYSIS] == 1).all() and (seg.candidates[BLAST] == 2).all()


def test_the_reencoded_floor_is_c_of_the_encoded_healthy_edit():
    """``floor=reencoded``: Eq. (3)'s floor is ``c(encode(I_healthy))``; on the exact linear
    'DAE' that is ``c(z_healthy)`` up to float32 encoding, and a floor at or above ``c(base)``
    refuses the vertebra."""
    image, body = vertebra()
    seg = method(floor="reencoded").segment(sample_of(image, body, phenotype=Phenotype.BLASTIC))
    d_blast, _ = expected_deltas(image)
    assert seg.lesions[0].extra["c_healthy"] == pytest.approx(1e-4, rel=1e-4)
    assert seg.lesions[0].score == pytest.approx(d_blast, rel=1e-4)
    assert HideAndSeek.from_parts(LinearAutoencoder(rows=region_rows()), classifier()).floor == (
        "reencoded"
    )
    with pytest.raises(ValueError, match="reencoded"):
        method(floor="zero")


def lytic_direction(bias: float) -> LatentClassifier:
    """A phenotype direction weighing the lytic region (darker, more malignant)."""
    normal = np.array([0.0, -4.0])
    return LatentClassifier(normal * SCALE, bias + normal @ MEAN, MEAN, SCALE, 1.0)


def c_z(image: np.ndarray, normal: np.ndarray, bias: float) -> float:
    """``c(z)`` of a raw-space hyperplane on the linear 'DAE', by hand."""
    return float(expit(normal @ (region_rows() @ hu_to_unit(image).ravel()) + bias))


def test_the_phenotype_direction_is_the_classifier_of_the_hint():
    image, body = vertebra()
    directions = {Phenotype.LYTIC: lytic_direction(2.0)}
    parts = (LinearAutoencoder(rows=region_rows()), classifier(), directions)
    params = {"min_candidate_px": 5, "floor": "target", "only_malignant": False}
    phenotype = HideAndSeek.from_parts(*parts, **params)
    pooled = HideAndSeek.from_parts(*parts, direction="pooled", **params)
    assert phenotype.direction == "phenotype" and HideAndSeekPaper().direction == "pooled"
    lytic, own = c_z(image, np.array([0.0, -4.0]), 2.0), c_z(image, NORMAL, BIAS)
    for method_, hint, expected in [
        (phenotype, Phenotype.LYTIC, lytic),
        (phenotype, Phenotype.BLASTIC, own),  # no blastic direction: the pooled classifier
        (pooled, Phenotype.LYTIC, own),
    ]:
        seg = method_.segment(sample_of(image, body, phenotype=hint))
        assert seg.lesions[0].extra["c_z"] == pytest.approx(expected, rel=1e-5)
    healthy_lytic = {Phenotype.LYTIC: lytic_direction(-30.0)}  # calls the vertebra healthy
    gated = HideAndSeek.from_parts(*parts[:2], healthy_lytic, direction="phenotype",
                                   min_candidate_px=5)  # fmt: skip
    refused = gated.segment(sample_of(image, body, phenotype=Phenotype.LYTIC))
    assert not refused.lesions and "< 0.5" in refused.refusal
    assert gated.segment(sample_of(image, body, phenotype=Phenotype.BLASTIC)).lesions
    with pytest.raises(ValueError, match="phenotype"):
        method(direction="lytic")


def test_lytic_hint_keeps_nothing_here():
    image, body = vertebra()
    seg = method().segment(sample_of(image, body, phenotype=Phenotype.LYTIC))
    assert [lesion.label for lesion in seg.lesions] == [LYTIC]
    assert not seg.labels.any()


def test_candidates_under_the_size_prior_are_hidden_but_not_scored():
    image, body = vertebra()
    small = method(min_candidate_px=17).segment(sample_of(image, body, phenotype=None))
    assert not small.lesions and not small.labels.any()
    default = HideAndSeek.from_parts(LinearAutoencoder(rows=region_rows()), classifier())
    assert default.min_candidate_px == 25 and not default.segment(sample_of(image, body)).lesions
    at_size = method(min_candidate_px=16).segment(sample_of(image, body, phenotype=None))
    assert [lesion.size for lesion in at_size.lesions] == [16, 16]


def test_only_malignant_vertebrae_are_segmented():
    image, body = vertebra(blastic=300.0)  # c(z) < 0.5
    assert not method().segment(sample_of(image, body, phenotype=None)).lesions
    seg = method(only_malignant=False).segment(sample_of(image, body, phenotype=None))
    assert [lesion.label for lesion in seg.lesions] == [LYTIC, BLASTIC]


def test_the_ungated_entry_segments_what_the_gate_skips():
    from wsbench.harness.registry import load_method

    assert load_method("hideseek-ungated") is HideAndSeekUngated
    image, body = vertebra(blastic=300.0)  # c(z) < 0.5: the default skips it
    parts = (LinearAutoencoder(rows=region_rows()), classifier())
    seg = HideAndSeekUngated.from_parts(*parts, min_candidate_px=5).segment(sample_of(image, body))
    assert [lesion.label for lesion in seg.lesions] == [LYTIC, BLASTIC]
    gated = HideAndSeekUngated.from_parts(*parts, min_candidate_px=5, only_malignant=True)
    assert not gated.segment(sample_of(image, body)).lesions


def test_a_vertebra_already_below_p_target_is_not_attributed():
    image, body = vertebra(blastic=300.0)  # c(z) < 0.5 < p_target: Eq. 1 would add malignancy
    assert not method(only_malignant=False, p_target=0.6).segment(sample_of(image, body)).lesions


class MeanCutPaper(HideAndSeekPaper):
    """The authors' configuration with the default's candidates (body-mean cut, 8-connected)."""

    threshold = "body-mean"
    connectivity = 2


def test_the_paper_configuration_and_the_default_agree_on_an_exact_autoencoder():
    """On a 'DAE' whose reconstruction is exact and whose projection returns ``encode``, the
    authors' algorithm (projected ``I_hide``, ``c(z)`` of the input, unbatched) and the default
    give the same Δ on the same candidates; the paper keeps the difference map's outlines."""
    image, body = vertebra()
    parts = (LinearAutoencoder(rows=region_rows()), classifier())
    fast = method(batch_size=8).segment(sample_of(image, body, phenotype=None))
    paper = MeanCutPaper.from_parts(*parts, steps_stochastic=3, steps_decode=3)
    slow = paper.segment(sample_of(image, body, phenotype=None))
    assert len(fast.lesions) == 2
    assert [x.score for x in fast.lesions] == pytest.approx([x.score for x in slow.lesions])
    np.testing.assert_array_equal(fast.labels, slow.labels)


def test_the_paper_configuration_cuts_at_the_median_of_positive_differences():
    """The authors' cut is strict at the median of the positive differences: a region whose
    edit is uniform gives no candidate (`test_attribution` checks the cut on other maps)."""
    image, body = vertebra()
    parts = (LinearAutoencoder(rows=region_rows()), classifier())
    paper = HideAndSeekPaper.from_parts(*parts, steps_stochastic=3, steps_decode=3)
    assert not paper.segment(sample_of(image, body, phenotype=None)).lesions


def test_the_paper_configuration_is_registered_outside_the_default_bench():
    from wsbench.harness.bench import default_methods
    from wsbench.harness.registry import load_method

    assert load_method("hideseek-paper") is HideAndSeekPaper
    assert "hideseek-paper" not in default_methods() and "hideseek" in default_methods()
    paper = HideAndSeekPaper()
    assert (paper.steps_stochastic, paper.steps_decode, paper.batch_size) == (250, 100, 1)
    assert (paper.min_candidate_px, paper.boundary_px) == (5, 0)
    assert (HideAndSeekPaper.reference, HideAndSeekPaper.invert) == ("reconstruction", True)
    assert (HideAndSeekPaper.threshold, HideAndSeekPaper.connectivity) == ("positive-median", 1)
    assert HideAndSeekPaper.denominator == "input"
    assert (HideAndSeek.reference, HideAndSeek.invert) == ("reconstruction", False)
    assert HideAndSeekPaper(steps_decode=20).params()["steps_decode"] == 20


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="boundary_px=-1"):
        HideAndSeek(boundary_px=-1)
    with pytest.raises(RuntimeError, match="fit"):
        HideAndSeek().segment(sample_of(*vertebra(), phenotype=None))


class OffsetAutoencoder(LinearAutoencoder):
    """The linear 'DAE' whose decoder adds ``OFFSET`` to every pixel: ``R ≠ I``."""

    OFFSET = 1.0  # large enough that c(encode(I_healthy)) is far from p_target

    def decode(self, x_t, z_sem, steps):
        return super().decode(x_t, z_sem, steps) + self.OFFSET


@pytest.mark.parametrize("floor", ["target", "reencoded"])
def test_reconstruction_reference_scores_against_the_reconstruction(floor):
    """Eq. (3)'s ``c(z)`` is the classifier on the image ``I_hide`` is built from: ``R``; its
    ``c(z_healthy)`` is ``p_target`` (``floor=target``) or the classifier on the re-encoded
    healthy edit, which the offset 'DAE' shifts like every re-encoded image."""
    image, body = vertebra()
    dae = OffsetAutoencoder(rows=region_rows())
    method = HideAndSeek.from_parts(dae, classifier(), min_candidate_px=5, floor=floor)
    seg = method.segment(sample_of(image, body, phenotype=None))
    z = region_rows() @ hu_to_unit(image).ravel().astype(np.float64)
    shift = dae.OFFSET * region_rows().sum(axis=1)  # encode(R) = z + shift
    z_h = z - (NORMAL @ z + BIAS - logit(1e-4)) / (NORMAL @ EDIT) * EDIT

    def c(latent) -> float:
        """The classifier on the re-encoded image whose regions have these latents."""
        return expit(NORMAL @ (np.asarray(latent) + shift) + BIAS)

    p_base = c(z)
    p_blast, p_lysis = c([z[0], z_h[1]]), c([z_h[0], z[1]])  # one region R, the other H
    c_floor = 1e-4 if floor == "target" else c(z_h)
    expected = [(p - c_floor) / (p_base - c_floor + 1e-8) for p in (p_lysis, p_blast)]
    assert [x.label for x in seg.lesions] == [LYTIC, BLASTIC]
    assert [x.score for x in seg.lesions] == pytest.approx(expected, rel=1e-4)
    assert seg.lesions[0].extra["c_base"] == pytest.approx(p_base, rel=1e-5)


def tiny_dae():
    """The DAE's tiny config, seeded."""
    from wsbench.plugins.common.dae.network import DiffusionAutoencoder

    torch.manual_seed(0)
    return DiffusionAutoencoder.tiny().eval()


@pytest.mark.parametrize("configuration", [HideAndSeek, HideAndSeekPaper])
def test_batched_and_unbatched_paths_give_the_same_delta_on_a_tiny_dae(configuration):
    dae = tiny_dae()
    image, body = vertebra()
    with torch.inference_mode():
        latent = dae.encode(torch.zeros(1, 1, SIZE, SIZE)).shape[1]
    rng = np.random.default_rng(5)
    clf = LatentClassifier(rng.normal(size=latent), 3.0, np.zeros(latent), np.ones(latent), 1)
    params = {"only_malignant": False, "steps_stochastic": 3, "steps_decode": 3, "tau": -1.0,
              "min_candidate_px": 2, "floor": "target"}  # fmt: skip
    batched = configuration.from_parts(dae, clf, batch_size=16, **params)
    looped = configuration.from_parts(dae, clf, batch_size=1, **params)
    a = batched.segment(sample_of(image, body, phenotype=None))
    b = looped.segment(sample_of(image, body, phenotype=None))
    assert len(a.lesions) >= 2
    assert [x.score for x in a.lesions] == pytest.approx([x.score for x in b.lesions], abs=1e-5)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_dae_checkpoint_is_found_by_its_card_and_identified_by_content(tmp_path):
    from fakes import TinyDataset

    from wsbench.models.store import cache_root, file_identity

    training = TinyDataset().prepare().training_set()
    with pytest.raises(FileNotFoundError, match="--checkpoint") as missing:
        HideAndSeek().dae_path(training)
    assert f"wsbench train --method hideseek --dataset {training.name}`" in str(missing.value)
    folder = cache_root() / "models"
    folder.mkdir(parents=True)
    cards = [
        ("dae-other", "dae", "x"),
        ("dae-mine", "dae", training.fingerprint),
        ("dae-healthy-mine", "dae-healthy", training.fingerprint),  # newest, but AD's model
    ]
    for stem, kind, fingerprint in cards:
        (folder / f"{stem}.pt").write_bytes(stem.encode())
        card = {"kind": kind, "dataset_fingerprint": fingerprint}
        (folder / f"{stem}.json").write_text(json.dumps(card))
    found = HideAndSeek().dae_path(training)
    assert found.name == "dae-mine.pt"
    assert file_identity(found).startswith("dae-mine-")
    assert HideAndSeek(checkpoint=file_identity(found)).dae_path(training) == found
    (folder / "dae-mine.pt").write_bytes(b"retrained")
    assert file_identity(found) != file_identity(folder / "dae-other.pt")
    with pytest.raises(FileNotFoundError, match="neither a file nor the identity"):
        HideAndSeek(checkpoint="dae-mine-000000000000").dae_path(training)
