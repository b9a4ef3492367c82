"""Where trained models live, and the one way they are found.

A model is a weights file (``<kind>-<digest>.pt``, or any other suffix the card names) with a model
card beside it (``<kind>-<digest>.json`` for code, ``.md`` for people). The card holds the model's
key: its ``kind`` (``classifier``, ``dae``, …), the ``dataset_fingerprint`` of the data it was
trained on and the ``config`` that made it. A :class:`ModelStore` looks in a plugin's shipped folder
first, then in the user cache (``$WSBENCH_CACHE/models``, default ``~/.cache/wsbench/models``), and
finds models by their card only (:meth:`ModelStore.find`). Runs name the exact file they used by its
identity ``<stem>-<sha256[:12]>`` (:func:`file_identity`), which :meth:`ModelStore.resolve` turns
back into the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsbench.files import digest

IDENTITY_HEX_DIGITS = 12
"""Hex digits of a weights file's SHA-256 kept in its identity (:func:`file_identity`)."""
HASH_CHUNK_BYTES = 1 << 20


def cache_root() -> Path:
    """The wsbench cache folder (``$WSBENCH_CACHE`` or ``~/.cache/wsbench``)."""
    return Path(os.environ.get("WSBENCH_CACHE", Path.home() / ".cache" / "wsbench")).expanduser()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(HASH_CHUNK_BYTES):
            sha.update(block)
    return sha.hexdigest()


def file_identity(path: Path) -> str:
    """``<stem>-<first 12 hex digits of the file's SHA-256>``: names one exact weights file, e.g.
    ``dae-a78ecb8779ef-1a2b3c4d5e6f`` for ``dae-a78ecb8779ef.pt``."""
    return f"{Path(path).stem}-{sha256_file(path)[:IDENTITY_HEX_DIGITS]}"


@dataclass(frozen=True)
class ModelKey:
    """Identity of a trained model: what it is, what data it saw, how it was configured."""

    kind: str
    dataset_fingerprint: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """File stem, e.g. ``classifier-3fa2c1d0e9b7``."""
        return f"{self.kind}-{digest([self.dataset_fingerprint, dict(self.config)])}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form stored in the card and the checkpoint."""
        return {
            "kind": self.kind,
            "dataset_fingerprint": self.dataset_fingerprint,
            "config": dict(self.config),
        }

    def check(self, found: Mapping[str, Any], path: Path) -> None:
        """Refuse the checkpoint at ``path`` whose stored key ``found`` differs from this one,
        saying what differs."""
        want = self.as_dict()
        if dict(found) == want:
            return
        diffs = [
            f"{name}: checkpoint has {found.get(name)!r}, expected {want[name]!r}"
            for name in want
            if found.get(name) != want[name]
        ]
        raise ValueError(
            f"checkpoint {path} was trained for another setting ({'; '.join(diffs)}); "
            "retrain with `wsbench train` or pass a checkpoint made for this dataset and config"
        )


class WeightsFileError(ValueError):
    """A file given as weights that is not a weights file wsbench can read."""


def load_weights(path: Path, what: str = "weights file") -> Any:
    """The tensors and plain values stored in ``path`` by ``torch.save``, on the CPU.

    Only tensors and plain Python values are read (``weights_only``): a file holding pickled
    objects is refused, as are truncated, corrupt and foreign files, each with one line naming
    ``path`` as a ``what`` and saying what to give instead.
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's reader fails on foreign bytes in many ways
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
            why = "it holds pickled Python objects, which wsbench never loads"
        else:
            why = "it is truncated, corrupt or not a PyTorch file"
    raise WeightsFileError(
        f"{path} is not a {what} wsbench can read: {why}. Give a file written by "
        "`wsbench train` or shipped with the method"
    )


def read_card(weights: Path) -> dict[str, Any]:
    """The JSON model card beside ``weights`` (``{}`` when there is none)."""
    card = Path(weights).with_suffix(".json")
    return json.loads(card.read_text()) if card.exists() else {}


def weights_of(card: Path) -> Path:
    """The weights file a card describes: the ``file`` it names, else ``<stem>.pt``."""
    record = json.loads(card.read_text())
    return card.with_name(record.get("file") or f"{card.stem}.pt")


def write_card(checkpoint: Path, key: ModelKey, title: str, facts: Mapping[str, Any]) -> None:
    """Write the model card (``.md`` and ``.json``) beside ``checkpoint``.

    ``facts["extends"]`` names the stem of a shorter run this one continues; :meth:`ModelStore.find`
    then prefers this one."""
    record = {"title": title, **key.as_dict(), "file": checkpoint.name, **dict(facts)}
    checkpoint.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in record.items() if name != "title"]
    checkpoint.with_suffix(".md").write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class ModelStore:
    """The folders one plugin's models are found in: its ``shipped`` folder (weights inside the
    package), then the user cache, where new models are written."""

    shipped: Path | None = None

    @property
    def cache(self) -> Path:
        """The user cache's model folder."""
        return cache_root() / "models"

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where models are looked for, in order."""
        return (self.shipped, self.cache) if self.shipped is not None else (self.cache,)

    def find(
        self, kind: str, fingerprint: str, config: Mapping[str, Any] | None = None
    ) -> Path | None:
        """The model of ``kind`` trained on data ``fingerprint`` (and made with exactly
        ``config`` when given): the first folder holding one wins.

        Within a folder a run that a longer run extends (``extends`` on the longer one's card)
        gives way to it. Several unrelated matches in one folder raise ``ValueError`` naming them,
        so that which weights a run uses never depends on file dates.
        """
        wanted = None if config is None else json.loads(json.dumps(dict(config), default=str))
        for folder in self.folders:
            cards = {}
            for card_path in sorted(folder.glob(f"{kind}-*.json")):
                card, path = json.loads(card_path.read_text()), weights_of(card_path)
                same = card.get("kind") == kind and card.get("dataset_fingerprint") == fingerprint
                if same and path.is_file() and (wanted is None or card.get("config") == wanted):
                    cards[path] = card
            extended = {card.get("extends") for card in cards.values()}
            latest = [path for path in cards if path.stem not in extended]
            if len(latest) > 1:
                listed = "; ".join(
                    f"{p.name} ({cards[p].get('steps', '?')} steps, "
                    f"seed {cards[p].get('seed', '?')})"
                    for p in latest
                )
                raise ValueError(
                    f"{len(latest)} unrelated {kind} models in {folder} were trained on this "
                    f"dataset (fingerprint {fingerprint}): {listed}; choose one with "
                    "`--checkpoint PATH`, or move the others out of the folder"
                )
            if latest:
                return latest[0]
        return None

    def trained_for(self, kind: str) -> list[str]:
        """The datasets a model of ``kind`` is stored for, as ``name (shipped|cache)`` from the
        cards, shipped first."""
        found = []
        for folder in self.folders:
            where = "shipped" if folder == self.shipped else "cache"
            for card_path in sorted(folder.glob(f"{kind}-*.json")):
                card = json.loads(card_path.read_text())
                if card.get("kind") == kind and weights_of(card_path).is_file():
                    name = card.get("dataset") or str(card.get("dataset_fingerprint", "?"))[:12]
                    found.append(f"{name} ({where})")
        return list(dict.fromkeys(found))

    def new_path(self, key: ModelKey, suffix: str = ".pt") -> Path:
        """Where to write a freshly trained model for ``key`` (in the cache; folder created)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        return self.cache / f"{key.stem}{suffix}"

    def resolve(self, reference: str | Path) -> Path:
        """The weights file ``reference`` names: a path, or an identity ``<stem>-<sha256[:12]>``
        as run manifests record it (looked up in :attr:`folders`, its hash checked)."""
        path = Path(reference).expanduser()
        if path.is_file():
            return path
        stem, _, sha = str(reference).rpartition("-")
        if stem and len(sha) == IDENTITY_HEX_DIGITS:
            for folder in self.folders:
                card = folder / f"{stem}.json"
                candidate = weights_of(card) if card.is_file() else folder / f"{stem}.pt"
                if candidate.is_file() and sha256_file(candidate).startswith(sha):
                    return candidate
        where = ", ".join(str(f) for f in self.folders)
        raise FileNotFoundError(
            f"checkpoint {reference!s} is neither a file nor the identity of a model in {where}"
        )
