"""Every shipped checkpoint has a model card whose key names it (so lookups can find it), and the
recipes ``wsbench train`` uses for the default phantom are the shipped ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import wsbench.plugins
from wsbench.models.store import ModelKey

SHIPPED = sorted(Path(wsbench.plugins.__file__).parent.glob("*/weights/*.pt"))
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
