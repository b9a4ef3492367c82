"""Seconds per vertebra of each CAM baseline, and classifier training time.

    python benchmarks/cam_speed.py --dataset phantom --vertebrae 50 --threads 2 --train-epochs 1

CAM timing uses the stored classifier for the dataset's default config when one exists (else a
seeded random-weight ResNet-18: the cost does not depend on the weights); it covers
``Method.segment`` only (heatmap + Otsu), the model being loaded once. Training is timed in a
throw-away cache with ``--train-epochs`` epochs on the dataset's training split (0 skips it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from wsbench.plugins.cam import EigenCAMMethod, GradCAMMethod, GradCAMPlusPlusMethod, LayerCAMMethod
from wsbench.plugins.cam.classifier import (
    ClassifierConfig,
    build_resnet18,
    load_classifier,
    model_key,
    train_classifier,
)

from wsbench.contract import PreparedDataset, Split
from wsbench.harness.runner import RunConfig, prepare_dataset
from wsbench.models.store import find_model


def time_cams(dataset: PreparedDataset, n_vertebrae: int) -> dict[str, float]:
    """Median seconds of ``segment`` per vertebra for each CAM method."""
    training = dataset.training_set()
    stored = find_model(model_key(training.fingerprint, ClassifierConfig()))
    if stored is not None:
        model, origin = load_classifier(stored), f"stored classifier {stored}"
    else:
        torch.manual_seed(0)
        model, origin = build_resnet18().eval(), "random-weight ResNet-18 (no stored classifier)"
    print(f"model: {origin}")
    vertebrae = dataset.split(Split.TEST)[:n_vertebrae]
    results = {}
    for cls in (GradCAMMethod, GradCAMPlusPlusMethod, LayerCAMMethod, EigenCAMMethod):
        method = cls()
        method.model = model
        seconds = []
        for vertebra in vertebrae:
            sample = vertebra.sample()
            started = time.perf_counter()
            method.segment(sample.image, sample.body_mask)
            seconds.append(time.perf_counter() - started)
        results[cls.name] = statistics.median(seconds)
    return results


def time_training(dataset: PreparedDataset, epochs: int) -> float:
    """Wall seconds to train (and validate, save) the classifier for ``epochs`` epochs."""
    with tempfile.TemporaryDirectory() as cache:
        previous = os.environ.get("WSBENCH_CACHE")
        os.environ["WSBENCH_CACHE"] = cache
        try:
            started = time.perf_counter()
            config = ClassifierConfig(epochs=epochs)
            train_classifier(dataset.training_set(), config, progress=False)
            return time.perf_counter() - started
        finally:
            if previous is None:
                del os.environ["WSBENCH_CACHE"]
            else:
                os.environ["WSBENCH_CACHE"] = previous


def main() -> None:
    """Parse arguments, time, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--vertebrae", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-epochs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RunConfig("gradcam", args.dataset, root=str(args.root) if args.root else None)
    _, dataset = prepare_dataset(config)
    n_train = len(dataset.training_set().labelled())
    print(f"dataset {dataset.name} ({dataset.fingerprint}), torch threads {args.threads}")
    for name, seconds in time_cams(dataset, args.vertebrae).items():
        print(f"{name:10s} {seconds:.3f} s/vertebra (median)")
    if args.train_epochs > 0:
        seconds = time_training(dataset, args.train_epochs)
        print(
            f"classifier training: {seconds:.1f} s for {args.train_epochs} epoch(s) over "
            f"{n_train} labelled training vertebrae (incl. validation and saving)"
        )


if __name__ == "__main__":
    main()
