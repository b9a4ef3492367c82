"""CAM baselines (paper A.1.3): GradCAM, GradCAM++, LayerCAM and EigenCAM on a weak ResNet-18.

The classifier (:mod:`wsbench.plugins.cam.classifier`) is trained on vertebra-level labels only, or
reused from the model store when one for the same dataset fingerprint and config exists. The
heatmap comes from pytorch-grad-cam for the malignant logit at "the one-before-last
convolutional layer" (paper A.1.3), read as ResNet's stage naming (He et al. 2016: conv1,
conv2_x … conv5_x): the stage before the last, ``conv4_x``, i.e. torchvision's ``layer3`` (a 4×4
grid at 64×64 input; ``layer4`` has 2×2). The library scales the map to [0, 1] and resizes it to
the slice; it is binarised with Otsu's threshold computed on the heatmap values inside the
vertebral body. The answer is a phenotype-blind 0/1 foreground.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage.filters import threshold_otsu
from torch import nn

from wsbench.api import (
    Method,
    Segmentation,
    TrainedOn,
    TrainingSet,
    TrainOptions,
    VertebraSample,
    file_identity,
    trained_on,
)
from wsbench.plugins.cam.classifier import (
    KIND as CLASSIFIER_KIND,
)
from wsbench.plugins.cam.classifier import (
    STORE,
    ClassifierConfig,
    ensure_classifier,
    load_classifier,
    model_key,
    slices_tensor,
)

TARGET_LAYER = "layer3"
"""Module path of the one-before-last convolutional stage (``conv4_x``) of torchvision's ResNet."""


def target_module(model: nn.Module, layer: str) -> nn.Module:
    """The module at dotted path ``layer`` of ``model``, or ValueError naming valid examples."""
    try:
        return model.get_submodule(layer)
    except AttributeError:
        raise ValueError(
            f"target_layer {layer!r} is not a module of the ResNet-18 classifier; "
            "use a dotted path such as layer3, layer4.0 or layer4.1.conv1"
        ) from None


def cam_heatmap(
    cam_class: type[BaseCAM], model: nn.Module, layer: str, image: np.ndarray
) -> np.ndarray:
    """Heatmap in [0, 1] of the malignant logit for one HU slice, on the slice's grid."""
    with cam_class(model=model, target_layers=[target_module(model, layer)]) as cam:
        heat = cam(input_tensor=slices_tensor(image), targets=[ClassifierOutputTarget(0)])
    return np.nan_to_num(heat[0].astype(np.float32))


def otsu_inside(heatmap: np.ndarray, body: np.ndarray) -> np.ndarray:
    """0/1 mask of body pixels whose heatmap value exceeds Otsu's threshold of the body's values."""
    values = heatmap[body]
    mask = np.zeros(heatmap.shape, np.uint8)
    if np.ptp(values) == 0:
        return mask
    mask[body & (heatmap > threshold_otsu(values))] = 1
    return mask


class CAMMethod(Method):
    """Shared behaviour of the CAM baselines; subclasses choose the pytorch-grad-cam class."""

    cam_class: ClassVar[type[BaseCAM]]
    distinguishes_phenotype = False
    version = "1"

    def __init__(
        self,
        checkpoint: str | None = None,
        model: str | None = None,
        epochs: int = ClassifierConfig.epochs,
        seed: int = ClassifierConfig.seed,
        target_layer: str = TARGET_LAYER,
    ) -> None:
        self.checkpoint = checkpoint
        self.model = model
        self.epochs = epochs
        self.seed = seed
        self.target_layer = target_layer
        self.network: nn.Module | None = None
        self.model_path: Path | None = None
        self.origin: TrainedOn | None = None

    @classmethod
    def needs(cls) -> str:
        """A ResNet-18 classifier trained on the dataset's weak labels (shared by the CAMs)."""
        return "a ResNet-18 classifier of the weak labels (shared by the CAMs)"

    @classmethod
    def readiness(cls) -> str:
        """The datasets a classifier is stored for; other data train one when a run starts."""
        found = STORE.trained_for(CLASSIFIER_KIND)
        stored = f"classifier for {', '.join(found)}; " if found else ""
        return f"{stored}other data: trained at the first run (minutes)"

    @property
    def config(self) -> ClassifierConfig:
        """The classifier's training configuration (part of its model-store key)."""
        return ClassifierConfig(epochs=self.epochs, seed=self.seed)

    def models(self) -> dict[str, str]:
        """The classifier ``fit`` trained or loaded, as ``<file stem>-<sha256[:12]>``; ``{}``
        before fit."""
        return {"classifier": file_identity(self.model_path)} if self.model_path else {}

    def train(self, training: TrainingSet, options: TrainOptions) -> list[Path]:
        """Train (or find) the ResNet-18 classifier of this dataset and config (all four CAMs
        share it)."""
        path, _ = ensure_classifier(training, self.config, options.progress)
        return [path]

    def trained_on(self) -> dict[str, TrainedOn]:
        """The data the classifier ``fit`` loaded was trained on; ``{}`` before fit."""
        return {"classifier": self.origin} if self.origin else {}

    def classifier_path(self, training: TrainingSet) -> Path:
        """The classifier this run uses: ``checkpoint`` (a path or a model identity), else the
        one trained on the dataset named ``model``, else this dataset's (trained now when none
        is stored), else — when the training split has no labelled vertebra to learn from —
        the shipped one."""
        if self.checkpoint is not None:
            return STORE.resolve(self.checkpoint)
        if self.model is not None:
            return STORE.transfer_model(CLASSIFIER_KIND, self.model)
        if not len(training.labelled()):
            return STORE.find(CLASSIFIER_KIND, training.fingerprint) or STORE.transfer_model(
                CLASSIFIER_KIND
            )
        return ensure_classifier(training, self.config)[0]

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        """Load the classifier :meth:`classifier_path` names; one trained on this dataset must
        also have been made with this config, one trained elsewhere is a transfer."""
        self.model_path = self.classifier_path(training)
        self.origin = trained_on(self.model_path)
        own = self.origin.fingerprint == training.fingerprint
        self.network = load_classifier(
            self.model_path, model_key(training.fingerprint, self.config) if own else None
        )
        target_module(self.network, self.target_layer)

    def segment(self, sample: VertebraSample) -> Segmentation:
        """Binary CAM foreground inside the body, with the heatmap as scores."""
        body = sample.body_mask.astype(bool)
        if not body.any():
            raise ValueError("the vertebral-body mask is empty: no pixels to binarise a CAM in")
        if self.network is None:
            raise RuntimeError(f"{self.name}: call fit() first")
        with torch.enable_grad():
            heat = cam_heatmap(type(self).cam_class, self.network, self.target_layer, sample.image)
        return Segmentation(labels=otsu_inside(heat, body), scores=heat)


class GradCAMMethod(CAMMethod):
    """GradCAM (Selvaraju et al. 2017) heatmap, Otsu-binarised inside the body."""

    name = "gradcam"
    cam_class = GradCAM


class GradCAMPlusPlusMethod(CAMMethod):
    """GradCAM++ (Chattopadhay et al. 2018) heatmap, Otsu-binarised inside the body."""

    name = "gradcampp"
    cam_class = GradCAMPlusPlus


class LayerCAMMethod(CAMMethod):
    """LayerCAM (Jiang et al. 2021) heatmap, Otsu-binarised inside the body."""

    name = "layercam"
    cam_class = LayerCAM


class EigenCAMMethod(CAMMethod):
    """EigenCAM (Bany Muhammad et al. 2021): first principal component of the activations."""

    name = "eigencam"
    cam_class = EigenCAM
