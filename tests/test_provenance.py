"""Which trained weights a run used: ``Method.models()`` in the run manifest and the leaderboard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from test_medsam import tiny_sam

from wsbench.contract import Method, TrainingSet, VertebraSample
from wsbench.harness.runner import RunConfig, run
from wsbench.models.store import HASH_CHUNK_BYTES, cache_root, file_identity
from wsbench.plugins.ad import AnomalyDetection
from wsbench.plugins.cam import GradCAMMethod
from wsbench.plugins.cam.classifier import (
    ClassifierConfig,
    build_resnet18,
    model_key,
    save_classifier,
)
from wsbench.plugins.common.dae.network import DiffusionAutoencoder
from wsbench.plugins.hideseek import HideAndSeek
from wsbench.report.leaderboard import MethodRun
from wsbench.report.publish import header_lines

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "fakes:TinyDataset"
KNOWN = {"dae": "dae-a78ecb8779ef-0123456789ab", "classifier": "clf-fedcba987654"}


def expected_identity(path: Path) -> str:
    """``<stem>-<sha256[:12]>`` computed here from the whole file."""
    return f"{path.stem}-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


def manifest_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "manifest.json").read_text())


class KnownModels(Method):
    """Learns nothing, but reports :data:`KNOWN` as its weights after fit (none before)."""

    name = "knownmodels"
    fitted: ClassVar[bool] = False

    def fit(self, training: TrainingSet, workdir: Path) -> None:
        KnownModels.fitted = True

    def models(self) -> dict[str, str]:
        return dict(KNOWN) if KnownModels.fitted else {}

    def segment(self, sample: VertebraSample) -> np.ndarray:
        return np.zeros(sample.image.shape, np.uint8)


class InterruptedAfterFit(KnownModels):
    """:class:`KnownModels` whose run is interrupted (Ctrl-C) at the first vertebra."""

    name = "interrupted"

    def segment(self, sample: VertebraSample) -> np.ndarray:
        raise KeyboardInterrupt


def tiny_dae_file(path: Path) -> Path:
    """A seeded, untrained tiny DAE saved as a wsbench checkpoint."""
    torch.manual_seed(0)
    DiffusionAutoencoder.tiny().save(path)
    return path


def tiny_training() -> TrainingSet:
    from fakes import TinyDataset

    return TinyDataset().prepare().training_set()


# --- the identity helper -----------------------------------------------------------------------


def test_file_identity_is_the_stem_and_the_sha256_prefix(tmp_path: Path) -> None:
    path = tmp_path / "dae-a78ecb8779ef.pt"
    path.write_bytes(np.random.default_rng(0).bytes(2 * HASH_CHUNK_BYTES + 17))  # several chunks
    identity = file_identity(path)
    assert identity == f"dae-a78ecb8779ef-{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"
    assert file_identity(path) == identity
    path.write_bytes(path.read_bytes()[:-1])
    assert file_identity(path) != identity


# --- the runner --------------------------------------------------------------------------------


def test_manifest_records_the_models_after_fit(tmp_path: Path) -> None:
    KnownModels.fitted = False
    result = run(RunConfig("test_provenance:KnownModels", TINY), tmp_path)
    assert manifest_of(result.run_dir)["method"]["models"] == KNOWN


def test_the_run_summary_names_the_weights(tmp_path: Path) -> None:
    from rich.console import Console

    from wsbench.report.summary import print_summary

    KnownModels.fitted = False
    console = Console(record=True, width=200)
    print_summary(run(RunConfig("test_provenance:KnownModels", TINY), tmp_path), console)
    assert f"weights: dae {KNOWN['dae']}, classifier {KNOWN['classifier']}" in console.export_text()
    console = Console(record=True, width=200)
    print_summary(run(RunConfig("fakes:NoisyMethod", TINY), tmp_path), console)
    assert "weights:" not in console.export_text()


def test_an_interrupted_run_already_records_the_models(tmp_path: Path) -> None:
    InterruptedAfterFit.fitted = False
    with pytest.raises(KeyboardInterrupt):
        run(RunConfig("test_provenance:InterruptedAfterFit", TINY), tmp_path, timeout_s=0)
    (run_dir,) = (tmp_path / "fakes-TinyDataset" / "test_provenance-InterruptedAfterFit").iterdir()
    manifest = manifest_of(run_dir)
    assert manifest["finished"] is None and manifest["method"]["models"] == KNOWN


def test_a_method_without_weights_records_no_models(tmp_path: Path) -> None:
    result = run(RunConfig("otsu", TINY), tmp_path)
    assert manifest_of(result.run_dir)["method"]["models"] == {}


def test_medsam_records_the_weights_file_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "tiny_medsam.pth"
    torch.save(tiny_sam(64).state_dict(), path)
    result = run(RunConfig("medsam", TINY, params={"checkpoint": str(path)}), tmp_path / "runs")
    manifest = manifest_of(result.run_dir)
    assert manifest["method"]["models"] == {"sam": expected_identity(path)}
    assert manifest["method"]["params"]["checkpoint"] == str(path)


# --- the plugins -------------------------------------------------------------------------------


def test_hideseek_records_its_dae_and_latent_classifier_through_the_runner(tmp_path: Path):
    dae = tiny_dae_file(tmp_path / "dae-mine.pt")
    params = {"checkpoint": str(dae), "steps_stochastic": 2, "steps_decode": 2}
    result = run(RunConfig("hideseek", TINY, params=params), tmp_path / "runs")
    (classifier,) = (cache_root() / "models").glob("hideseek-classifier-*.pt")
    method = manifest_of(result.run_dir)["method"]
    assert method["models"] == {
        "dae": expected_identity(dae),
        "classifier": expected_identity(classifier),
    }
    assert method["params"]["checkpoint"] == str(dae)


def test_hideseek_records_the_reloaded_classifier_and_nothing_before_fit(tmp_path: Path):
    dae = tiny_dae_file(tmp_path / "dae-mine.pt")
    method = HideAndSeek(checkpoint=str(dae))
    assert method.models() == {}
    method.fit(tiny_training(), tmp_path)
    again = HideAndSeek(checkpoint=str(dae))
    again.fit(tiny_training(), tmp_path)  # reloads the stored classifier
    assert again.models() == method.models()
    assert again.params()["checkpoint"] == str(dae)


def test_ad_records_its_healthy_dae(tmp_path: Path) -> None:
    dae = tiny_dae_file(tmp_path / "dae-healthy-mine.pt")
    method = AnomalyDetection(checkpoint=str(dae))
    assert method.models() == {}
    method.fit(tiny_training(), tmp_path)
    assert method.models() == {"dae": expected_identity(dae)}
    assert "dae_identity" not in method.params()


def test_cam_records_the_classifier_it_loaded(tmp_path: Path) -> None:
    config = ClassifierConfig(epochs=1, seed=0)
    torch.manual_seed(0)
    path = tmp_path / "classifier-mine.pt"
    save_classifier(path, build_resnet18(), model_key("tiny-fingerprint", config))
    method = GradCAMMethod(checkpoint=str(path), epochs=config.epochs, seed=config.seed)
    assert method.models() == {}
    method.fit(tiny_training(), tmp_path)
    assert method.models() == {"classifier": expected_identity(path)}


# --- the leaderboard ---------------------------------------------------------------------------


def method_run(method: str, models: dict[str, str] | None) -> MethodRun:
    """A run whose manifest has ``models`` (no ``models`` key at all when ``None``)."""
    manifest: dict[str, Any] = {
        "method": {"name": method, "params": {}},
        "dataset": {"fingerprint": "fp"},
        "packages": {"wsbench": "0.1.0"},
        "git_commit": "0123456789abcdef",
        "git_dirty": False,
        "split": "test",
    }
    if models is not None:
        manifest["method"]["models"] = models
    cases = pd.DataFrame({"vertebra": ["v1"], "category": ["healthy"]})
    return MethodRun(method, Path(method), manifest, cases)


def test_leaderboard_header_lists_each_methods_models() -> None:
    runs = {
        "hideseek": method_run("hideseek", KNOWN),
        "otsu": method_run("otsu", {}),
        "old": method_run("old", None),  # a manifest from before models were recorded
        "ad": method_run("ad", {"dae": "dae-healthy-97e621e8cb88-00aa11bb22cc"}),
    }
    lines = header_lines("phantom", runs)
    assert (
        "- models: hideseek dae `dae-a78ecb8779ef-0123456789ab`, classifier `clf-fedcba987654`; "
        "ad dae `dae-healthy-97e621e8cb88-00aa11bb22cc`"
    ) in lines


def test_leaderboard_header_has_no_models_line_when_no_run_recorded_any() -> None:
    runs = {"otsu": method_run("otsu", {}), "old": method_run("old", None)}
    assert not any(line.startswith("- models:") for line in header_lines("phantom", runs))


PROJECT = Path(__file__).resolve().parent.parent


def test_a_non_editable_install_names_the_commit_it_was_built_from(tmp_path: Path) -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True,
                          text=True)  # fmt: skip
    if head.returncode != 0:
        pytest.skip("the project is not a git checkout")
    source = tmp_path / "source"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{PROJECT}", str(source)],
                   check=True)  # fmt: skip
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("wsbench-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True)  # fmt: skip
    code = "from wsbench.harness import provenance as p; print(p.__file__, p.git_commit())"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert shown == [str(tmp_path / "site" / "wsbench" / "harness" / "provenance.py"),
                     head.stdout.strip()]  # fmt: skip
