"""CAM baseline plugins: heatmaps, Otsu binarisation in the body, classifier reuse and refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_classifier import synthetic_dataset

from wsbench.contract import TrainedOn
from wsbench.harness.runner import RunConfig, run
from wsbench.models.store import write_card
from wsbench.plugins.cam import (
    TARGET_LAYER,
    EigenCAMMethod,
    GradCAMMethod,
    GradCAMPlusPlusMethod,
    LayerCAMMethod,
    classifier,
    otsu_inside,
)
from wsbench.plugins.cam.classifier import (
    ClassifierConfig,
    build_resnet18,
    model_key,
    save_classifier,
)
from wsbench.testing import sample_of

CONFIG = ClassifierConfig(epochs=1, seed=0)
"""The classifier config of a CAM plugin built with ``epochs=1``."""

PLUGINS = [GradCAMMethod, GradCAMPlusPlusMethod, LayerCAMMethod, EigenCAMMethod]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def random_checkpoint(tmp_path: Path) -> Path:
    """A seeded random-weight classifier stored under the key of the synthetic dataset."""
    torch.manual_seed(0)
    path = tmp_path / "random.pt"
    save_classifier(path, build_resnet18(), model_key("synthetic-fp", CONFIG))
    return path


@pytest.mark.parametrize("plugin", PLUGINS)
def test_plugin_gives_slice_sized_heatmap_and_binary_mask_in_body(plugin, random_checkpoint):
    method = plugin(checkpoint=str(random_checkpoint), epochs=CONFIG.epochs, seed=CONFIG.seed)
    method.fit(synthetic_dataset().training_set(), random_checkpoint.parent)
    vertebra = synthetic_dataset().vertebrae[-1].sample()
    seg = method.segment(sample_of(vertebra.image, vertebra.body_mask))
    assert method.distinguishes_phenotype is False
    assert seg.labels.shape == vertebra.image.shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels).tolist()) <= {0, 1}
    assert not seg.labels[~vertebra.body_mask].any()
    assert seg.scores.shape == vertebra.image.shape
    assert seg.scores.min() >= 0.0 and seg.scores.max() <= 1.0
    np.testing.assert_array_equal(seg.labels, otsu_inside(seg.scores, vertebra.body_mask))


def test_eigencam_heatmap_varies_over_the_slice(random_checkpoint):
    method = EigenCAMMethod(checkpoint=str(random_checkpoint), epochs=CONFIG.epochs)
    method.fit(synthetic_dataset().training_set(), random_checkpoint.parent)
    vertebra = synthetic_dataset().vertebrae[-1].sample()
    seg = method.segment(sample_of(vertebra.image, vertebra.body_mask))
    assert np.ptp(seg.scores) > 0.5 and seg.labels.any()


def test_target_layer_is_the_one_before_last_convolutional_stage():
    model = build_resnet18()
    stages = [name for name, _ in model.named_children() if name.startswith("layer")]
    assert stages == ["layer1", "layer2", "layer3", "layer4"]
    assert stages[-2] == TARGET_LAYER
    grid = {}
    model.get_submodule(TARGET_LAYER).register_forward_hook(lambda m, i, o: grid.update(s=o.shape))
    model(torch.zeros(1, 1, 64, 64))
    assert grid["s"][-2:] == (4, 4)


def test_unknown_target_layer_is_a_clear_error(random_checkpoint):
    method = GradCAMMethod(checkpoint=str(random_checkpoint), epochs=1, target_layer="layer9")
    with pytest.raises(ValueError, match="target_layer 'layer9' is not a module"):
        method.fit(synthetic_dataset().training_set(), random_checkpoint.parent)


def test_otsu_inside_body_on_a_constructed_heatmap():
    heat = np.zeros((6, 6), np.float32)
    heat[:, 3:] = 1.0
    heat[0, 0] = 5.0  # outside the body: ignored by the threshold and the mask
    body = np.zeros((6, 6), bool)
    body[1:5, 1:5] = True
    expected = np.zeros((6, 6), np.uint8)
    expected[1:5, 3:5] = 1
    np.testing.assert_array_equal(otsu_inside(heat, body), expected)


def test_otsu_inside_a_flat_heatmap_is_empty():
    body = np.ones((4, 4), bool)
    assert not otsu_inside(np.full((4, 4), 0.3, np.float32), body).any()


def test_empty_body_mask_is_a_clear_error(random_checkpoint):
    method = GradCAMMethod(checkpoint=str(random_checkpoint), epochs=CONFIG.epochs)
    method.fit(synthetic_dataset().training_set(), random_checkpoint.parent)
    image = synthetic_dataset().vertebrae[0].slices[2]
    with pytest.raises(ValueError, match="vertebral-body mask is empty"):
        method.segment(sample_of(image, np.zeros(image.shape, bool)))


def test_segment_before_fit_is_a_clear_error():
    image = synthetic_dataset().vertebrae[0].slices[2]
    with pytest.raises(RuntimeError, match=r"call fit\(\) first"):
        GradCAMMethod().segment(sample_of(image, np.ones(image.shape, bool)))


def test_checkpoint_of_another_dataset_is_a_transfer(random_checkpoint):
    write_card(random_checkpoint, model_key("synthetic-fp", CONFIG), "random", {"dataset": "syn"})
    method = LayerCAMMethod(checkpoint=str(random_checkpoint), epochs=CONFIG.epochs)
    method.fit(synthetic_dataset(fingerprint="other-fp").training_set(), random_checkpoint.parent)
    assert method.trained_on() == {"classifier": TrainedOn("syn", "synthetic-fp")}


def test_checkpoint_of_this_dataset_with_another_config_is_refused(random_checkpoint):
    write_card(random_checkpoint, model_key("synthetic-fp", CONFIG), "random", {})
    method = LayerCAMMethod(checkpoint=str(random_checkpoint), epochs=CONFIG.epochs + 1)
    with pytest.raises(ValueError, match=r"trained for another setting.*epochs"):
        method.fit(synthetic_dataset().training_set(), random_checkpoint.parent)


def test_fit_reuses_the_stored_classifier(monkeypatch, tmp_path):
    calls = []
    train = classifier.train_classifier

    def counting(training, config, progress=True):
        calls.append(config)
        return train(training, config, progress=False)

    monkeypatch.setattr(classifier, "train_classifier", counting)
    training = synthetic_dataset().training_set()
    GradCAMMethod(epochs=1).fit(training, tmp_path)
    EigenCAMMethod(epochs=1).fit(training, tmp_path)  # same key: the CAMs share one classifier
    assert len(calls) == 1
    GradCAMMethod(epochs=1, seed=5).fit(training, tmp_path)
    assert len(calls) == 2 and calls[1].seed == 5


def test_params_are_the_constructor_arguments():
    method = GradCAMPlusPlusMethod(checkpoint="m.pt", epochs=3, seed=2)
    assert method.params() == {
        "checkpoint": "m.pt",
        "model": None,
        "epochs": 3,
        "seed": 2,
        "target_layer": TARGET_LAYER,
    }


def test_runner_trains_then_segments_every_test_vertebra(tmp_path):
    config = RunConfig("gradcam", "fakes:TinyDataset", params={"epochs": 1})
    result = run(config, tmp_path)
    assert (result.cases["status"] == "ok").all() and len(result.cases) == 4
