"""The public API of wsbench: the one module a method plugin imports.

Everything a method needs is here: the contract (:class:`Method`, :class:`VertebraSample`,
:class:`Segmentation`, :class:`TrainingSet`, …), the model store its weights live in, the torch
device parser, the training helpers shared by learned methods, the intensity scaling and the
harness's post-processing constants. Dataset adapters use the contract from here too and read
files with :mod:`wsbench.data`.

Names are imported on first use (PEP 562), so ``from wsbench.api import Method`` does not load
torch; the heavy ones (training helpers, device) load it when they are first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "wsbench.contract": (
        "BACKGROUND",
        "BLASTIC",
        "LYTIC",
        "N_CENTRAL_SLICES",
        "DatasetAdapter",
        "LesionScore",
        "Method",
        "Phenotype",
        "PreparedDataset",
        "PreparedVertebra",
        "Segmentation",
        "Skipped",
        "Split",
        "TrainedOn",
        "TrainingSet",
        "TrainingVertebra",
        "TrainOptions",
        "VertebraKey",
        "VertebraSample",
        "WeakLabel",
        "WeightsNotSuppliedError",
    ),
    "wsbench.data.intensity": ("HU_WINDOW", "hu_to_unit", "unit_to_hu"),
    "wsbench.data.nifti": ("bids_folder", "bids_stem", "write_nifti_gz"),
    "wsbench.data.volumes": ("SubjectVolumes", "VertebraLabel"),
    "wsbench.harness.postprocess": (
        "CONNECTIVITY",
        "MIN_COMPONENT_PX",
        "components",
        "eroded_body",
    ),
    "wsbench.models.device": ("module_device", "torch_device"),
    "wsbench.files": ("atomic_path", "digest", "write_json"),
    "wsbench.models.store": (
        "ModelKey",
        "ModelStore",
        "UNKNOWN_DATA",
        "cache_root",
        "WeightsFileError",
        "file_identity",
        "load_weights",
        "read_card",
        "trained_on",
        "write_card",
    ),
    "wsbench.models.training": (
        "augment_batch",
        "augmentations",
        "sample_slices",
        "subject_holdout",
    ),
    "wsbench.progress": ("progress_bar",),
}

_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Load an exported name from the module that defines it (once; then it is cached here)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"wsbench.api has no name {name!r}; see wsbench.api.__all__")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # what static tools see; at run time the names load on first use
    pass
