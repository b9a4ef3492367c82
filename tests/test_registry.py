"""Registry: listing without importing, isolation of broken plugins, external plugins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from wsbench.contract import DatasetAdapter, Method
from wsbench.harness import registry
from wsbench.harness.registry import PluginError, PluginInfo, declared, load_dataset, load_method

BUILTIN_METHODS = {
    "otsu",
    "gradcam",
    "gradcampp",
    "layercam",
    "eigencam",
    "medsam",
    "ad",
    "hideseek",
}
BUILTIN_DATASETS = {"phantom", "inhouse", "tcia", "realinsert"}
PROJECT = Path(__file__).resolve().parents[1]


def test_builtins_are_declared() -> None:
    assert set(declared(registry.METHODS_GROUP)) >= BUILTIN_METHODS
    assert set(declared(registry.DATASETS_GROUP)) >= BUILTIN_DATASETS


def test_listing_imports_no_plugin_code() -> None:
    code = (
        "import sys; from wsbench.harness.registry import declared, METHODS_GROUP; "
        "declared(METHODS_GROUP); "
        "print(sorted(m for m in sys.modules if m.startswith('wsbench.plugins.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(PluginError, match="Did you mean 'otsu'"):
        load_method("otsuu")
    with pytest.raises(PluginError, match="Did you mean 'phantom'"):
        load_dataset("phantm")


def test_module_class_target_for_uninstalled_plugin() -> None:
    assert issubclass(load_method("fakes:NoisyMethod"), Method)
    assert issubclass(load_dataset("fakes:TinyDataset"), DatasetAdapter)


def test_broken_plugin_is_reported_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_plugin.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"broken_plugin:Thing failed to import.*not_a_module"):
        load_method("broken_plugin:Thing")
    assert issubclass(load_method("otsu"), Method)


def test_wrong_base_class_is_refused() -> None:
    with pytest.raises(PluginError, match="not a subclass of Method"):
        load_method("fakes:TinyDataset")


class FakeEntryPoint:
    def __init__(self, name: str, value: str, dist: str) -> None:
        self.name, self.value = name, value
        self.dist = type("Dist", (), {"name": dist})()


def test_duplicate_names_name_both_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        FakeEntryPoint("otsu", "a.mod:Otsu", "pkg-a"),
        FakeEntryPoint("otsu", "b.mod:Otsu", "pkg-b"),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    with pytest.raises(PluginError, match=r"pkg-a.*pkg-b"):
        declared(registry.METHODS_GROUP)


def test_same_declaration_twice_is_not_a_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [FakeEntryPoint("otsu", "a:O", "pkg"), FakeEntryPoint("otsu", "a:O", "pkg")]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps)
    assert declared(registry.METHODS_GROUP) == {"otsu": PluginInfo("otsu", "a:O", "pkg")}


PLUGIN_SOURCE = '''
"""A complete external method plugin: everything below the threshold is a lesion."""

import numpy as np

from wsbench.contract import Method


class BelowThreshold(Method):
    name = "below"
    distinguishes_phenotype = False

    def __init__(self, threshold: float = 100.0) -> None:
        self.threshold = threshold

    def params(self) -> dict:
        return {"threshold": self.threshold}

    def segment(self, image, body_mask, **context):
        return ((image < self.threshold) & body_mask).astype(np.uint8)
'''


def install_plugin(tmp_path: Path) -> Path:
    """Install a tiny plugin distribution (non-editable) into a target folder; return it."""
    src = tmp_path / "src"
    (src / "wsbench_below").mkdir(parents=True)
    (src / "wsbench_below" / "__init__.py").write_text(PLUGIN_SOURCE)
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "wsbench-below"
        version = "0.1"
        [project.entry-points."wsbench.methods"]
        below = "wsbench_below:BelowThreshold"
    """)
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def test_external_plugin_installed_from_a_package(tmp_path: Path) -> None:
    target = install_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target), "WSBENCH_CACHE": str(tmp_path / "cache")}
    listing = subprocess.run(
        [sys.executable, "-m", "wsbench", "methods"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "below" in listing.stdout and "wsbench-below" in listing.stdout
    code = (
        "from wsbench.harness.registry import load_method; c = load_method('below'); "
        "print(c.__module__, c(threshold=5).params())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "wsbench_below {'threshold': 5}"


def test_wheel_contains_plugins_and_datasets(tmp_path: Path) -> None:
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".git", "build", "*.egg-info", "runs", ".*cache", "__pycache__")
    shutil.copytree(PROJECT, source, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = tmp_path.glob("wsbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    mapped = {"wsbench": "wsbench", "plugins": "wsbench/plugins", "datasets": "wsbench/datasets"}
    for top, inside in mapped.items():
        for module in (PROJECT / top).rglob("*.py"):
            assert f"{inside}/{module.relative_to(PROJECT / top).as_posix()}" in names, module
    for weights in (PROJECT / "plugins").glob("*/weights/*.safetensors"):
        assert f"wsbench/plugins/{weights.relative_to(PROJECT / 'plugins').as_posix()}" in names
    assert not any(n.startswith(("plugins/", "datasets/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    targets = [
        line.split("=", 1)[1].strip()
        for line in text.splitlines()
        if "=" in line and ":" in line and not line.startswith("wsbench =")
    ]
    assert len(targets) >= len(BUILTIN_METHODS | BUILTIN_DATASETS)
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    check = textwrap.dedent(f"""
        import importlib, sys
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        for name in [m for m in sys.modules if m == "wsbench" or m.startswith("wsbench.")]:
            del sys.modules[name]
        sys.path.insert(0, {str(site)!r})
        import wsbench
        assert wsbench.__file__.startswith({str(site)!r}), wsbench.__file__
        for target in {targets!r}:
            module, _, attr = target.partition(":")
            getattr(importlib.import_module(module), attr)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
