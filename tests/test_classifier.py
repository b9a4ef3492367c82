"""The weak ResNet-18 classifier, its training helpers, model cache and ``wsbench train``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fakes import TinyDataset
from typer.testing import CliRunner

from wsbench.contract import (
    PreparedDataset,
    PreparedVertebra,
    Split,
    TrainingSet,
    TrainingVertebra,
    VertebraKey,
    WeakLabel,
)
from wsbench.data.intensity import hu_to_unit
from wsbench.models.training import augment_batch, augmentations, sample_slices, subject_holdout
from wsbench.plugins.cam import classifier
from wsbench.plugins.cam.classifier import (
    ClassifierConfig,
    build_resnet18,
    ensure_classifier,
    fit_resnet,
    load_classifier,
    model_key,
    save_classifier,
)

SIZE = 64
TINY = ClassifierConfig(epochs=1, batch_size=16, seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_vertebra(subject: str, level: str, malignant: bool, split: Split) -> PreparedVertebra:
    """A 64×64 vertebra: soft-tissue background, a 300 HU body, a 1000 HU square when malignant."""
    rng = np.random.default_rng([ord(c) for c in subject + level])
    image = np.full((SIZE, SIZE), 0.0, np.float32) + rng.normal(0, 10, (SIZE, SIZE))
    body = np.zeros((SIZE, SIZE), bool)
    body[12:52, 16:48] = True
    image[body] += 300.0
    if malignant:
        image[24:34, 24:34] = 1000.0
    return PreparedVertebra(
        key=VertebraKey("synthetic", subject, level),
        split=split,
        label=WeakLabel.MALIGNANT if malignant else WeakLabel.HEALTHY,
        phenotype=None,
        slices=np.repeat(image[None], 5, axis=0).astype(np.float32),
        body=np.repeat(body[None], 5, axis=0),
        spacing=(0.8, 0.8),
        lesions=np.full((5, SIZE, SIZE), np.nan, np.float32),  # poisoned: must never be read
    )


def synthetic_dataset(fingerprint: str = "synthetic-fp") -> PreparedDataset:
    """Six training subjects (L1 malignant in half of them, L2 healthy) and one test subject."""
    vertebrae = [
        synthetic_vertebra(f"s{i}", level, level == "L1" and i % 2 == 0, Split.TRAIN)
        for i in range(6)
        for level in ("L1", "L2")
    ]
    vertebrae.append(synthetic_vertebra("t0", "L1", True, Split.TEST))
    return PreparedDataset("synthetic", fingerprint, vertebrae)


def test_augmentations_are_seeded() -> None:
    batch = np.random.default_rng(0).uniform(-1, 1, (6, 1, SIZE, SIZE)).astype(np.float32)
    first = augment_batch(batch, augmentations(7))
    again = augment_batch(batch, augmentations(7))
    other = augment_batch(batch, augmentations(8))
    assert first.shape == (6, 1, SIZE, SIZE) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_sample_slices_draws_each_of_the_central_five() -> None:
    slices = np.stack([np.full((4, 4), 100.0 * k, np.float32) for k in range(5)])
    vertebra = TrainingVertebra(
        VertebraKey("d", "s", "L1"), slices, np.ones((5, 4, 4), bool), (1, 1), None
    )
    rng = np.random.default_rng(0)
    drawn = np.concatenate([sample_slices([vertebra] * 10, rng) for _ in range(10)])
    assert drawn.shape == (100, 1, 4, 4)
    assert {float(v) for v in np.unique(drawn)} == {
        float(hu_to_unit(np.float32(100.0 * k))) for k in range(5)
    }


def test_sample_slices_refuses_mixed_shapes() -> None:
    make = lambda n: TrainingVertebra(  # noqa: E731
        VertebraKey("d", f"s{n}", "L1"), np.zeros((5, n, n)), np.ones((5, n, n), bool), (1, 1), None
    )
    with pytest.raises(ValueError, match="d_s8_L1 has slices of shape"):
        sample_slices([make(4), make(8)], np.random.default_rng(0))


def test_subject_holdout_keeps_subjects_whole_and_is_seeded() -> None:
    training = synthetic_dataset().training_set()
    train, valid = subject_holdout(training, 0.34, seed=3)
    assert (train, valid) == subject_holdout(training, 0.34, seed=3)
    held = {training[i].key.subject for i in valid}
    assert len(held) == 2
    assert held.isdisjoint({training[i].key.subject for i in train})
    assert sorted(train + valid) == list(range(len(training)))


def test_training_is_deterministic_under_a_seed() -> None:
    training = list(synthetic_dataset().training_set())
    first = fit_resnet(training, TINY, progress=False).state_dict()
    again = fit_resnet(training, TINY, progress=False).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_no_batch_of_one_when_the_split_leaves_a_remainder() -> None:
    training = list(synthetic_dataset().training_set())[:9]  # 9 = 8 + 1 with batch size 8
    model = fit_resnet(training, replace(TINY, batch_size=8), progress=False)
    assert not model.training


def test_loader_never_reaches_lesion_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = synthetic_dataset()
    seen: list[tuple[list[TrainingVertebra], np.ndarray]] = []

    def spy(vertebrae, rng):
        batch = sample_slices(vertebrae, rng)
        seen.append((list(vertebrae), batch))
        return batch

    monkeypatch.setattr(classifier, "sample_slices", spy)
    classifier.train_classifier(dataset.training_set(), TINY, progress=False)
    assert seen
    for vertebrae, batch in seen:
        assert all(type(v) is TrainingVertebra and not hasattr(v, "lesions") for v in vertebrae)
        assert np.isfinite(batch).all()  # the lesion arrays are all NaN
        for vertebra, item in zip(vertebrae, batch, strict=True):
            assert any(np.array_equal(item[0], hu_to_unit(s)) for s in vertebra.slices)


def test_training_uses_the_train_split_only() -> None:
    training = synthetic_dataset().training_set()
    assert len(training) == 12
    assert all(v.key.subject != "t0" for v in training)


def test_trained_model_is_reused_when_key_matches_and_retrained_otherwise() -> None:
    training = synthetic_dataset().training_set()
    path, trained = ensure_classifier(training, TINY, progress=False)
    key = model_key(training.fingerprint, TINY)
    assert trained and path == classifier.STORE.find(key.kind, key.dataset_fingerprint, key.config)
    stamp = path.stat().st_mtime_ns
    again, trained_again = ensure_classifier(training, TINY, progress=False)
    assert (again, trained_again) == (path, False)
    assert path.stat().st_mtime_ns == stamp
    other_config, trained = ensure_classifier(training, replace(TINY, epochs=2), progress=False)
    assert trained and other_config != path
    other_data = TrainingSet("synthetic", "another-fp", list(training))
    other_path, trained = ensure_classifier(other_data, TINY, progress=False)
    assert trained and other_path not in (path, other_config)


def test_checkpoint_for_another_setting_is_refused(tmp_path) -> None:
    path = tmp_path / "model.pt"
    save_classifier(path, build_resnet18(), model_key("synthetic-fp", TINY))
    with pytest.raises(ValueError, match=r"trained for another setting \(dataset_fingerprint"):
        load_classifier(path, model_key("other-fp", TINY))
    with pytest.raises(ValueError, match=r"trained for another setting \(config"):
        load_classifier(path, model_key("synthetic-fp", replace(TINY, seed=1)))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist"):
        load_classifier(tmp_path / "missing.pt")


def test_checkpoint_round_trip_keeps_predictions(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_resnet18().eval()
    path = tmp_path / "model.pt"
    key = model_key("synthetic-fp", TINY)
    save_classifier(path, model, key)
    stored = torch.load(path, weights_only=True)
    assert stored["key"] == key.as_dict() and stored["hu_window"] == [-200.0, 1300.0]
    images = np.stack([v.slices[2] for v in synthetic_dataset().vertebrae[:4]])
    np.testing.assert_allclose(
        classifier.malignancy(load_classifier(path, key), images),
        classifier.malignancy(model, images),
        atol=2e-3,
    )


def test_model_card_records_training_facts() -> None:
    path = classifier.train_classifier(synthetic_dataset().training_set(), TINY, progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["dataset_fingerprint"] == "synthetic-fp" and card["kind"] == "classifier"
    assert card["seed"] == 0 and card["epochs"] == 1 and card["config"]["epochs"] == 1
    assert {"val_auc", "val_f1", "wall_time_s", "command", "n_train"} <= set(card)
    assert card["val_n"] + card["n_train"] == 12
    assert "# ResNet-18" in path.with_suffix(".md").read_text()


def test_resnet18_has_one_input_channel_and_one_logit() -> None:
    model = build_resnet18()
    assert model.conv1.in_channels == 1 and model.fc.out_features == 1
    assert model(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, 1)


def test_cli_trains_then_reuses() -> None:
    from wsbench.cli.main import app

    args = ["train", "--method", "gradcam", "--dataset", "fakes:TinyDataset", "-p", "epochs=1"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "val_auc" in first.output
    training = TinyDataset().prepare().training_set()
    key = model_key(training.fingerprint, ClassifierConfig(epochs=1))
    path = classifier.STORE.find(key.kind, key.dataset_fingerprint, key.config)
    stamp = path.stat().st_mtime_ns
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0 and path.stat().st_mtime_ns == stamp


def test_cli_unknown_method_is_a_clear_error() -> None:
    from wsbench.cli.main import app

    result = CliRunner().invoke(app, ["train", "--method", "nope", "-d", "fakes:TinyDataset"])
    assert result.exit_code == 1
    assert "unknown method 'nope'" in result.output
