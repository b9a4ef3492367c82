"""What a run records about where it ran: package versions, the git commit, torch threads."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from wsbench import __version__

PACKAGES = ("numpy", "scipy", "scikit-image", "scikit-learn", "torch", "monai", "panoptica")


def package_versions() -> dict[str, str]:
    """Versions of wsbench, Python and the scientific packages a result depends on."""
    found = {"wsbench": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_output(*args: str) -> str | None:
    """Output of ``git args`` in the wsbench source tree, or None when it is not a checkout."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


BUILD_INFO = "build_info.json"
"""File inside the installed ``wsbench`` package holding the ``commit`` and ``dirty`` state of
the source it was built from (written by ``wsbench/_build.py``)."""


def build_info() -> dict[str, Any]:
    """The source commit recorded when the installed package was built (``{}`` when none was:
    an editable install, or a copy without git)."""
    path = Path(__file__).resolve().parent.parent / BUILD_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def git_commit() -> str | None:
    """Commit of the wsbench source tree when it is a git checkout, else the one the installed
    package was built from (:func:`build_info`)."""
    return (git_output("rev-parse", "HEAD") or "").strip() or build_info().get("commit")


def git_dirty() -> bool | None:
    """Whether tracked files of the source tree differ from that commit (None: not known)."""
    status = git_output("status", "--porcelain", "--untracked-files=no")
    return build_info().get("dirty") if status is None else bool(status.strip())


def torch_threads(threads: int | None = None) -> int | None:
    """Set torch's CPU thread count when ``threads`` is given; return the count in use (``None``
    without torch). Results of DDIM-based methods can differ in a few pixels between counts."""
    try:
        import torch
    except ImportError:
        return None
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: give a positive number of CPU threads")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
