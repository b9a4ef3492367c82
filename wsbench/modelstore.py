"""Where trained models live: keyed by model kind, dataset fingerprint and config.

A model is looked up first among the weights shipped inside the package (``wsbench/weights``),
then in the user cache (``$WSBENCH_CACHE/models``, default ``~/.cache/wsbench/models``). Each
checkpoint has a model card beside it (``.md`` for people, ``.json`` for code).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHIPPED_DIR = Path(__file__).parent / "weights"


def cache_root() -> Path:
    """The wsbench cache folder (``$WSBENCH_CACHE`` or ``~/.cache/wsbench``)."""
    return Path(os.environ.get("WSBENCH_CACHE", Path.home() / ".cache" / "wsbench")).expanduser()


def digest(value: Any, length: int = 12) -> str:
    """Short stable hash of a JSON-serialisable value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


IDENTITY_HEX_DIGITS = 12
"""Hex digits of a weights file's SHA-256 kept in its identity (:func:`file_identity`)."""
HASH_CHUNK_BYTES = 1 << 20


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


def find_model(key: ModelKey) -> Path | None:
    """Path of an existing checkpoint for ``key`` (shipped first, then cache), else ``None``."""
    for folder in (SHIPPED_DIR, cache_root() / "models"):
        path = folder / f"{key.stem}.pt"
        if path.exists():
            return path
    return None


def new_model_path(key: ModelKey) -> Path:
    """Where to write a freshly trained checkpoint for ``key`` (folder created)."""
    folder = cache_root() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key.stem}.pt"


def check_key(found: Mapping[str, Any], expected: ModelKey, path: Path) -> None:
    """Refuse a checkpoint whose stored key differs from ``expected``, saying what differs."""
    want = expected.as_dict()
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


def write_card(checkpoint: Path, key: ModelKey, title: str, facts: Mapping[str, Any]) -> None:
    """Write the model card (``.md`` and ``.json``) beside ``checkpoint``."""
    record = {"title": title, **key.as_dict(), **dict(facts)}
    checkpoint.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in record.items() if name != "title"]
    checkpoint.with_suffix(".md").write_text("\n".join(lines) + "\n")
