"""Every shipped checkpoint has a model card whose key names it (so lookups can find it), is stored
compactly (safetensors, the dtype and SHA-256 its card states), and the recipes ``wsbench train``
uses for the default phantom are the shipped ones; the repository stays small enough to clone.
Also: the safetensors weights format round-trips, and ``wsbench compact`` rewrites a model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import wsbench.plugins
from wsbench.cli.main import app
from wsbench.models.store import (
    ModelKey,
    ModelStore,
    WeightsFileError,
    compact_weights,
    file_identity,
    load_weights,
    save_weights,
    sha256_file,
    weights_of,
    write_card,
)

PROJECT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    weights_of(card) for card in Path(wsbench.plugins.__file__).parent.glob("*/weights/*.json")
)
TREE_BUDGET_BYTES = 40_000_000
"""Files git tracks or would add must stay under 40 MB: about 38.5 MB with the compacted weights
(31 MB of them: both DAEs in float16, the CAM classifier in int8). Storing the classifier in
float16 again (+11.1 MB) crosses it."""
TRAINED_NETWORKS = ("classifier", "dae", "dae-healthy")
"""Kinds whose card must say how they were trained (the latent classifier is a fitted LR)."""


@pytest.mark.parametrize("checkpoint", SHIPPED, ids=[p.name for p in SHIPPED])
def test_card_key_names_the_file(checkpoint):
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    assert checkpoint.with_suffix(".md").is_file()
    assert card["dataset_fingerprint"]
    if card["kind"] in TRAINED_NETWORKS:
        for fact in ("seed", "command", "wall_time_s"):
            assert fact in card, fact
        key = ModelKey(card["kind"], card["dataset_fingerprint"], card["config"])
        assert key.stem == checkpoint.stem
    assert checkpoint.stat().st_size <= 25 * 2**20


def test_each_plugin_ships_its_own_models():
    kinds = {
        (p.parent.parent.name, json.loads(p.with_suffix(".json").read_text())["kind"])
        for p in SHIPPED
    }
    assert kinds == {("cam", "classifier"), ("hideseek", "dae"),
                     ("hideseek", "hideseek-classifier"), ("ad", "dae-healthy")}  # fmt: skip


@pytest.mark.parametrize("plugin", ["hideseek", "ad"])
def test_the_train_recipe_of_a_dae_method_is_the_shipped_one(plugin):
    """``wsbench train --method hideseek`` (or ``ad``) on the phantom finds the shipped DAE."""
    from importlib import import_module

    from wsbench.plugins.common.dae.training import model_key

    module = import_module(f"wsbench.plugins.{plugin}")
    shipped = next(
        p for p in SHIPPED if p.parent.parent.name == plugin and "classifier" not in p.stem
    )
    fingerprint = json.loads(shipped.with_suffix(".json").read_text())["dataset_fingerprint"]
    assert model_key(fingerprint, module.DAE_RECIPE).stem == shipped.stem


def test_training_a_shipped_recipe_reuses_it_and_leaves_its_card_alone():
    from wsbench.contract import TrainingSet
    from wsbench.plugins.common.dae.training import ensure_dae
    from wsbench.plugins.hideseek import DAE_RECIPE, STORE

    shipped = next(p for p in SHIPPED if p.stem.startswith("dae-a78"))
    card = shipped.with_suffix(".json").read_bytes()
    fingerprint = json.loads(card)["dataset_fingerprint"]
    training = TrainingSet("phantom", fingerprint, [])  # nothing to train or evaluate on
    assert ensure_dae(training, DAE_RECIPE, STORE, reevaluate=True) == (shipped, False)
    assert shipped.with_suffix(".json").read_bytes() == card


@pytest.mark.parametrize("weights", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_weights_are_the_compact_file_their_card_describes(weights):
    card = json.loads(weights.with_suffix(".json").read_text())
    assert weights.suffix == ".safetensors"
    assert card["sha256"] == sha256_file(weights)
    stored = {str(t.dtype).removeprefix("torch.") for t in load_file(weights).values()}
    assert set(card["dtype"].split(", ")) == stored - {"int64"}
    assert card["compacted_from"].startswith(f"{weights.stem}-")
    assert f"| file | {weights.name} |" in weights.with_suffix(".md").read_text()


def test_the_tracked_tree_stays_small_enough_to_clone():
    """Sum of the sizes of the files git tracks or would add (``git ls-files --cached --others
    --exclude-standard``) that exist in the working tree."""
    git = shutil.which("git")
    if git is None or not (PROJECT / ".git").exists():
        pytest.skip(f"{PROJECT} is not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    files = [PROJECT / name for name in listed if name and (PROJECT / name).is_file()]
    total = sum(path.stat().st_size for path in files)
    largest = max(files, key=lambda path: path.stat().st_size)
    assert total < TREE_BUDGET_BYTES, f"{total / 1e6:.1f} MB, largest {largest}"


def record_of_every_kind() -> dict:
    """A record holding what checkpoints hold: a state dict (float32, float16 and int64 tensors),
    a top-level float64 tensor, a stored key and plain values."""
    return {
        "key": {"kind": "dae", "dataset_fingerprint": "f" * 64, "config": {"steps": 3}},
        "state_dict": {
            "conv.weight": torch.tensor([[0.1, -2.5], [1 / 3, 1000.0]]),
            "norm.running_mean": torch.tensor([0.5, 0.25], dtype=torch.float16),
            "norm.num_batches_tracked": torch.tensor(7),
        },
        "normal": torch.tensor([1 / 3, -2.0], dtype=torch.float64),
        "hu_window": [-200.0, 1300.0],
        "bias": -0.25,
        "extra": {},
    }


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_safetensors_round_trip_stores_half_precision_and_computes_in_float32(tmp_path, dtype):
    path = tmp_path / "model.safetensors"
    save_weights(record_of_every_kind(), path, dtype)
    stored = load_file(path)
    assert stored["state_dict/conv.weight"].dtype == getattr(torch, dtype)
    assert stored["state_dict/norm.running_mean"].dtype == torch.float16
    assert stored["normal"].dtype == torch.float64
    loaded = load_weights(path)
    original = record_of_every_kind()
    rounded = original["state_dict"]["conv.weight"].to(getattr(torch, dtype)).float()
    assert loaded["state_dict"]["conv.weight"].dtype == torch.float32
    assert torch.equal(loaded["state_dict"]["conv.weight"], rounded)
    assert torch.equal(loaded["state_dict"]["norm.running_mean"], torch.tensor([0.5, 0.25]))
    assert loaded["state_dict"]["norm.num_batches_tracked"].item() == 7
    assert torch.equal(loaded["normal"], original["normal"])
    assert {k: loaded[k] for k in ("key", "hu_window", "bias", "extra")} == {
        k: original[k] for k in ("key", "hu_window", "bias", "extra")
    }


def test_int8_stores_kernels_per_output_channel_and_the_rest_in_float16(tmp_path):
    path = tmp_path / "model.safetensors"
    kernel = torch.tensor([[[[1.0, -0.5]]], [[[0.0, 0.0]]], [[[0.3, -0.127]]]])
    record = {"state_dict": {"conv.weight": kernel, "conv.bias": torch.tensor([0.1, 0.2, 0.3])}}
    save_weights(record, path, "int8")
    stored = load_file(path)
    values = stored["state_dict/conv.weight"]
    assert values.dtype == torch.int8 and values.flatten().tolist() == [127, -64, 0, 0, 127, -54]
    assert torch.allclose(
        stored["int8_scale/state_dict/conv.weight"], torch.tensor([1 / 127, 1.0, 0.3 / 127])
    )
    assert stored["state_dict/conv.bias"].dtype == torch.float16
    loaded = load_weights(path)["state_dict"]
    assert set(loaded) == {"conv.weight", "conv.bias"}
    expected = torch.tensor([[1.0, -64 / 127], [0.0, 0.0], [0.3, -54 * 0.3 / 127]]).reshape(
        3, 1, 1, 2
    )
    assert (
        torch.allclose(loaded["conv.weight"], expected)
        and loaded["conv.weight"].dtype == torch.float32
    )
    assert (loaded["conv.weight"] - kernel).abs().max() <= 0.5 / 127


def test_the_key_stored_in_safetensors_is_checked(tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(record_of_every_kind(), path, "float16")
    stored = load_weights(path)["key"]
    ModelKey("dae", "f" * 64, {"steps": 3}).check(stored, path)
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors was trained for another setting "
        r"\(config: checkpoint has \{'steps': 3\}, expected \{'steps': 4\}\)",
    ):
        ModelKey("dae", "f" * 64, {"steps": 4}).check(stored, path)


def test_a_corrupt_or_foreign_safetensors_file_is_refused_naming_it(tmp_path):
    whole = tmp_path / "whole.safetensors"
    save_weights(record_of_every_kind(), whole, "float16")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(whole.read_bytes()[:-5])
    with pytest.raises(
        WeightsFileError,
        match=r"truncated\.safetensors is not a DAE checkpoint "
        r"wsbench can read: it is truncated, corrupt or not safetensors",
    ):
        load_weights(truncated, "DAE checkpoint")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(WeightsFileError, match=r"foreign\.safetensors .*no 'wsbench' metadata"):
        load_weights(foreign)


def test_float16_refuses_a_weight_beyond_its_range_naming_it(tmp_path):
    record = {"state_dict": {"big.weight": torch.tensor([1e5])}}
    with pytest.raises(
        ValueError,
        match=r"state_dict/big\.weight in .*m\.safetensors reaches "
        r"1e\+05, beyond float16's range: store it as bfloat16",
    ):
        save_weights(record, tmp_path / "m.safetensors", "float16")
    save_weights(record, tmp_path / "m.safetensors", "bfloat16")
    assert load_weights(tmp_path / "m.safetensors")["state_dict"]["big.weight"].item() == 99840.0


def test_compact_rewrites_a_trained_model_and_its_card(tmp_path):
    key = ModelKey("dae", "f" * 64, {"steps": 3})
    trained = tmp_path / f"{key.stem}.pt"
    torch.save(record_of_every_kind(), trained)
    write_card(trained, key, "A model", {"seed": 0, "weights": "EMA"})
    old_identity = file_identity(trained)
    result = CliRunner().invoke(app, ["compact", str(trained), "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    compact = trained.with_suffix(".safetensors")
    card = json.loads(compact.with_suffix(".json").read_text())
    assert card == {"title": "A model", **key.as_dict(), "file": compact.name, "seed": 0,
                    "weights": "EMA", "dtype": "bfloat16, float16, float64",
                    "sha256": sha256_file(compact), "compacted_from": old_identity}  # fmt: skip
    assert "| dtype | bfloat16, float16, float64 |" in compact.with_suffix(".md").read_text()
    store = ModelStore(tmp_path)
    assert store.find("dae", "f" * 64) == compact
    assert store.resolve(file_identity(compact)) == compact
    assert store.resolve(old_identity) == trained  # runs made before compaction still resolve


def test_compact_needs_the_models_card(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(record_of_every_kind(), bare)
    with pytest.raises(FileNotFoundError, match=r"no model card .*bare\.json beside .*bare\.pt"):
        compact_weights(bare)
