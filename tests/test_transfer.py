"""Transfer runs: models trained on other data, found by name, recorded and marked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from wsbench.contract import Phenotype, TrainedOn, TrainingSet
from wsbench.harness.runner import RunConfig, run
from wsbench.models.store import ModelStore, trained_on
from wsbench.report.publish import publish


def stored_model(folder: Path, stem: str, kind: str, dataset: str, fingerprint: str) -> Path:
    """A weights file with its card in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.pt"
    weights.write_bytes(b"weights")
    card = {"kind": kind, "dataset": dataset, "dataset_fingerprint": fingerprint, "config": {}}
    (folder / f"{stem}.json").write_text(json.dumps(card))
    return weights


def test_transfer_model_by_name_by_fingerprint_and_shipped(tmp_path: Path) -> None:
    shipped = stored_model(tmp_path / "shipped", "dae-aaa", "dae", "phantom", "617a7a18d9fa4c3e")
    store = ModelStore(tmp_path / "shipped")
    cached = stored_model(store.cache, "dae-bbb", "dae", "tcia", "0123456789abcdef")
    assert store.transfer_model("dae", "phantom") == shipped
    assert store.transfer_model("dae", "tcia") == cached
    assert store.transfer_model("dae", "01234567") == cached
    assert store.transfer_model("dae") == shipped
    with pytest.raises(FileNotFoundError, match=r"no dae model trained on 'verse'.*phantom"):
        store.transfer_model("dae", "verse")
    with pytest.raises(FileNotFoundError, match="no classifier model shipped"):
        store.transfer_model("classifier")


def test_transfer_model_refuses_to_guess_between_two(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "shipped")
    stored_model(tmp_path / "shipped", "dae-aaa", "dae", "phantom", "f1")
    stored_model(tmp_path / "shipped", "dae-bbb", "dae", "phantom", "f2")
    with pytest.raises(ValueError, match=r"2 dae models .* dae-aaa.pt, dae-bbb.pt"):
        store.transfer_model("dae", "phantom")


def test_trained_on_reads_the_card(tmp_path: Path) -> None:
    weights = stored_model(tmp_path, "dae-aaa", "dae", "phantom", "617a7a18d9fa4c3e")
    assert trained_on(weights) == TrainedOn("phantom", "617a7a18d9fa4c3e")
    bare = tmp_path / "bare.pt"
    bare.write_bytes(b"x")
    assert trained_on(bare) == TrainedOn("unknown", "unknown")


def tiny(method: str) -> RunConfig:
    return RunConfig(method=method, dataset="fakes:TinyDataset")


def test_a_transfer_run_is_recorded_announced_and_marked(tmp_path: Path) -> None:
    said: list[str] = []
    transferred = run(tiny("fakes:Transferred"), tmp_path / "runs", notify=said.append)
    here = run(tiny("fakes:TrainedHere"), tmp_path / "runs", notify=said.append)
    manifest = json.loads((transferred.run_dir / "manifest.json").read_text())
    origin = {"dataset": "elsewhere", "fingerprint": "elsewhere-fingerprint"}
    assert manifest["method"]["trained_on"] == {"classifier": origin}
    assert manifest["transfer"] == {"classifier": origin}
    assert said == ["transfer run: models not trained on 'tiny' (classifier trained on elsewhere)"]
    assert json.loads((here.run_dir / "manifest.json").read_text())["transfer"] == {}

    publish(tmp_path / "runs", tmp_path / "board")
    page = (tmp_path / "board" / "fakes-TinyDataset.md").read_text()
    assert "| Metric | fakes-TrainedHere | fakes-Transferred ‡ |" in page
    assert "- ‡ = transfer run, with models trained on other data than this dataset's " in page
    assert "fakes-Transferred classifier from elsewhere" in page
    table = pd.read_csv(tmp_path / "board" / "fakes-TinyDataset.csv", keep_default_na=False)
    sources = table.groupby("method")["transfer_from"].agg(set)
    assert sources.to_dict() == {"fakes-TrainedHere": {""}, "fakes-Transferred": {"elsewhere"}}


def unlabelled(training: TrainingSet) -> TrainingSet:
    """The same vertebrae without their weak labels (a dataset nothing can be trained on)."""
    from dataclasses import replace

    return TrainingSet(
        training.name, training.fingerprint, [replace(v, label=None) for v in training]
    )


@pytest.mark.slow
def test_cams_fall_back_to_the_shipped_classifier_on_unlabelled_data() -> None:
    from fakes import TinyDataset

    from wsbench.plugins.cam import GradCAMMethod

    training = unlabelled(TinyDataset().prepare().training_set())
    method = GradCAMMethod()
    method.fit(training, Path("."))
    assert method.trained_on()["classifier"].dataset == "phantom"
    assert method.model_path.parent.name == "weights"


@pytest.mark.slow
def test_hideseek_transfer_takes_the_classifier_fitted_with_its_dae() -> None:
    from fakes import TinyDataset

    from wsbench.plugins.hideseek import HideAndSeek

    training = unlabelled(TinyDataset().prepare().training_set())
    method = HideAndSeek()
    method.fit(training, Path("."))
    origins = method.trained_on()
    roles = ["dae", "classifier", "classifier-lytic", "classifier-blastic", "classifier-mixed"]
    assert {role: o.dataset for role, o in origins.items()} == dict.fromkeys(roles, "phantom")
    assert method.models()["classifier"].startswith("hideseek-classifier-7b853ee87f29-")
    assert set(method.directions) == set(Phenotype)
    pooled = HideAndSeek(direction="pooled")
    pooled.fit(training, Path("."))
    assert set(pooled.models()) == {"dae", "classifier"} and not pooled.directions


@pytest.mark.slow
def test_hideseek_refit_needs_enough_labelled_vertebrae() -> None:
    from fakes import TinyDataset

    from wsbench.plugins.hideseek import HideAndSeek

    training = TinyDataset().prepare().training_set()
    with pytest.raises(ValueError, match=r"at least 5 labelled .* 2 healthy and 2 malignant"):
        HideAndSeek(model="phantom", refit_classifier=True).fit(training, Path("."))


def test_dae_methods_name_the_transfer_option_when_no_dae_is_found() -> None:
    from fakes import TinyDataset

    from wsbench.plugins.ad import AnomalyDetection

    training = TinyDataset().prepare().training_set()
    with pytest.raises(FileNotFoundError, match=r"-p model=NAME`; stored for: phantom \(shipped\)"):
        AnomalyDetection().fit(training, Path("."))
