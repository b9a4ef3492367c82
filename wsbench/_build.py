"""Build step of the wsbench package: record the git commit it is built from, so that runs of a
non-editable install (``pip install .``) still name their commit in ``manifest.json``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from setuptools.command.build_py import build_py

BUILD_INFO = "build_info.json"
"""The file :func:`wsbench.harness.provenance.build_info` reads. Named here again because this
module is loaded by setuptools from its path, before wsbench can be imported."""


def source_state(root: Path) -> dict[str, str | bool | None]:
    """``commit`` and ``dirty`` of the git checkout at ``root`` (both ``None`` outside one)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


class BuildPy(build_py):
    """setuptools' ``build_py`` that also writes :data:`BUILD_INFO` into the built package."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "wsbench" / BUILD_INFO
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(source_state(Path(__file__).resolve().parent.parent)) + "\n")
