"""In-house CT in the BIDS-like TPTBox/SPINEPS layout, or a Hide-and-Seek crop manifest.

``root`` is either the BIDS folder (``rawdata/``, ``derivatives/``, ``labels.csv|xlsx``; see
docs/datasets.md) or the authors' manifest file (``.xlsx``/``.csv`` with columns ``image``,
``seg_msk``, ``label`` and optionally ``patient_id``, ``split``), whose rows are 64³ crops; an
empty ``label`` cell makes the crop unlabelled (segmented, never learnt from).
"""

from __future__ import annotations

import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import nibabel as nib
import numpy as np
import pandas as pd

from wsbench.contract import (
    DatasetAdapter,
    Phenotype,
    PreparedDataset,
    PreparedVertebra,
    Scope,
    Skipped,
    Split,
    VertebraKey,
    WeakLabel,
)
from wsbench.data.nifti import UnreadableNiftiError, load_nifti
from wsbench.data.preprocess import (
    CROP_AXES,
    PreprocessParams,
    SubjectResult,
    VertebraCrop,
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

LABEL_TABLE_COLUMNS = ("subject", "vertebra", "label")
"""Columns every labels table needs (``session``, ``phenotype`` and ``split`` are optional)."""

MANIFEST_COLUMNS = ("image", "seg_msk", "label")
"""Columns every Hide-and-Seek manifest needs (``patient_id``, ``split``, ``phenotype``
optional)."""

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


def read_table(path: Path, needed: Sequence[str]) -> pd.DataFrame:
    """A CSV or Excel table read as text, empty cells ``""`` and column names stripped and lower
    case; ``ValueError`` naming the file when it is empty, unreadable or lacks a ``needed``
    column."""
    try:
        if path.suffix.lower() == ".csv":
            table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
        else:
            table = pd.read_excel(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{path} is empty; it needs columns {', '.join(needed)} (see docs/datasets.md)"
        ) from None
    except (ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path} cannot be read as a table ({exc}); save it as UTF-8 CSV or .xlsx"
        ) from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    twice = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if twice:
        raise ValueError(f"{path}: column(s) {', '.join(twice)} appear twice; keep one of each")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; it needs {', '.join(needed)} "
            "(see docs/datasets.md)"
        )
    return table.fillna("")


def no_valid_rows(path: Path, problems: Sequence[Skipped]) -> str:
    """The message for a table of which no row is usable: the file, and the first reasons."""
    shown = "; ".join(f"{p.where}: {p.reason}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    detail = f": {shown}{more}" if problems else " (it has no data rows)"
    return f"{path} has no usable row{detail}; fix the table (see docs/datasets.md)"


def parse_split(value: str) -> Split | None:
    """``train``/``test`` (any case); empty → ``None``."""
    text = str(value).strip().lower()
    if not text:
        return None
    try:
        return Split(text)
    except ValueError:
        raise ValueError(f"split {value!r} is neither train nor test") from None


def splits_required(table: pd.DataFrame) -> bool:
    """True when the table's ``split`` column gives a split anywhere: then every row needs one
    (a column left empty throughout gives none, and the seeded split applies)."""
    return "split" in table.columns and any(str(v).strip() for v in table["split"])


def parse_label_row(record: dict[str, Any], split_required: bool) -> LabelRow:
    """One labels-table record as a :class:`LabelRow` (``ValueError`` saying which cell is
    wrong)."""
    subject = str(record["subject"]).strip().removeprefix("sub-")
    if not subject:
        raise ValueError("the subject cell is empty; fill it")
    split = parse_split(record.get("split", ""))
    if split is None and split_required:
        raise ValueError(
            "the split cell is empty while other rows give one; fill it with train or test"
        )
    return LabelRow(
        subject=subject,
        session=str(record.get("session", "")).strip().removeprefix("ses-"),
        level=level_name(record["vertebra"]),
        label=WeakLabel.parse(record["label"]),
        phenotype=Phenotype.parse(record.get("phenotype", "")),
        split=split,
    )


def parse_labels(path: Path) -> tuple[list[LabelRow], list[Skipped]]:
    """Rows of a ``labels.csv|xlsx``; unparseable rows become :class:`Skipped` records, and so do
    both rows of a vertebra listed twice with different contents (an exact repeat counts once).
    ``ValueError`` naming the file when it is empty, unreadable or lacks a needed column."""
    table = read_table(path, LABEL_TABLE_COLUMNS)
    required = splits_required(table)
    parsed: dict[tuple[str, str, str], list[tuple[int, LabelRow]]] = defaultdict(list)
    skipped = []
    for i, record in enumerate(table.to_dict(orient="records")):
        try:
            row = parse_label_row(record, required)
        except ValueError as exc:
            skipped.append(Skipped(f"{path.name} row {i + 2}", str(exc)))
            continue
        parsed[(row.subject, row.session, row.level)].append((i + 2, row))
    rows = []
    for (subject, _, level), found in parsed.items():
        if len({row for _, row in found}) == 1:
            rows.append(found[0][1])
            continue
        numbers = [n for n, _ in found]
        for number in numbers:
            others = ", ".join(str(n) for n in numbers if n != number)
            reason = (
                f"sub-{subject} {level} is also in row(s) {others} with a different label, "
                "phenotype or split; all are rejected: keep the right row only"
            )
            skipped.append(Skipped(f"{path.name} row {number}", reason))
    return rows, skipped


class InHouseDataset(DatasetAdapter):
    """BIDS-like in-house CT (``root`` = folder) or a Hide-and-Seek manifest (``root`` = file).

    Options: ``seed`` and ``test_fraction`` of the subject split used when the table gives no
    split; ``labels`` (path of the table, default ``root/labels.csv`` or ``.xlsx``); ``edge``:
    ``"keep"`` (default) or ``"exclude"`` vertebrae whose mask touches the scan's edge (possibly
    cut off); ``manifest_axes``: ``"PSR"`` (default: manifest crops are PSR arrays whatever
    their header says, as in the authors' pipeline) or ``"header"`` (reorient by the header);
    ``manifest_hu``: ``(a, b)`` with HU ≈ a·x + b for the manifest's normalised intensities.
    ``params`` (library use only) replaces the default preprocessing parameters.
    """

    name: ClassVar[str] = "inhouse"
    library_options: ClassVar[tuple[str, ...]] = ("params",)
    root_hint: ClassVar[str] = (
        "a BIDS-like folder of your CT (NIfTI + vertebra masks + labels.csv) or a "
        "Hide-and-Seek manifest file; docs/datasets.md"
    )

    def __init__(
        self,
        root: Path | None = None,
        cache_dir: Path | None = None,
        *,
        seed: int = DEFAULT_SEED,
        test_fraction: float = DEFAULT_TEST_FRACTION,
        labels: Path | None = None,
        edge: Literal["keep", "exclude"] = "keep",
        manifest_axes: Literal["PSR", "header"] = "PSR",
        manifest_hu: tuple[float, float] = HIDESEEK_HU,
        params: PreprocessParams | None = None,
    ) -> None:
        if not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"option test_fraction={test_fraction} must lie between 0 and 1")
        if edge not in ("keep", "exclude"):
            raise ValueError(f"option edge={edge!r} is neither 'keep' nor 'exclude'")
        if manifest_axes not in ("PSR", "header"):
            raise ValueError(
                f"option manifest_axes={manifest_axes!r} is neither 'PSR' nor 'header'"
            )
        if len(manifest_hu) != 2:
            raise ValueError(f"option manifest_hu={manifest_hu!r} needs two numbers a,b")
        super().__init__(
            root,
            cache_dir,
            seed=seed,
            test_fraction=test_fraction,
            labels=labels,
            edge=edge,
            manifest_axes=manifest_axes,
            manifest_hu=manifest_hu,
            params=params,
        )
        self.seed, self.test_fraction, self.labels, self.edge = seed, test_fraction, labels, edge
        self.manifest_axes, self.manifest_hu = manifest_axes, manifest_hu
        self.params = params or PreprocessParams()

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

    def _cache(self) -> Path:
        base = Path(self.cache_dir) if self.cache_dir is not None else cache_root() / "prepared"
        return base / self.name

    def _labels_path(self, root: Path) -> Path:
        if self.labels:
            return Path(self.labels)
        for name in ("labels.csv", "labels.xlsx"):
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(f"no labels.csv or labels.xlsx in {root}; see docs/datasets.md")

    def _prepare_bids(self, root: Path) -> PreparedDataset:
        subjects, skipped = find_subjects(root)
        labels_path = self._labels_path(root)
        rows, table_problems = parse_labels(labels_path)
        skipped += table_problems
        if not rows:
            raise ValueError(no_valid_rows(labels_path, table_problems))
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

        splits = self._subject_splits(subjects, rows, skipped, labels_path.name)
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
            lost = any(s.scope is Scope.FILE for s in result.skipped)
            for level in sorted(set(table) - set(result.mask_levels) if not lost else ()):
                skipped.append(
                    Skipped(
                        f"{files.where} {level}",
                        f"in {labels_path.name} but no voxels in the vertebra mask",
                    )
                )
            crops = self._usable_crops(files, result, table, skipped)
            vertebrae += self._vertebrae(files, crops, table, splits[files.subject])
        if subjects and not vertebrae:
            skipped.append(Skipped(str(root), "no vertebra could be prepared", Scope.DATASET))
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
        selection = [] if self.edge == "keep" else [f"edge={self.edge}"]
        dataset_fp = digest(
            [
                "inhouse",
                sorted(hashes),
                params.data_dict(),
                label_rows,
                self.seed,
                self.test_fraction,
                *selection,
            ],
            length=64,
        )
        has_lesions = any("lesion" in s.masks for s in subjects)
        return PreparedDataset(self.name, dataset_fp, vertebrae, skipped, has_lesions, root)

    @staticmethod
    def _process(files: SubjectFiles, params: PreprocessParams) -> SubjectResult:
        try:
            ct = load_nifti(files.ct)
            masks = {role: load_nifti(path) for role, path in files.masks.items()}
        except UnreadableNiftiError as exc:
            return SubjectResult([], [Skipped(files.where, str(exc), Scope.FILE)], [])
        images = (masks["vert"], masks.get("subreg"), masks.get("lesion"))
        return preprocess_subject(ct, *images, where=files.where, params=params)

    def _subject_splits(
        self,
        subjects: Sequence[SubjectFiles],
        rows: Sequence[LabelRow],
        skipped: list[Skipped],
        table_name: str,
    ) -> dict[str, Split]:
        """Split per subject: from the table where it gives splits (consistently, and then for
        every subject), else :func:`seeded_split` (a function of the subject's own id)."""
        given: dict[str, set[Split]] = defaultdict(set)
        for row in rows:
            if row.split is not None:
                given[row.subject].add(row.split)
        if not given:
            return seeded_split({s.subject for s in subjects}, self.seed, self.test_fraction)
        splits: dict[str, Split] = {}
        for subject in sorted({s.subject for s in subjects}):
            values = given.get(subject, set())
            if len(values) == 1:
                splits[subject] = next(iter(values))
            elif values:
                reason = f"rows of {table_name} disagree on the split; give one split per subject"
                skipped.append(Skipped(f"sub-{subject}", reason, Scope.FILE))
            else:
                reason = (
                    f"{table_name} gives splits but none for this subject; "
                    "add its rows with a split"
                )
                skipped.append(Skipped(f"sub-{subject}", reason, Scope.FILE))
        return splits

    def _usable_crops(
        self,
        files: SubjectFiles,
        result: SubjectResult,
        table: dict[str, LabelRow],
        skipped: list[Skipped],
    ) -> list[VertebraCrop]:
        """The crops to deliver: without malignant vertebrae whose own mask holds no lesion voxel
        of the subject's lesion mask (their reference is unusable) and, with ``edge=exclude``,
        without vertebrae touching the scan's edge."""
        kept = []
        for crop in result.crops:
            row = table.get(crop.level)
            where = f"{files.where} {crop.level}"
            malignant = row is not None and row.label == WeakLabel.MALIGNANT
            if malignant and crop.lesion_voxels == 0:
                reason = (
                    f"malignant, but its vertebra mask holds no voxel of "
                    f"{files.masks['lesion'].name} (a shifted or misassigned lesion mask?): "
                    "its reference is unusable; fix the lesion mask"
                )
                skipped.append(Skipped(where, reason))
            elif self.edge == "exclude" and crop.geometry["touches_scan_border"]:
                reason = (
                    "its mask touches the scan's edge (the vertebra may be cut off); excluded by "
                    "-o edge=exclude"
                )
                skipped.append(Skipped(where, reason))
            else:
                kept.append(crop)
        return kept

    def _vertebrae(
        self,
        files: SubjectFiles,
        crops: Sequence[VertebraCrop],
        table: dict[str, LabelRow],
        split: Split,
    ) -> list[PreparedVertebra]:
        out = []
        for crop in crops:
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
        table = read_table(manifest, MANIFEST_COLUMNS)
        required = splits_required(table)
        records = table.to_dict(orient="records")
        subjects = [self._manifest_subject(r) for r in records]
        skipped: list[Skipped] = []
        given: dict[str, set[Split]] = defaultdict(set)
        row_splits: dict[int, Split | None] = {}
        for i, (subject, record) in enumerate(zip(subjects, records, strict=True)):
            where = f"{manifest.name} row {i + 2}"
            try:
                split = parse_split(record.get("split", ""))
            except ValueError as exc:
                skipped.append(Skipped(where, str(exc)))
                continue
            if split is None and required:
                reason = "the split cell is empty while other rows give one; fill it"
                skipped.append(Skipped(where, f"{reason} with train or test"))
                continue
            row_splits[i] = split
            if split is not None:
                given[subject].add(split)
        torn = {s for s, values in given.items() if len(values) > 1}
        for subject in sorted(torn):
            reason = f"rows of {manifest.name} disagree on the split; give one split per patient"
            skipped.append(Skipped(f"{manifest.name} patient {subject}", reason, Scope.FILE))
        seeded = seeded_split(set(subjects) - set(given), self.seed, self.test_fraction)
        splits = {**seeded, **{s: next(iter(v)) for s, v in given.items() if s not in torn}}
        vertebrae: list[PreparedVertebra] = []
        hashes = []
        used: set[VertebraKey] = set()
        for i, (record, subject) in enumerate(
            progress_over(list(zip(records, subjects, strict=True)), "reading crops")
        ):
            if i not in row_splits or subject in torn:
                continue
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
        if not vertebrae:
            raise ValueError(no_valid_rows(manifest, skipped))
        options = [self.manifest_axes, list(self.manifest_hu)]
        dataset_fp = digest(
            [
                "inhouse-manifest",
                hashes,
                options,
                self.params.data_dict()["n_slices"],
                self.seed,
                self.test_fraction,
            ],
            length=64,
        )
        return PreparedDataset(self.name, dataset_fp, vertebrae, skipped, False, manifest)

    @staticmethod
    def _manifest_subject(record: dict[str, Any]) -> str:
        patient = str(record.get("patient_id", "")).strip()
        return patient or _stem(Path(str(record["image"])))

    @staticmethod
    def _resolve(manifest: Path, value: object) -> Path:
        text = str(value).strip()
        try:
            path = Path(text).expanduser()
        except RuntimeError:  # ~name of an unknown user
            raise ValueError(
                f"path {text!r} names an unknown user's home; give a full path"
            ) from None
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
        label = WeakLabel.parse(record["label"]) if str(record["label"]).strip() else None
        phenotype = Phenotype.parse(record.get("phenotype", ""))
        image, seg = load_nifti(image_path), load_nifti(seg_path)
        size = self.params.crop
        if image.shape != (size,) * 3:
            raise ValueError(f"{image_path.name} has shape {image.shape}, expected a {size}³ crop")
        if seg.shape != image.shape or not np.allclose(seg.affine, image.affine, atol=1e-3):
            raise ValueError(f"{seg_path.name} is not on the grid of {image_path.name}")
        axes = self.manifest_axes
        psr_image, psr_affine = _as_psr(image, axes)
        psr_seg, _ = _as_psr(seg, axes)
        n_bad = int(psr_image.size - np.count_nonzero(np.isfinite(psr_image)))
        if n_bad:
            raise ValueError(
                f"{image_path.name} has {n_bad} non-finite voxels (NaN or infinite); "
                "fix or re-export the crop"
            )
        if not (psr_seg > 0.5).any():
            raise ValueError(f"{seg_path.name}: empty vertebral-body mask")
        a, b = self.manifest_hu
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
