"""Real anatomy with inserted lesions (``--dataset realinsert``): the phantom's lesion and mimic
models painted into copies of real CTs found under ``--root``, written once into the cache in
the in-house layout and read back by the in-house adapter. See docs/datasets.md."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

from wsbench.contract import DatasetAdapter, PreparedDataset
from wsbench.data.preprocess import PreprocessParams
from wsbench.data.splits import DEFAULT_SEED, DEFAULT_TEST_FRACTION
from wsbench.datasets.inhouse import InHouseDataset
from wsbench.datasets.phantom.generate import default_workers
from wsbench.datasets.phantom.insert import (
    DEFAULT_COPIES,
    SKIPPED_FILE,
    InsertOptions,
    find_sources,
    insert_dataset,
    read_skipped,
    source_digest,
)
from wsbench.files import digest
from wsbench.models.store import cache_root
from wsbench.progress import with_progress


class _RealInsertInHouse(InHouseDataset):
    """The in-house adapter under this dataset's name (vertebra ids ``realinsert_ctc00_L3``)."""

    name: ClassVar[str] = "realinsert"


def build_cached(root: Path, cache: Path, options: InsertOptions, workers: int) -> Path:
    """The inserted dataset ``cache/<digest>`` (:func:`source_digest` of ``root``'s source files
    and ``options``): reused when present, else written into a temporary sibling folder and
    renamed."""
    subjects, _ = find_sources(root)
    final = cache / source_digest(root, subjects, options)
    if (final / SKIPPED_FILE).is_file():
        return final
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    with_progress(
        "inserting lesions",
        len(subjects) * options.copies,
        lambda cb: insert_dataset(root, tmp, options, workers, cb),
    )
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / SKIPPED_FILE).is_file():
            raise
        shutil.rmtree(tmp)
    return final


class RealInsertDataset(DatasetAdapter):
    """Real CTs with the phantom's lesions and mimics inserted into copies of their vertebrae.

    ``--root`` is searched, sub-folders included, for CTs with vertebra masks in the in-house
    naming (``sub-<S>_ct.nii.gz``, ``sub-<S>_seg-vert_msk.nii.gz``, optional
    ``sub-<S>_seg-subreg_msk.nii.gz``). Options: ``copies`` (8: independent insertions per
    source subject, two of each patient phenotype blastic / lytic / mixed / none), ``seed`` (0:
    plans and split), ``test_fraction`` (0.3 of the source subjects, at least one in each split
    with two or more), ``keep_cut`` (false: vertebrae cut by the scan's edge are left out) and
    ``workers`` (insertion processes, ≤ 2).
    """

    name: ClassVar[str] = "realinsert"
    lesion_metrics: ClassVar[bool] = True
    library_options: ClassVar[tuple[str, ...]] = ("params",)
    root_hint: ClassVar[str] = (
        "a folder searched for real CTs with vertebra masks (sub-<S>_ct.nii.gz + "
        "sub-<S>_seg-vert_msk.nii.gz); docs/datasets.md"
    )

    def __init__(
        self,
        root: Path | None = None,
        cache_dir: Path | None = None,
        *,
        copies: int = DEFAULT_COPIES,
        seed: int = DEFAULT_SEED,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        keep_cut: bool = False,
        workers: int = default_workers(),
        params: PreprocessParams | None = None,
    ) -> None:
        self.insert = InsertOptions(copies, seed, test_fraction, keep_cut)
        if workers < 1:
            raise ValueError(f"option workers={workers} must be ≥ 1")
        super().__init__(root, cache_dir, **asdict(self.insert), workers=workers, params=params)
        self.copies, self.seed, self.test_fraction = copies, seed, test_fraction
        self.keep_cut, self.workers, self.params = keep_cut, workers, params

    def prepare(self) -> PreparedDataset:
        """Insert (or reuse the cached insertion) and prepare it with the in-house adapter; the
        fingerprint covers the source files' content and the options."""
        if self.root is None:
            raise ValueError(f"the realinsert dataset needs --root: {self.root_hint}")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; --root must be {self.root_hint}")
        folder = build_cached(root, cache_root() / "realinsert", self.insert, self.workers)
        reader = _RealInsertInHouse(root=folder, cache_dir=self.cache_dir, params=self.params)
        prepared = reader.prepare()
        prepared.skipped = read_skipped(folder / SKIPPED_FILE) + prepared.skipped
        prepared.fingerprint = digest(["realinsert", folder.name, prepared.fingerprint], 64)
        return prepared
