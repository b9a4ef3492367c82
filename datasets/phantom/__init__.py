"""The built-in synthetic phantom (``--dataset phantom``): generated, written in the in-house
layout into the cache, and read back by the in-house adapter, so it goes through exactly the
preprocessing real data goes through. See docs/phantom.md."""

from __future__ import annotations

import dataclasses
import inspect
import io
from contextlib import redirect_stderr
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from wsbench.contract import DatasetAdapter, PreparedDataset
from wsbench.data.preprocess import PreprocessParams
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.phantom.generate import build_cached, default_workers, options_digest
from wsbench.datasets.phantom.plan import PhantomOptions
from wsbench.models.store import cache_root
from wsbench.progress import with_progress

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(PhantomOptions))
"""Generator options accepted by :class:`PhantomDataset` (besides ``workers``)."""


def phantom_options(options: dict[str, Any]) -> PhantomOptions:
    """:class:`PhantomOptions` from the adapter's typed options, ``workers`` left out (unknown
    names, which only library code can pass, raise ``ValueError``; ``-o`` checks them first)."""
    unknown = sorted(set(options) - set(OPTION_NAMES) - {"workers"})
    if unknown:
        raise ValueError(
            f"unknown phantom option(s) {', '.join(unknown)}; known: {', '.join(OPTION_NAMES)}, "
            "workers"
        )
    return PhantomOptions(**{k: v for k, v in options.items() if k in OPTION_NAMES})


class _PhantomInHouse(InHouseDataset):
    """The in-house adapter under the phantom's name (vertebra ids ``phantom_p0007_L3``)."""

    name: ClassVar[str] = "phantom"


def prepare_subject_folder(
    cache_dir: Path | None, params: PreprocessParams | None, folder: Path
) -> None:
    """Preprocess one freshly written subject folder (with ``params``, default when ``None``)
    into the prepared cache, silently (run in the rendering processes, so that the whole
    phantom's preparation finds every subject's result cached: the cache key is the files'
    content, not their place)."""
    with redirect_stderr(io.StringIO()):
        _PhantomInHouse(root=folder, cache_dir=cache_dir, params=params).prepare()


def build_with_progress(
    cache: Path,
    options: PhantomOptions,
    workers: int,
    prepared_cache: Path | None,
    params: PreprocessParams | None = None,
) -> Path:
    """:func:`~wsbench.datasets.phantom.generate.build_cached` with a progress bar, each new
    subject preprocessed (into ``prepared_cache``, with ``params``) by the process that
    rendered it."""
    after = partial(prepare_subject_folder, prepared_cache, params)
    return with_progress(
        "generating phantom",
        options.subjects,
        lambda cb: build_cached(cache, options, workers, cb, after),
    )


class PhantomDataset(DatasetAdapter):
    """Synthetic thoracolumbar CT with lytic / blastic / mixed lesions and benign mimics.

    Options (all optional): those of :class:`~wsbench.datasets.phantom.plan.PhantomOptions` —
    ``subjects`` (340), ``seed`` (0), ``test_fraction`` (0.09), ``min_levels`` / ``max_levels``
    (5 / 8), ``metastatic_fraction`` (0.35) — and ``workers`` (rendering processes); for
    library code only ``params`` (:class:`~wsbench.data.preprocess.PreprocessParams`). The
    generated files live in ``$WSBENCH_CACHE/phantom/<digest>/`` (digest of the generator version
    and the options) and are reused.
    """

    name: ClassVar[str] = "phantom"
    needs_root: ClassVar[bool] = False
    lesion_metrics: ClassVar[bool] = True
    library_options: ClassVar[tuple[str, ...]] = ("params",)

    @classmethod
    def readiness(cls) -> str:
        """Whether the default phantom is already built in the cache."""
        folder = cache_root() / "phantom" / options_digest(PhantomOptions())
        if (folder / "labels.csv").is_file():
            return f"ready: built in {folder.parent}"
        return "ready: built at first use (minutes), then reused"

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter]:
        """The ``-o`` options: the fields of :class:`PhantomOptions` and ``workers``."""
        keyword = inspect.Parameter.KEYWORD_ONLY
        found = {
            f.name: inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
            for f in dataclasses.fields(PhantomOptions)
        }
        workers = inspect.Parameter("workers", keyword, default=default_workers(), annotation=int)
        return {**found, "workers": workers}

    def prepare(self) -> PreparedDataset:
        """Build (or reuse) the phantom files and prepare them with the in-house adapter."""
        if self.root is not None:
            raise ValueError(
                "the phantom dataset takes no --root (it is generated); to read a phantom written "
                "with `wsbench phantom make`, use --dataset inhouse --root <that folder>"
            )
        workers = self.options.get("workers", default_workers())
        params = self.options.get("params")
        phantom = phantom_options({k: v for k, v in self.options.items() if k != "params"})
        folder = build_with_progress(
            cache_root() / "phantom", phantom, workers, self.cache_dir, params
        )
        prepared = _PhantomInHouse(root=folder, cache_dir=self.cache_dir, params=params).prepare()
        prepared.name = self.name
        return prepared
