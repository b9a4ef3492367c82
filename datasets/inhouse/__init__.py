"""In-house CT in the BIDS-like TPTBox/SPINEPS layout, or a Hide-and-Seek crop manifest.

``root`` is either the BIDS folder (``rawdata/``, ``derivatives/``, ``labels.csv|xlsx``; see
docs/datasets.md) or the authors' manifest file (``.xlsx``/``.csv`` with columns ``image``,
``seg_msk``, ``label`` and optionally ``patient_id``, ``split``), whose rows are 64³ crops.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import nibabel as nib
import numpy as np
import pandas as pd

from wsbench.contract import (
    DatasetAdapter,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Skipped,
    Split,
    VertebraKey,
    WeakLabel,
)
from wsbench.data.preprocess import (
    CROP_AXES,
    PreprocessParams,
    SubjectResult,
    cached_result,
    preprocess_subject,
)
from wsbench.data.splits import DEFAULT_SEED, DEFAULT_TEST_FRACTION, seeded_split
from wsbench.data.volumes import level_name
from wsbench.datasets.inhouse.layout import SubjectFiles, find_subjects
from wsbench.files import digest
from wsbench.models.store import cache_root, sha256_file
from wsbench.progress import progress_over

MANIFEST_SUFFIXES = (".csv", ".xlsx", ".xls")

HIDESEEK_HU = (2000.0, -1000.0)
"""HU ≈ a·x + b for the authors' normalised crops, i.e. x = (HU + 1000) / 2000. On the real sample
this puts the soft-tissue mode (x ≈ 0.53) at +60 HU, the low mode (x ≈ 0.13, lung) at −740 HU,
the body median (0.65) at +305 HU and the maximum (1.18) at +1360 HU."""


@dataclass(frozen=True)
class LabelRow:
    """One parsed labels-table row."""

    subject: str
    session: str
    level: str
    label: WeakLabel
    phenotype: Phenotype | None
    split: Split | None


def read_table(path: Path) -> pd.DataFrame:
    """A CSV or Excel table read as text (empty cells → ``""``)."""
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    return pd.read_excel(path, dtype=str, keep_default_na=False)


def parse_split(value: str) -> Split | None:
    """``train``/``test`` (any case); empty → ``None``."""
    text = str(value).strip().lower()
    if not text:
        return None
    try:
        return Split(text)
    except ValueError:
        raise ValueError(f"split {value!r} is neither train nor test") from None


def parse_labels(path: Path) -> tuple[list[LabelRow], list[Skipped]]:
    """Rows of a ``labels.csv|xlsx``; unparseable rows become :class:`Skipped` records."""
    table = read_table(path)
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("subject", "vertebra", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; see docs/datasets.md")
    rows, skipped, seen = [], [], set()
    for i, record in enumerate(table.to_dict(orient="records")):
        where = f"{path.name} row {i + 2}"
        try:
            row = LabelRow(
                subject=str(record["subject"]).strip().removeprefix("sub-"),
                session=str(record.get("session", "")).strip().removeprefix("ses-"),
                level=level_name(record["vertebra"]),
                label=WeakLabel.parse(record["label"]),
                phenotype=Phenotype.parse(record.get("phenotype", "")),
                split=parse_split(record.get("split", "")),
            )
        except ValueError as exc:
            skipped.append(Skipped(where, str(exc)))
            continue
        key = (row.subject, row.session, row.level)
        if key in seen:
            skipped.append(Skipped(where, f"duplicate row for {row.subject} {row.level}"))
            continue
        seen.add(key)
        rows.append(row)
    return rows, skipped


class InHouseDataset(DatasetAdapter):
    """BIDS-like in-house CT (``root`` = folder) or a Hide-and-Seek manifest (``root`` = file).

    Options: ``seed`` and ``test_fraction`` of the subject split used when the table has no split;
    ``labels`` (path of the table, default ``root/labels.csv`` or ``.xlsx``); ``manifest_axes``:
    ``"PSR"`` (default: manifest crops are PSR arrays whatever their header says, as in the
    authors' pipeline) or ``"header"`` (reorient by the header); ``manifest_hu``: ``(a, b)`` with
    HU ≈ a·x + b for the manifest's normalised intensities.
    """

    name: ClassVar[str] = "inhouse"
    root_hint: ClassVar[str] = (
        "a BIDS-like folder of your CT (NIfTI + vertebra masks + labels.csv) or a "
        "Hide-and-Seek manifest file; docs/datasets.md"
    )

    def prepare(self) -> PreparedDataset:
        """Read, validate and preprocess the source (per-subject results cached as npz)."""
        if self.root is None:
            raise ValueError("the inhouse dataset needs --root (a BIDS folder or a manifest file)")
        root = Path(self.root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
        if root.is_file():
            if root.suffix.lower() not in MANIFEST_SUFFIXES:
                raise ValueError(f"{root}: a manifest must be .csv or .xlsx")
            return self._prepare_manifest(root)
        return self._prepare_bids(root)

    @property
    def params(self) -> PreprocessParams:
        """Preprocessing parameters (``params`` option or the defaults)."""
        return self.options.get("params", PreprocessParams())

    @property
    def _split_options(self) -> tuple[int, float]:
        return (
            int(self.options.get("seed", DEFAULT_SEED)),
            float(self.options.get("test_fraction", DEFAULT_TEST_FRACTION)),
        )

    def _cache(self) -> Path:
        base = Path(self.cache_dir) if self.cache_dir is not None else cache_root() / "prepared"
        return base / self.name

    def _labels_path(self, root: Path) -> Path:
        given = self.options.get("labels")
        if given:
            return Path(given)
        for name in ("labels.csv", "labels.xlsx"):
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(f"no labels.csv or labels.xlsx in {root}; see docs/datasets.md")

    def _prepare_bids(self, root: Path) -> PreparedDataset:
        subjects, skipped = find_subjects(root)
        labels_path = self._labels_path(root)
        rows, table_problems = parse_labels(labels_path)
        skipped += table_problems
        seed, fraction = self._split_options
        params = self.params
        by_subject: dict[tuple[str, str], dict[str, LabelRow]] = defaultdict(dict)
        for row in rows:
            by_subject[(row.subject, row.session)][row.level] = row
        known = {(s.subject, s.session) for s in subjects} | {(s.subject, "") for s in subjects}
        for row in rows:
            if (row.subject, row.session) not in known:
                skipped.append(
                    Skipped(
                        f"{labels_path.name} sub-{row.subject} {row.level}",
                        "in the labels table but no usable CT/mask files",
                    )
                )

        splits = self._subject_splits(subjects, rows, skipped, seed, fraction)
        hashes: list[tuple[str, str]] = []
        vertebrae: list[PreparedVertebra] = []
        for files in progress_over(subjects, "preparing subjects"):
            if files.subject not in splits:
                continue
            file_hashes = [(role, sha256_file(path)) for role, path in files.files()]
            hashes += [
                (str(path.relative_to(root)), h)
                for (_, path), (_, h) in zip(files.files(), file_hashes, strict=True)
            ]
            key = digest(["inhouse-subject", file_hashes, params.as_dict()], length=64)
            result, _ = cached_result(self._cache(), key, lambda f=files: self._process(f, params))
            skipped += result.skipped
            table = {
                **by_subject.get((files.subject, ""), {}),
                **by_subject.get((files.subject, files.session), {}),
            }
            for level in sorted(set(table) - set(result.mask_levels)):
                skipped.append(
                    Skipped(
                        f"{files.where} {level}",
                        f"in {labels_path.name} but no voxels in the vertebra mask",
                    )
                )
            vertebrae += self._vertebrae(files, result, table, splits[files.subject])
        label_rows = sorted(
            (
                r.subject,
                r.session,
                r.level,
                r.label.value,
                r.phenotype.value if r.phenotype else "",
                r.split.value if r.split else "",
            )
            for r in rows
        )
        dataset_fp = digest(
            ["inhouse", sorted(hashes), params.as_dict(), label_rows, seed, fraction], length=64
        )
        has_lesions = any("lesion" in s.masks for s in subjects)
        return PreparedDataset(self.name, dataset_fp, vertebrae, skipped, has_lesions, root)

    @staticmethod
    def _process(files: SubjectFiles, params: PreprocessParams) -> SubjectResult:
        def load(role: str) -> Any:
            return nib.load(files.masks[role]) if role in files.masks else None

        try:
            ct = nib.load(files.ct)
            images = (load("vert"), load("subreg"), load("lesion"))
        except Exception as exc:  # any unreadable file is reported for this subject only
            return SubjectResult([], [Skipped(files.where, f"cannot read NIfTI: {exc}")], [])
        return preprocess_subject(ct, *images, where=files.where, params=params)

    def _subject_splits(
        self,
        subjects: Sequence[SubjectFiles],
        rows: Sequence[LabelRow],
        skipped: list[Skipped],
        seed: int,
        fraction: float,
    ) -> dict[str, Split]:
        """Split per subject: from the table where given (consistently), else seeded."""
        given: dict[str, set[Split]] = defaultdict(set)
        for row in rows:
            if row.split is not None:
                given[row.subject].add(row.split)
        splits: dict[str, Split] = {}
        for subject, values in given.items():
            if len(values) == 1:
                splits[subject] = next(iter(values))
            else:
                skipped.append(Skipped(f"sub-{subject}", "rows disagree on the split"))
        rest = {s.subject for s in subjects} - set(given)
        splits.update(seeded_split(rest, seed, fraction))
        return splits

    def _vertebrae(
        self,
        files: SubjectFiles,
        result: SubjectResult,
        table: dict[str, LabelRow],
        split: Split,
    ) -> list[PreparedVertebra]:
        out = []
        for crop in result.crops:
            row = table.get(crop.level)
            geometry = {**crop.geometry, "source": str(files.ct)}
            out.append(
                PreparedVertebra(
                    key=VertebraKey(self.name, files.subject, crop.level, files.session),
                    split=split,
                    label=None if row is None else row.label,
                    phenotype=None if row is None else row.phenotype,
                    slices=crop.slices,
                    body=crop.body,
                    spacing=crop.spacing,
                    lesions=crop.lesions,
                    geometry=geometry,
                )
            )
        return out

    # --- Hide-and-Seek manifest ------------------------------------------------------------------

    def _prepare_manifest(self, manifest: Path) -> PreparedDataset:
        table = read_table(manifest)
        table.columns = [str(c).strip().lower() for c in table.columns]
        missing = [c for c in ("image", "seg_msk", "label") if c not in table.columns]
        if missing:
            raise ValueError(
                f"{manifest}: missing column(s) {', '.join(missing)} "
                "(a Hide-and-Seek manifest has image, seg_msk, label)"
            )
        seed, fraction = self._split_options
        records = table.to_dict(orient="records")
        subjects = [self._manifest_subject(r) for r in records]
        skipped: list[Skipped] = []
        given: dict[str, Split] = {}
        for i, (subject, record) in enumerate(zip(subjects, records, strict=True)):
            try:
                split = parse_split(record.get("split", ""))
            except ValueError as exc:
                skipped.append(Skipped(f"{manifest.name} row {i + 2}", str(exc)))
                continue
            if split is not None:
                given[subject] = split
        splits = seeded_split(set(subjects) - set(given), seed, fraction)
        splits.update(given)
        vertebrae: list[PreparedVertebra] = []
        hashes = []
        used: set[VertebraKey] = set()
        for i, (record, subject) in enumerate(
            progress_over(list(zip(records, subjects, strict=True)), "reading crops")
        ):
            where = f"{manifest.name} row {i + 2}"
            try:
                vertebra = self._manifest_row(manifest, record, subject, splits[subject], i, used)
                hashes.append(
                    [sha256_file(self._resolve(manifest, record[c])) for c in ("image", "seg_msk")]
                    + [str(record["label"])]
                )
            except (ValueError, OSError) as exc:
                skipped.append(Skipped(where, str(exc)))
                continue
            used.add(vertebra.key)
            vertebrae.append(vertebra)
        options = [
            self.options.get("manifest_axes", "PSR"),
            list(self.options.get("manifest_hu", HIDESEEK_HU)),
        ]
        dataset_fp = digest(
            ["inhouse-manifest", hashes, options, self.params.n_slices, seed, fraction], length=64
        )
        return PreparedDataset(self.name, dataset_fp, vertebrae, skipped, False, manifest)

    @staticmethod
    def _manifest_subject(record: dict[str, Any]) -> str:
        patient = str(record.get("patient_id", "")).strip()
        return patient or _stem(Path(str(record["image"])))

    @staticmethod
    def _resolve(manifest: Path, value: object) -> Path:
        path = Path(str(value).strip()).expanduser()
        return path if path.is_absolute() else manifest.parent / path

    def _manifest_row(
        self,
        manifest: Path,
        record: dict[str, Any],
        subject: str,
        split: Split,
        index: int,
        used: set[VertebraKey],
    ) -> PreparedVertebra:
        """One manifest crop as a prepared vertebra (raises ``ValueError`` on bad input)."""
        image_path = self._resolve(manifest, record["image"])
        seg_path = self._resolve(manifest, record["seg_msk"])
        label = WeakLabel.parse(record["label"])
        phenotype = Phenotype.parse(record.get("phenotype", ""))
        image, seg = nib.load(image_path), nib.load(seg_path)
        size = self.params.crop
        if image.shape != (size,) * 3:
            raise ValueError(f"{image_path.name} has shape {image.shape}, expected a {size}³ crop")
        if seg.shape != image.shape or not np.allclose(seg.affine, image.affine, atol=1e-3):
            raise ValueError(f"{seg_path.name} is not on the grid of {image_path.name}")
        axes = self.options.get("manifest_axes", "PSR")
        psr_image, psr_affine = _as_psr(image, axes)
        psr_seg, _ = _as_psr(seg, axes)
        if np.isnan(psr_image).any():
            raise ValueError(f"{image_path.name} has {int(np.isnan(psr_image).sum())} NaN voxels")
        if not (psr_seg > 0.5).any():
            raise ValueError(f"{seg_path.name}: empty vertebral-body mask")
        a, b = self.options.get("manifest_hu", HIDESEEK_HU)
        n = self.params.n_slices
        first = size // 2 - n // 2
        to_display = (2, 1, 0)
        slices = np.transpose(psr_image[:, ::-1, first : first + n], to_display)
        body = np.transpose(psr_seg[:, ::-1, first : first + n] > 0.5, to_display)
        zooms = np.linalg.norm(psr_affine[:3, :3], axis=0)
        level = _stem(image_path)
        key = VertebraKey(self.name, subject, level)
        if key in used:
            key = VertebraKey(self.name, subject, f"{level}-{index + 2}")
        display_to_psr = np.array(
            [[0, 0, 1, 0], [0, -1, 0, size - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float
        )
        geometry = {
            "source": str(image_path),
            "source_affine": np.asarray(image.affine, float).tolist(),
            "source_shape": list(image.shape),
            "manifest_axes": axes,
            "crop_axes": CROP_AXES,
            "crop_affine": (psr_affine @ display_to_psr).tolist(),
            "crop_shape": [size] * 3,
            "slice_indices": list(range(first, first + n)),
            "zoom": {"P": 1.0, "S": 1.0, "R": 1.0},
            "hu_mapping": [a, b],
        }
        return PreparedVertebra(
            key=key,
            split=split,
            label=label,
            phenotype=phenotype,
            slices=np.ascontiguousarray(a * slices + b, dtype=np.float32),
            body=np.ascontiguousarray(body),
            spacing=(float(zooms[1]), float(zooms[0])),
            lesions=None,
            geometry=geometry,
        )


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _as_psr(image: Any, axes: str) -> tuple[np.ndarray, np.ndarray]:
    """Array in PSR axis order and the matching affine.

    ``"PSR"``: the array already is PSR (the authors' crops; their diagonal header is not an
    orientation), so the affine is the file's. ``"header"``: reorient by the header's axis codes.
    """
    data = np.asarray(image.dataobj, dtype=np.float32)
    if axes == "PSR":
        return data, np.asarray(image.affine, float)
    if axes != "header":
        raise ValueError(f"manifest_axes {axes!r} is neither 'PSR' nor 'header'")
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(("P", "S", "R"))
    transform = nib.orientations.ornt_transform(current, target)
    reoriented = image.as_reoriented(transform)
    return np.asarray(reoriented.dataobj, dtype=np.float32), np.asarray(reoriented.affine, float)
