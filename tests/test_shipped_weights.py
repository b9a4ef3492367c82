"""Every shipped checkpoint has a model card whose key names it (so lookups can find it)."""

from __future__ import annotations

import json

import pytest

from wsbench.modelstore import SHIPPED_DIR, ModelKey

SHIPPED = sorted(SHIPPED_DIR.glob("*.pt"))
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
    if card["kind"] == "classifier":  # looked up by key; DAE files by their card's fingerprint
        key = ModelKey(card["kind"], card["dataset_fingerprint"], card["config"])
        assert key.stem == checkpoint.stem
    assert checkpoint.stat().st_size <= 25 * 2**20


def test_something_is_shipped():
    kinds = {json.loads(p.with_suffix(".json").read_text())["kind"] for p in SHIPPED}
    assert {"classifier", "dae", "hideseek-classifier"} <= kinds
