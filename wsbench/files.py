"""Writing files safely and hashing JSON-able values: the one way wsbench does both."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def digest(value: Any, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``value`` as sorted-key JSON (values
    JSON cannot hold are written as ``str``): a stable name for a configuration."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write; it replaces ``path`` when the block ends
    without an error, so a crash never leaves a half-written ``path``. A failed write (disk
    full, …) is raised as ``OSError`` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        os.close(handle)
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    """NumPy scalars as Python numbers; anything else JSON cannot hold as its ``str``."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "shape", None) == () else str(value)


def write_json(path: Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` as indented JSON, atomically (:func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        text = json.dumps(record, indent=2, default=_json_default, allow_nan=True)
        temporary.write_text(text + "\n")


def write_csv(path: Path, table: pd.DataFrame) -> None:
    """Write ``table`` as CSV without its index, atomically (:func:`atomic_path`)."""
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)
