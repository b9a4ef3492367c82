"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture
def real_data() -> Path:
    """The shared real CT samples; the test is skipped when the folder is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real CT samples not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own wsbench cache folder."""
    monkeypatch.setenv("WSBENCH_CACHE", str(tmp_path_factory.mktemp("wsbench-cache")))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: the machine's cores are shared, and results must not depend on it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
